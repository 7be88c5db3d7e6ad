"""`tether sync` through a running daemon (the warm path) and on its own (one shot), and flush's
barrier: in push mode with inotify a save made just before flush lands in an incremental cycle;
with a polling watcher flush falls back to a full one. Real sshd, in-process daemon."""

from __future__ import annotations

import asyncio
import gc
import os
import sys
from pathlib import Path

import pytest
from tether.service import pair_session
from tether.service.daemon import Daemon
from tether.sync.engine import SyncReport

from tests.helpers import Imports, imports_of, running_daemon, text, write_project
from tests.sshd import SshServer

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def native_watcher(private_dirs: None, monkeypatch: pytest.MonkeyPatch) -> None:
    """Private folders, and the platform's watcher even where the environment forces polling
    (the tests that want polling ask for it themselves)."""
    monkeypatch.delenv("TETHER_FORCE_POLLING", raising=False)


async def cli_sync(config: Path, *args: str) -> tuple[int, str]:
    """`tether sync` as a user runs it (a subprocess; the daemon keeps serving meanwhile)."""
    env = dict(os.environ, PYTHONPATH=str(ROOT), COLUMNS="200")
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "tether.cli.main", "--config", str(config), "sync", *args,
        env=env, cwd=str(ROOT),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    out, _ = await asyncio.wait_for(proc.communicate(), 60)
    return proc.returncode or 0, out.decode()


async def cli_imports(config: Path, *args: str) -> Imports:
    """`tether --config CONFIG ARGS` as a user runs it, off this loop (the daemon under test keeps
    serving meanwhile), and which heavy modules it imported."""
    env = dict(os.environ, PYTHONPATH=str(ROOT), COLUMNS="200")
    argv = ["--config", str(config), *args]
    return await asyncio.to_thread(imports_of, argv, cwd=ROOT, env=env)


def covers(scope: list[str], path: str) -> bool:
    return any(path == root or path.startswith(root + "/") for root in scope)


def session_of(daemon: Daemon):  # type: ignore[no-untyped-def]
    return next(iter(daemon.projects.values())).sessions["code"]


async def synced_with_inotify(daemon: Daemon, client, config: str):  # type: ignore[no-untyped-def]
    """Register ``config``, flush its first sync; its session (skip the test without inotify)."""
    await client.register(config)
    await client.flush(config, 30)
    session = session_of(daemon)
    if session.watch_mode != "inotify":
        pytest.skip(f"no inotify here ({session.watch_mode})")
    return session


def test_post_sync_and_cli_take_the_warm_path(sshd: SshServer, tmp_path: Path) -> None:
    local, remote = write_project(tmp_path, sshd, mode="push")
    config = local / "tether.toml"

    async def body() -> None:
        async with running_daemon() as (daemon, client):
            await client.register(config)
            await client.flush(str(config), 30)
            session = session_of(daemon)
            # POST /v1/sync: the daemon's own session syncs and reports.
            (local / "a.py").write_text("a")
            before = session.syncs
            answer = await client.sync(config, None, 30)
            assert answer["registered"] is True
            assert [r["pair"] for r in answer["pairs"]] == ["code"]
            assert answer["pairs"][0]["copied"] == 1
            assert text(remote / "a.py") == "a" and session.syncs > before
            # The answer lists what moved; the session keeps no per-file lists once it is sent
            # (after a first sync of 100,000 files they were most of an idle daemon's memory).
            assert answer["pairs"][0]["plan"] == ["file → remote: a.py"]
            assert all(not r.plan and not r.base_moved for _, r in session._reports)
            # `tether sync --json`: the same, through the socket (stdlib HTTP), and a script
            # calling it pays for none of the heavy imports (SSH, the daemon's HTTP, rich).
            (local / "b.py").write_text("b")
            before = session.syncs
            started = await cli_imports(config, "sync", "--json")
            assert started.code == 0, started.output
            assert started.loaded == []
            started = await cli_imports(config, "flush", "--json")  # as `start`, `pause`
            assert started.code == 0 and '"flushed": [' in started.output, started.output
            assert started.loaded == []
            assert text(remote / "b.py") == "b"
            assert session.syncs > before  # the daemon's session ran the cycle
            events = await client.logs(200)
            assert any(e["kind"] == "pair.synced" for e in events)
            # The plain form says so, and carries none of the one-shot's scan counts.
            (local / "c.py").write_text("c")
            rc, out = await cli_sync(config)
            assert rc == 0, out
            assert "through the daemon" in out and "local /" not in out
            assert text(remote / "c.py") == "c"

    asyncio.run(body())


def test_a_big_full_cycle_returns_memory_once_its_per_file_lists_are_gone(
    sshd: SshServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    local, remote = write_project(tmp_path, sshd, mode="push")
    for i in range(5):
        (local / f"f{i}.py").write_text(str(i))
    alive: list[int] = []  # at each release: reports still holding a per-file plan

    def release() -> None:
        alive.append(sum(isinstance(o, SyncReport) and bool(o.plan) for o in gc.get_objects()))

    monkeypatch.setattr(pair_session, "RELEASE_AFTER_FILES", 5)
    monkeypatch.setattr(pair_session, "release_memory", release)

    async def body() -> None:
        async with running_daemon() as (daemon, client):
            await client.register(local / "tether.toml")
            await client.flush(str(local / "tether.toml"), 30)
            assert text(remote / "f4.py") == "4"
            assert session_of(daemon).last_report.plan == []  # what it moved is not kept

    asyncio.run(body())
    assert alive and set(alive) == {0}, alive


def test_cli_syncs_on_its_own_without_daemon_or_registration(
    sshd: SshServer, tmp_path: Path
) -> None:
    local, remote = write_project(tmp_path, sshd, mode="push")
    config = local / "tether.toml"
    (local / "one.py").write_text("1")

    async def body() -> None:
        # No daemon at all (no socket): one shot.
        rc, out = await cli_sync(config)
        assert rc == 0, out
        assert "through the daemon" not in out and "local /" in out
        assert text(remote / "one.py") == "1"
        # A daemon that does not know this project: it says so, and the CLI syncs itself.
        async with running_daemon() as (daemon, client):
            answer = await client.sync(config, None, 10)
            assert answer == {"registered": False}
            (local / "two.py").write_text("2")
            rc, out = await cli_sync(config)
            assert rc == 0, out
            assert "through the daemon" not in out and "local /" in out
            assert text(remote / "two.py") == "2"
            assert daemon.projects == {}
        # A script's one shot (`--json`) needs SSH, and not rich.
        (local / "three.py").write_text("3")
        started = await cli_imports(config, "sync", "--json")
        assert started.code == 0, started.output
        assert started.loaded == ["asyncssh"]
        assert text(remote / "three.py") == "3"

    asyncio.run(body())


def test_flush_barrier_lands_a_fresh_save_incrementally(sshd: SshServer, tmp_path: Path) -> None:
    local, remote = write_project(tmp_path, sshd, mode="push")
    config = str(local / "tether.toml")
    (local / "src").mkdir()

    async def body() -> None:
        async with running_daemon() as (daemon, client):
            session = await synced_with_inotify(daemon, client, config)
            for i in range(3):
                (local / "src" / "k.py").write_text(f"v{i}")  # no pause: flush at once
                mark = session.syncs
                await client.flush(config, 30)
                assert text(remote / "src" / "k.py") == f"v{i}"
                cycles = [r for n, r in session._reports if n > mark]
                assert cycles and all(r.scope is not None for r in cycles), "a full cycle ran"
                assert any(covers(r.scope, "src/k.py") and r.copied == 1 for r in cycles)
            # The warm `sync` reports the same: incremental, the save landed.
            (local / "src" / "k.py").write_text("last")
            answer = await client.sync(config, None, 30)
            assert text(remote / "src" / "k.py") == "last"
            report = answer["pairs"][0]
            assert report["scope"] is not None and covers(report["scope"], "src/k.py")
            assert report["copied"] == 1

    asyncio.run(body())


def test_a_new_project_gets_one_full_cycle(sshd: SshServer, tmp_path: Path) -> None:
    """The session's first cycle waits for the host's watch to be up, so it also covers what
    changed before the watch began: no second full scan of the whole tree follows it."""
    local, remote = write_project(tmp_path, sshd, mode="push")
    config = str(local / "tether.toml")
    for i in range(20):
        (local / f"k{i}.py").write_text(f"v{i}")

    async def body() -> None:
        async with running_daemon() as (daemon, client):
            session = await synced_with_inotify(daemon, client, config)
            assert [text(remote / f"k{i}.py") for i in range(20)] == [f"v{i}" for i in range(20)]
            full = [r.copied for _, r in session._reports if r.scope is None]
            assert full == [21]  # 20 files and tether.toml, in one full cycle

    asyncio.run(body())


def test_flush_falls_back_to_a_full_cycle_when_polling(
    sshd: SshServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TETHER_FORCE_POLLING", "1")
    local, remote = write_project(tmp_path, sshd, mode="push")
    config = str(local / "tether.toml")

    async def body() -> None:
        async with running_daemon() as (daemon, client):
            await client.register(config)
            await client.flush(config, 30)
            session = session_of(daemon)
            assert session.watch_mode == "polling"
            (local / "fresh.py").write_text("saved just now")  # the poller has not seen it
            answer = await client.sync(config, None, 30)
            assert text(remote / "fresh.py") == "saved just now"
            # The merged report of the cycles this sync ran is full (scope None) when any of
            # them was; a later no-op cycle (the poller reporting fresh.py late) may follow it.
            assert answer["pairs"][0]["scope"] is None

    asyncio.run(body())
