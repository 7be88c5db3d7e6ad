"""Every change of content is seen, a file that keeps changing is reported, names are bytes:
against a real sshd, in two-way pairs."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from tether.cli.main import main

from tests.helpers import before_first_apply, sync, write
from tests.sshd import SshServer


@pytest.fixture
def project(sync_project):  # type: ignore[no-untyped-def]
    """The shared two-way pair, with the remote root there before the first sync."""
    tmp, local, remote, _configure = sync_project
    remote.mkdir()
    return tmp, local, remote


def rewrite_in_place(path: Path, data: bytes) -> None:
    """Same size, same inode, and the old mtime put back (as `touch -r` or some tools do)."""
    st = os.stat(path)
    assert len(data) == st.st_size
    with open(path, "r+b") as fh:
        fh.write(data)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert os.stat(path).st_mtime_ns == st.st_mtime_ns and os.stat(path).st_ino == st.st_ino


def conflict_copies(root: Path) -> dict[str, bytes]:
    return {p: (root / p).read_bytes() for p in os.listdir(root) if ".conflict-" in p}


# -- point 3: a same-size rewrite with its old mtime put back -------------------------------------


def test_a_local_same_size_rewrite_with_its_mtime_put_back_lands(project, monkeypatch) -> None:
    tmp, local, remote = project
    monkeypatch.setattr("tether.sync.scan.RACY_NS", 0)  # the digest is cached at once
    write(local / "k.py", "x = 1\n", mtime=time.time() - 3600)
    assert sync(tmp)[0] == 0
    assert sync(tmp)[1]["hashed"]["local"] == 0  # cached: the cache is what is under test
    rewrite_in_place(local / "k.py", b"x = 2\n")
    code, report = sync(tmp)
    assert code == 0, report
    assert (remote / "k.py").read_bytes() == b"x = 2\n"


def test_a_host_same_size_rewrite_before_apply_is_not_clobbered(project, monkeypatch) -> None:
    """The host's file changes (same size, old mtime) after its scan, before a push over it:
    the agent must not trust the mtime; the host's edit is kept."""
    tmp, local, remote = project
    write(local / "a.txt", "base\n", mtime=time.time() - 3600)
    assert sync(tmp)[0] == 0
    write(local / "a.txt", "local edit\n")
    before_first_apply(monkeypatch, lambda: rewrite_in_place(remote / "a.txt", b"HOST\n"))
    code, report = sync(tmp)
    assert code == 0, report
    kept = [(remote / "a.txt").read_bytes(), *conflict_copies(remote).values()]
    assert b"HOST\n" in kept and b"local edit\n" in kept


def test_a_local_same_size_rewrite_before_apply_is_not_clobbered(project, monkeypatch) -> None:
    """The same on this side: a host edit pulled over a local file rewritten meanwhile."""
    tmp, local, remote = project
    write(local / "a.txt", "base\n", mtime=time.time() - 3600)
    assert sync(tmp)[0] == 0
    write(remote / "a.txt", "host edit\n")
    before_first_apply(monkeypatch, lambda: rewrite_in_place(local / "a.txt", b"MINE\n"))
    code, report = sync(tmp)
    assert code == 0, report
    kept = [(local / "a.txt").read_bytes(), *conflict_copies(local).values()]
    assert b"MINE\n" in kept and b"host edit\n" in kept


def test_a_file_written_just_before_the_scan_is_not_cached(project) -> None:
    """Racy: an entry recorded within a timestamp tick of the file's change could miss a later
    same-tick rewrite, so a fresh file's digest is not kept (it is hashed again next time)."""
    from tether.sync.state import StateStore, pair_key

    tmp, local, _remote = project
    write(local / "fresh.txt", "now", mtime=time.time() - 3600)  # old mtime, ctime now
    assert sync(tmp)[0] == 0
    with StateStore() as store:
        assert "fresh.txt" not in store.load_digests(pair_key(tmp / "tether.toml", "code"))


# -- point 4: a file that keeps changing is reported, never skipped silently ----------------------


@contextlib.contextmanager
def appending(path: Path) -> Iterator[None]:
    """Another process appends a line to ``path`` every millisecond until the block ends."""
    code = (
        "import sys, time\n"
        "with open(sys.argv[1], 'ab', buffering=0) as fh:\n"
        "    while True:\n"
        "        fh.write(b'line\\n'); time.sleep(0.001)\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", code, str(path)])
    try:
        deadline = time.monotonic() + 10
        while not path.exists() or path.stat().st_size == 0:  # the writer is under way
            assert time.monotonic() < deadline and proc.poll() is None
            time.sleep(0.01)
        yield
    finally:
        proc.terminate()
        proc.wait()


def test_a_host_file_that_keeps_changing_fails_the_cli_by_name(project, capsys) -> None:
    tmp, local, remote = project
    write(local / "steady.txt", "steady")
    with appending(remote / "train.log"):
        code, report = sync(tmp)
    assert code == 1, report
    assert report["unsettled"] == ["train.log"]
    assert [p["path"] for p in report["problems"]] == ["train.log"]
    assert "kept changing" in report["problems"][0]["message"]
    assert (remote / "steady.txt").read_text() == "steady"  # the rest landed
    assert not (local / "train.log").exists()
    # The plain (not --json) report names it too; once it is still, it lands and all is well.
    code = main(["--config", str(tmp / "tether.toml"), "sync"])
    out = capsys.readouterr().out
    assert code == 0 and "train.log" not in out.split("copied", 1)[1]
    assert (local / "train.log").read_bytes() == (remote / "train.log").read_bytes()


def test_the_daemon_reports_a_changing_host_file_and_lands_it_once_still(
    sshd: SshServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import asyncio

    from tests.helpers import eventually, running_daemon, write_project

    monkeypatch.setenv("TETHER_STATE_DIR", str(tmp_path / "state"))
    (tmp_path / "rt").mkdir(mode=0o700)
    monkeypatch.setenv("TETHER_RUNTIME_DIR", str(tmp_path / "rt"))
    local, remote = write_project(tmp_path, sshd)
    log_path = remote / "train.log"

    async def body() -> None:
        async with running_daemon() as (_daemon, client):
            await client.register(local / "tether.toml")
            await client.flush(str(local / "tether.toml"), 30)
            with appending(log_path):

                async def reported() -> bool:
                    events = await client.logs(500)
                    return any(
                        e["kind"] == "pair.problem" and "train.log" in e["message"] for e in events
                    )

                deadline = time.monotonic() + 60
                while not await reported():
                    assert time.monotonic() < deadline, "no problem reported for train.log"
                    await asyncio.sleep(0.1)
            final = log_path.read_bytes()
            await eventually(
                lambda: (
                    (local / "train.log").exists() and (local / "train.log").read_bytes() == final
                ),
                60,
                "the settled file lands",
            )

    asyncio.run(body())


# -- point 7: names are bytes ------------------------------------------------------------------


def put(root: Path, name: bytes, data: bytes) -> None:
    with open(os.path.join(os.fsencode(root), name), "wb") as fh:
        fh.write(data)


def names(root: Path) -> dict[bytes, bytes]:
    """Every file below ``root`` by its name as bytes (the tree as the kernel holds it)."""
    out = {}
    top = os.fsencode(root)
    for dirpath, _dirs, files in os.walk(top):
        for name in files:
            full = os.path.join(dirpath, name)
            with open(full, "rb") as fh:
                out[os.path.relpath(full, top)] = fh.read()
    return out


def test_names_that_are_not_utf8_sync_faithfully_both_ways(project, capsys) -> None:
    from tether.sync.state import StateStore, pair_key

    tmp, local, remote = project
    os.mkdir(os.path.join(os.fsencode(local), b"d\xff"))
    put(local, b"caf\xe9.txt", b"latin-1 name")
    put(local, b"d\xff/inner.txt", b"below a latin-1 folder")
    put(remote, b"r\xe9sum\xe9.txt", b"from the host")
    put(local, "plain ✓.txt".encode(), b"utf-8")
    code, report = sync(tmp)
    assert code == 0, report
    assert names(local) == names(remote)
    assert names(remote)[b"caf\xe9.txt"] == b"latin-1 name"
    assert names(local)[b"r\xe9sum\xe9.txt"] == b"from the host"
    with StateStore() as store:
        base = store.load_base(pair_key(tmp / "tether.toml", "code"))
    assert os.fsdecode(b"caf\xe9.txt") in base and os.fsdecode(b"d\xff/inner.txt") in base
    # Settled: nothing to do; an edit on either side of such a name travels; the plain
    # report prints the names escaped (one line each, no traceback).
    assert sync(tmp)[1]["plan"] == []
    put(remote, b"caf\xe9.txt", b"edited on the host")
    put(local, b"d\xff/inner.txt", b"edited here")
    assert main(["--config", str(tmp / "tether.toml"), "sync", "--dry-run"]) == 0
    assert "caf\\xe9.txt" in capsys.readouterr().out
    code, report = sync(tmp)
    assert code == 0, report
    assert names(local) == names(remote)
    assert names(local)[b"caf\xe9.txt"] == b"edited on the host"
    assert names(remote)[b"d\xff/inner.txt"] == b"edited here"


def test_a_name_the_other_side_cannot_hold_is_a_problem_and_the_rest_syncs(project) -> None:
    """tether's path rules refuse a backslash in a name (a Windows or SFTP side cannot hold
    it): such a file, here not UTF-8 either, is skipped as a reported problem, on each side;
    everything else lands and the base is saved, sync after sync."""
    tmp, local, remote = project
    put(local, b"bad\\\xe9.txt", b"x")
    put(remote, b"worse\\\xff.txt", b"y")
    put(local, b"good\xe9.txt", b"fine")
    put(remote, b"fine.txt", b"fine too")
    for _ in range(2):
        code, report = sync(tmp)
        assert code == 0, report
        problems = {p["path"] for p in report["problems"]}
        assert problems == {os.fsdecode(b"bad\\\xe9.txt"), os.fsdecode(b"worse\\\xff.txt")}
        assert names(remote)[b"good\xe9.txt"] == b"fine"
        assert names(local)[b"fine.txt"] == b"fine too"
    assert b"bad\\\xe9.txt" not in names(remote) and b"worse\\\xff.txt" not in names(local)


def test_the_daemon_syncs_names_that_are_not_utf8_and_is_never_wedged(
    sshd: SshServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import asyncio

    from tether.errors import TetherError

    from tests.helpers import running_daemon, write_project

    monkeypatch.setenv("TETHER_STATE_DIR", str(tmp_path / "state"))
    (tmp_path / "rt").mkdir(mode=0o700)
    monkeypatch.setenv("TETHER_RUNTIME_DIR", str(tmp_path / "rt"))
    local, remote = write_project(tmp_path, sshd)
    put(local, b"caf\xe9.txt", b"before start")

    async def body() -> None:
        async with running_daemon() as (_daemon, client):
            config = str(local / "tether.toml")
            await client.register(local / "tether.toml")
            await client.flush(config, 30)
            assert names(remote)[b"caf\xe9.txt"] == b"before start"
            put(local, b"na\xefve.txt", b"live edit")  # watched, incremental
            put(local, b"odd\\\xe9.txt", b"never synced")
            with pytest.raises(TetherError, match=r"odd\\\\xe9\.txt: local: not synced"):
                await client.flush(config, 30)  # reported by name, escaped for display
            assert names(remote)[b"na\xefve.txt"] == b"live edit"
            assert b"odd\\\xe9.txt" not in names(remote)
            pair = (await client.status())["projects"][0]["pairs"][0]
            assert pair["state"] in ("watching", "syncing"), pair

    asyncio.run(body())


# -- stored names: pure properties -----------------------------------------------------------

from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

_names = st.lists(
    st.binary(min_size=1, max_size=6).map(lambda b: b.replace(b"/", b"_").replace(b"\0", b"_")),
    min_size=1,
    max_size=4,
).map(lambda parts: os.fsdecode(b"/".join(parts)))


@settings(deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_names, _names)
def test_stored_names_round_trip_and_keep_subtrees(path: str, other: str) -> None:
    from tether.sync.paths import from_stored, is_fs_name, shown, to_stored

    assert is_fs_name(path)
    stored = to_stored(path)
    stored.encode("utf-8")  # SQLite takes it
    assert from_stored(stored) == path
    below = f"{path}/{other}"
    key, root = to_stored(below), to_stored(path)
    assert root + "/" <= key < root + "0"  # the subtree range query finds it
    shown(path).encode("utf-8")
    if not other.startswith(path + "/") and other != path:
        assert not (root + "/" <= to_stored(other) < root + "0")
