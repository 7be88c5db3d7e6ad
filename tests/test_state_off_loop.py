"""The sync engine never uses the state database on the event loop, nor works out a plan or a new
base there: for 100,000 paths each takes about a second, and in the daemon the other pairs, the
tunnels and the control API share the loop. Every kind of sync (first, with a conflict,
incremental, halted, accepted) against a real sshd, with each call's thread noted."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from tether.config import load_config
from tether.sync import engine
from tether.sync.engine import SyncReport, sync_pair
from tether.sync.safety import PairStatus
from tether.transport.endpoints import SSH

from tests.helpers import write
from tests.sshd import SshServer
from tests.store_threads import on_this_thread, record_store_threads, record_threads

FILES = [f"f{i}.txt" for i in range(6)]


def test_every_kind_of_sync_keeps_sqlite_off_the_loop(
    sshd: SshServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TETHER_STATE_DIR", str(tmp_path / "state"))
    local, remote = tmp_path / "local", tmp_path / "remote"
    local.mkdir()
    remote.mkdir()
    (tmp_path / "tether.toml").write_text(
        sshd.toml_host()
        + f'\n[pairs.code]\nhost = "test"\nlocal = "local"\nremote = "{remote}"\n'
        + 'mode = "two-way"\n'
    )
    calls = record_store_threads(monkeypatch)
    record_threads(monkeypatch, engine, ["reconcile", "next_base"], calls)

    def sync(**kw: object) -> SyncReport:
        config = load_config(tmp_path / "tether.toml")
        return asyncio.run(sync_pair(config, config.pair("code"), SSH, **kw))  # type: ignore[arg-type]

    for name in FILES:
        write(local / name, name)
    assert sync().status is PairStatus.OK  # a first sync: identity adopted, base saved
    write(local / "f0.txt", "mine")
    write(remote / "f0.txt", "theirs")
    assert sync().conflicts  # a conflict recorded
    write(local / "f1.txt", "edited")
    report = sync(local_paths=["f1.txt"])  # incremental: the base read in scope
    assert report.scope == ["f1.txt"] and (remote / "f1.txt").read_text() == "edited"
    for name in FILES:
        (remote / name).unlink()
    assert sync().halted  # most of a side deleted: the halt is stored
    assert sync(accept_deletes=True).status is PairStatus.OK

    used = {name for name, _ in calls}
    assert on_this_thread(calls) == []
    assert {"__init__", "save_base", "load_base_scope", "record_halt", "accept_halt"} <= used
    assert {"reconcile", "next_base"} <= used


def test_the_local_folder_is_resolved_and_made_off_the_loop(
    sshd: SshServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The pair's identity resolves the local root, and a first sync into a missing local folder
    makes it: both touch the disk (a slow or network mount can take seconds) and run on a
    worker thread, not on the loop the daemon's other pairs share."""
    monkeypatch.setenv("TETHER_STATE_DIR", str(tmp_path / "state"))
    local, remote = tmp_path / "local", tmp_path / "remote"
    write(remote / "sub" / "a.txt", "from the host")
    (tmp_path / "tether.toml").write_text(
        sshd.toml_host()
        + f'\n[pairs.code]\nhost = "test"\nlocal = "local"\nremote = "{remote}"\n'
        + 'mode = "two-way"\n'
    )
    on_loop: list[tuple[str, str]] = []
    called: list[str] = []
    for name in ("resolve", "mkdir"):
        real = getattr(Path, name)

        def noted(self: Path, *args: object, _real: Any = real, _name: str = name, **kw: object):
            if self == local or local in self.parents:
                called.append(_name)
                try:
                    asyncio.get_running_loop()
                    on_loop.append((_name, str(self)))
                except RuntimeError:
                    pass  # no loop runs on this thread: a worker's call
            return _real(self, *args, **kw)

        monkeypatch.setattr(Path, name, noted)
    config = load_config(tmp_path / "tether.toml")
    called.clear()  # loading the config resolves the root before any loop runs
    report = asyncio.run(sync_pair(config, config.pair("code"), SSH))  # type: ignore[arg-type]
    assert report.status is PairStatus.OK, report
    assert (local / "sub" / "a.txt").read_text() == "from the host"
    assert {"resolve", "mkdir"} <= set(called)
    assert on_loop == []
