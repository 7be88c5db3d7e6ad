"""The remote agent and its client, against a local agent process on temporary folders."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import shutil
import socket
import subprocess
import sys
import textwrap
import time
import warnings
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from pathspec.patterns import GitWildMatchPattern
from tether.errors import BadHostData, HostUnreachable
from tether.sync.endpoint import ExpectationFailed, RemoteOpError
from tether.sync.entry import Entry, EntryKind
from tether.transport.agent_client import AgentClient
from tether.transport.host_data import WatchBatch

from tests.local_agent import OLD_NS, arun, leftovers, sha

pytestmark = pytest.mark.usefixtures("agent_home")
IS_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0


def rules(*patterns: str) -> list[tuple[str, bool]]:
    compiled = []
    for pattern in patterns:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            regex, include = GitWildMatchPattern.pattern_to_regex(pattern)
        if regex is not None:
            compiled.append((regex, bool(include)))
    return compiled


# ------------------------------------------------------------------ scan


def test_scan_reports_every_kind(root: Path, tmp_path: Path) -> None:
    (root / "src").mkdir()
    (root / "src" / "run.sh").write_bytes(b"#!/bin/sh\n")
    os.chmod(root / "src" / "run.sh", 0o755)
    (root / "ünïcødé ✓.txt").write_text("π", encoding="utf-8")
    (root / "inside").symlink_to("src/run.sh")
    (root / "src" / "up").symlink_to("../ünïcødé ✓.txt")
    (root / "outside").symlink_to(str(tmp_path))
    (root / "sneaky").symlink_to("../../etc")
    os.mkfifo(root / "pipe")
    (root / ".x.tether-0123abcd.tmp").write_bytes(b"half a write")

    result = arun(lambda c: c.scan(str(root)))

    assert result.exists and result.is_dir
    entries = result.entries
    assert set(entries) == {
        "src",
        "src/run.sh",
        "src/up",
        "ünïcødé ✓.txt",
        "inside",
        "outside",
        "sneaky",
        "pipe",
    }
    run = entries["src/run.sh"]
    assert run.kind is EntryKind.FILE and run.executable and run.size == 10
    assert run.digest == sha(b"#!/bin/sh\n")
    assert entries["ünïcødé ✓.txt"].digest == sha("π".encode())
    assert not entries["ünïcødé ✓.txt"].executable
    assert entries["src"].kind is EntryKind.DIRECTORY
    assert entries["inside"] == Entry(
        EntryKind.SYMLINK,
        entries["inside"].size,
        entries["inside"].mtime_ns,
        0o777,
        "",
        "src/run.sh",
    )
    assert entries["src/up"].target == "../ünïcødé ✓.txt"
    for escaping in ("outside", "sneaky"):
        assert entries[escaping].kind is EntryKind.UNTRACKED
    assert entries["pipe"].kind is EntryKind.UNTRACKED


def test_scan_of_missing_root_and_of_a_file(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")

    async def body(c: AgentClient) -> tuple[Any, Any]:
        return await c.scan(str(tmp_path / "nope")), await c.scan(str(tmp_path / "file"))

    missing, file = arun(body)
    assert (missing.exists, missing.is_dir, missing.entries) == (False, False, {})
    assert (file.exists, file.is_dir, file.entries) == (True, False, {})


def test_scan_expands_tilde(agent_home: Path) -> None:
    (agent_home / "proj").mkdir()
    (agent_home / "proj" / "a").write_text("a")
    result = arun(lambda c: c.scan("~/proj"))
    assert set(result.entries) == {"a"}


def test_caches_unused_for_30_days_are_removed_the_one_in_use_is_kept(
    agent_home: Path, root: Path
) -> None:
    """A root deleted or moved on the host leaves its digest cache and last scan behind (~10 MB
    each at 100,000 files): the agent removes those no agent used for 30 days, and keeps (and
    marks as used) the scanning root's own, however old they were."""
    (root / "a").write_text("a")
    cache = agent_home / ".cache" / "tether"
    key = hashlib.sha256(os.path.realpath(root).encode()).hexdigest()
    (cache / "digests").mkdir(parents=True)
    (cache / "scans").mkdir()
    month_ago = time.time() - 31 * 86400
    files = {
        "gone-root digests": cache / "digests" / ("0" * 64 + ".json"),
        "gone-root scan": cache / "scans" / ("0" * 64 + ".json"),
        "stale staged file": cache / "digests" / ".x.json.tether-0000abcd.tmp",
        "recent": cache / "digests" / ("1" * 64 + ".json"),
        "this root's, old": cache / "digests" / f"{key}.json",
        "this root's last scan, old": cache / "scans" / f"{key}.json",
    }
    for name, path in files.items():
        path.write_text("{}")
        if name != "recent":
            os.utime(path, (month_ago, month_ago))
    result = arun(lambda c: c.scan(str(root)))
    assert set(result.entries) == {"a"}
    left = {name for name, path in files.items() if path.exists()}
    assert left == {"recent", "this root's, old", "this root's last scan, old"}
    assert time.time() - files["this root's, old"].stat().st_mtime < 3600


@pytest.mark.skipif(IS_ROOT and not shutil.which("setpriv"), reason="root without setpriv")
def test_unreadable_file_is_a_problem_not_a_failed_scan(root: Path) -> None:
    (root / "ok").write_text("fine")
    (root / "secret").write_text("hidden")
    os.chmod(root / "secret", 0)
    (root / "closed").mkdir()
    (root / "closed" / "x").write_text("x")
    os.chmod(root / "closed", 0)
    # root reads anything: drop the capabilities that let it, so permissions bite
    wrapper = ["setpriv", "--bounding-set=-dac_override,-dac_read_search"] if IS_ROOT else []
    try:
        result = arun(lambda c: c.scan(str(root)), wrapper=wrapper)
    finally:
        os.chmod(root / "closed", 0o755)
    assert result.entries["ok"].kind is EntryKind.FILE
    assert result.entries["secret"].kind is EntryKind.PROBLEM
    assert "Permission denied" in result.entries["secret"].problem
    assert result.entries["closed"].kind is EntryKind.PROBLEM
    assert "closed/x" not in result.entries


def test_ignore_rules_negation_and_pruning(root: Path) -> None:
    for path in (
        "a.log",
        "keep.log",
        "src/main.py",
        "src/main.pyc",
        "build/out.bin",
        "build/keep.log",
        "docs/build",
        "results/r.json",
    ):
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        (root / path).write_text(path)
    ignore = rules("*.log", "!keep.log", "*.pyc", "build/", "/results")

    result = arun(lambda c: c.scan(str(root), ignore))

    assert set(result.entries) == {"keep.log", "src", "src/main.py", "docs", "docs/build"}


def test_digest_cache_spares_unchanged_files(root: Path) -> None:
    for i in range(5):
        (root / f"f{i}").write_bytes(b"x" * i)

    async def body(c: AgentClient) -> list[dict[str, int]]:
        first = await c.scan(str(root), racy_ms=0)
        second = await c.scan(str(root), racy_ms=0)
        (root / "f3").write_bytes(b"changed!")
        third = await c.scan(str(root), racy_ms=0)
        assert third.entries["f3"].digest == sha(b"changed!")
        return [first.stats, second.stats, third.stats]

    stats = arun(body)
    assert [s["hashed"] for s in stats] == [5, 0, 1]
    assert [s["files"] for s in stats] == [5, 5, 5]
    # the cache is on disk: a fresh agent process reads nothing either
    again = arun(lambda c: c.scan(str(root), racy_ms=0))
    assert again.stats["hashed"] == 0


def test_recently_changed_files_are_not_trusted_to_the_cache(root: Path) -> None:
    (root / "hot").write_text("a")

    async def body(c: AgentClient) -> list[int]:
        # "Recently": a minute, so that a slow start on a busy machine cannot make it old.
        return [(await c.scan(str(root), racy_ms=60_000)).stats["hashed"] for _ in range(2)]

    assert arun(body) == [1, 1]


def test_a_big_file_the_agent_landed_is_not_read_again_by_the_next_scan(root: Path) -> None:
    """Its digest is known (checked as it landed) and its mtime is the source's, older than the
    landing: the next scan takes it from the cache. A file landed with a recent mtime, a small
    one, and one rewritten in place afterwards with its mtime put back are hashed."""
    big, other = os.urandom(2 << 20), os.urandom(2 << 20)
    recent = time.time_ns()

    async def body(c: AgentClient) -> list[int]:
        await c.scan(str(root), racy_ms=0)
        for name, mtime in (("old", OLD_NS), ("recent", recent)):
            await c.write(str(root), name, big, mode=0o644, mtime_ns=mtime, expect=None)
        await c.write(str(root), "small", b"s", mode=0o644, mtime_ns=OLD_NS, expect=None)
        first = await c.scan(str(root), racy_ms=60_000)
        assert first.entries["old"].digest == sha(big)
        (root / "old").write_bytes(other)
        os.utime(root / "old", ns=(OLD_NS, OLD_NS))
        second = await c.scan(str(root), racy_ms=60_000)
        assert second.entries["old"].digest == sha(other)
        return [first.stats["hashed"], second.stats["hashed"]]

    assert arun(body) == [2, 3]  # recent and small; then old as well


def test_the_digest_of_a_file_start(root: Path) -> None:
    data = os.urandom(300_000)
    (root / "f").write_bytes(data)

    async def body(c: AgentClient) -> list[tuple[str, int]]:
        return [await c.digest_prefix(str(root), "f", n) for n in (0, 1000, 300_000, 10**9)]

    assert arun(body) == [
        (sha(b""), 300_000),
        (sha(data[:1000]), 300_000),
        (sha(data), 300_000),
        (sha(data), 300_000),
    ]


def test_partial_scan_includes_ancestors(root: Path) -> None:
    (root / "a" / "b").mkdir(parents=True)
    (root / "a" / "b" / "c").write_text("c")
    (root / "a" / "other").write_text("o")
    (root / "z").write_text("z")

    result = arun(lambda c: c.scan(str(root), paths=["a/b", "missing/x", "z"]))

    assert set(result.entries) == {"a", "a/b", "a/b/c", "z"}


# ------------------------------------------------------------------ read and write


def test_write_then_read_keeps_mode_and_mtime(root: Path) -> None:
    async def body(c: AgentClient) -> tuple[Entry, bytes, Entry]:
        written = await c.write(
            str(root), "deep/er/tool.sh", b"echo hi\n", mode=0o755, mtime_ns=OLD_NS, expect=None
        )
        data, read = await c.read_entry(str(root), "deep/er/tool.sh")
        return written, data, read

    written, data, read = arun(body)
    assert data == b"echo hi\n"
    assert written == read
    assert written.digest == sha(b"echo hi\n") and written.executable
    st = (root / "deep" / "er" / "tool.sh").stat()
    assert st.st_mtime_ns == OLD_NS and st.st_mode & 0o777 == 0o755
    assert leftovers(root) == []


def test_write_refuses_when_the_target_changed(root: Path) -> None:
    target = root / "f.txt"
    target.write_text("theirs")

    async def body(c: AgentClient) -> None:
        scanned = (await c.scan(str(root))).entries["f.txt"]
        with pytest.raises(ExpectationFailed) as absent:
            await c.write(str(root), "f.txt", b"mine", mode=0o644, mtime_ns=OLD_NS, expect=None)
        assert absent.value.type == "changed" and absent.value.path == "f.txt"
        target.write_text("edited")  # same size: caught by the mtime/digest check
        os.utime(target, ns=(scanned.mtime_ns + 1, scanned.mtime_ns + 1))
        with pytest.raises(ExpectationFailed):
            await c.write(str(root), "f.txt", b"mine", mode=0o644, mtime_ns=OLD_NS, expect=scanned)
        # only the mtime moved, the bytes are the same: the write goes ahead
        target.write_text("theirs")
        os.utime(target, ns=(OLD_NS + 5, OLD_NS + 5))
        await c.write(str(root), "f.txt", b"mine", mode=0o644, mtime_ns=OLD_NS, expect=scanned)
        target.unlink()
        with pytest.raises(ExpectationFailed):
            await c.write(str(root), "f.txt", b"x", mode=0o644, mtime_ns=OLD_NS, expect=scanned)

    arun(body)
    assert not target.exists()
    assert leftovers(root) == []


def test_write_refuses_content_that_fails_its_digest(root: Path) -> None:
    async def body(c: AgentClient) -> None:
        with pytest.raises(RemoteOpError) as info:
            await c.call(
                "write",
                b"tampered",
                root=str(root),
                path="f",
                mode=0o644,
                mtime_ns=OLD_NS,
                digest=sha(b"original"),
                expect=None,
            )
        assert info.value.type == "corrupt"

    arun(body)
    assert list(root.iterdir()) == []


def test_chunked_write_is_invisible_until_complete(root: Path) -> None:
    data = os.urandom(2_500_000)

    async def body(c: AgentClient) -> None:
        common = {"root": str(root), "path": "big.bin", "transfer": "t1"}
        await c.call("write", data[:1_000_000], offset=0, final=False, **common)
        assert not (root / "big.bin").exists()
        assert (await c.scan(str(root))).entries == {}
        await c.call(
            "write",
            data[1_000_000:],
            offset=1_000_000,
            final=True,
            mode=0o600,
            mtime_ns=OLD_NS,
            digest=sha(data),
            expect=None,
            **common,
        )
        # and through the client, which chunks by itself
        entry = await c.write(str(root), "big2.bin", data, mode=0o644, mtime_ns=OLD_NS, expect=None)
        assert entry.size == len(data)
        assert (root / "big2.bin").read_bytes() == data
        with pytest.raises(RemoteOpError) as info:  # a big file is read in ranges
            await c.read(str(root), "big2.bin")
        assert info.value.type == "invalid"

    arun(body)
    assert (root / "big.bin").read_bytes() == data
    assert leftovers(root) == []


def test_pipelined_writes(root: Path) -> None:
    async def body(c: AgentClient) -> list[Entry]:
        return await asyncio.gather(
            *(
                c.write(
                    str(root), f"d{i % 7}/f{i}", b"%d" % i, mode=0o644, mtime_ns=OLD_NS, expect=None
                )
                for i in range(300)
            )
        )

    entries = arun(body)
    assert len(entries) == 300
    assert (root / "d3" / "f10").read_text() == "10"


def test_mkdir_symlink_rename_delete(root: Path) -> None:
    async def body(c: AgentClient) -> None:
        d = await c.mkdir(str(root), "a/b", mode=0o750, expect=None)
        assert d.kind is EntryKind.DIRECTORY and d.mode == 0o750
        assert await c.mkdir(str(root), "a/b", expect=d) == d  # already there: no-op
        f = await c.write(str(root), "a/b/f.txt", b"1", mode=0o644, mtime_ns=OLD_NS, expect=None)
        link = await c.symlink(str(root), "a/link", "b/f.txt", expect=None)
        assert link.target == "b/f.txt"
        link2 = await c.symlink(str(root), "a/link", "b", expect=link)
        assert os.readlink(root / "a" / "link") == "b"
        with pytest.raises(RemoteOpError) as full:
            await c.delete(str(root), "a/b", expect=d)
        assert full.value.type == "not_empty"
        moved = await c.rename(str(root), "a/b/f.txt", "a/f.conflict-remote-1.txt", expect=f)
        assert moved.digest == f.digest
        other = await c.write(str(root), "x", b"2", mode=0o644, mtime_ns=OLD_NS, expect=None)
        with pytest.raises(RemoteOpError) as taken:
            await c.rename(str(root), "x", "a/f.conflict-remote-1.txt", expect=other)
        assert taken.value.type == "exists"
        with pytest.raises(ExpectationFailed):
            await c.delete(str(root), "x", expect=replace(other, size=5))
        await c.delete(str(root), "x", expect=other)
        await c.delete(str(root), "a/link", expect=link2)
        await c.delete(str(root), "a/b", expect=d)
        chmodded = await c.chmod(str(root), "a/f.conflict-remote-1.txt", 0o700, expect=moved)
        assert chmodded.executable and chmodded.digest == f.digest

    arun(body)
    assert sorted(p.name for p in root.rglob("*")) == ["a", "f.conflict-remote-1.txt"]


@pytest.mark.parametrize("bad", ["../x", "/etc/passwd", "a/../../x", "a\x00b", "a//b", "", "."])
def test_unsafe_paths_are_refused_by_agent_and_client(root: Path, bad: str) -> None:
    async def body(c: AgentClient) -> None:
        with pytest.raises(RemoteOpError) as info:
            await c.call(
                "write",
                b"x",
                root=str(root),
                path=bad,
                mode=0o644,
                mtime_ns=OLD_NS,
                digest=sha(b"x"),
                expect=None,
            )
        assert info.value.type == "invalid"
        with pytest.raises(RemoteOpError):
            await c.call("read", root=str(root), path=bad)
        with pytest.raises(BadHostData):
            await c.write(str(root), bad, b"x", mode=0o644, mtime_ns=OLD_NS, expect=None)

    arun(body)
    assert list(root.iterdir()) == []


def test_symlinked_parent_is_never_followed(root: Path, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "victim").write_text("keep me")
    (root / "escape").symlink_to(outside)
    (root / "inner").mkdir()
    (root / "inner" / "hop").symlink_to("../escape")

    async def body(c: AgentClient) -> None:
        for path in ("escape/victim", "escape/new", "inner/hop/victim"):
            with pytest.raises(RemoteOpError) as info:
                await c.write(str(root), path, b"pwned", mode=0o644, mtime_ns=OLD_NS, expect=None)
            assert info.value.type == "invalid"
        with pytest.raises(RemoteOpError):
            await c.read(str(root), "escape/victim")
        with pytest.raises(RemoteOpError):
            await c.mkdir(str(root), "escape/dir", expect=None)
        victim = Entry(EntryKind.FILE, 7, 0, 0o644, sha(b"keep me"))
        with pytest.raises(RemoteOpError):
            await c.delete(str(root), "escape/victim", expect=victim)
        with pytest.raises(RemoteOpError):
            await c.rename(str(root), "escape/victim", "stolen", expect=victim)
        # a symlink at the final component is replaced, never written through
        link = (await c.scan(str(root))).entries["escape"]
        with pytest.raises(ExpectationFailed):
            await c.write(str(root), "escape", b"x", mode=0o644, mtime_ns=OLD_NS, expect=None)
        assert link.kind is EntryKind.UNTRACKED

    arun(body)
    assert sorted(p.name for p in outside.iterdir()) == ["victim"]
    assert (outside / "victim").read_text() == "keep me"


@contextlib.contextmanager
def tmpfs(where: Path, *options: str) -> Iterator[Path]:
    where.mkdir()
    opts = ",".join(("size=256k", *options))
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", opts, "tmpfs", str(where)], check=False)
    if done.returncode != 0:
        pytest.skip("cannot mount a tmpfs here (needs root and CAP_SYS_ADMIN)")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)


@pytest.mark.skipif(not IS_ROOT, reason="mounting a tmpfs needs root")
def test_full_and_read_only_filesystems(tmp_path: Path) -> None:
    with tmpfs(tmp_path / "small") as small:

        async def full(c: AgentClient) -> None:
            with pytest.raises(RemoteOpError) as info:
                await c.write(
                    str(small), "big", b"x" * 600_000, mode=0o644, mtime_ns=OLD_NS, expect=None
                )
            assert info.value.type == "no_space"
            probe = await c.probe(str(small))
            assert probe.writable and probe.free_bytes is not None and probe.free_bytes < 300_000

        arun(full)
        assert list(small.iterdir()) == []
    with tmpfs(tmp_path / "ro", "ro") as ro:

        async def read_only(c: AgentClient) -> None:
            with pytest.raises(RemoteOpError) as info:
                await c.write(str(ro), "f", b"x", mode=0o644, mtime_ns=OLD_NS, expect=None)
            assert info.value.type == "read_only"
            assert (await c.probe(str(ro))).writable is False

        arun(read_only)


# ------------------------------------------------------------------ host checks


def test_probe_and_tcp_check(tmp_path: Path) -> None:
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    port = listener.getsockname()[1]
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    closed_port = closed.getsockname()[1]
    closed.close()

    async def body(c: AgentClient) -> None:
        absent = await c.probe(str(tmp_path / "new" / "dir"))
        assert absent.exists is False and absent.free_bytes is not None and absent.free_bytes > 0
        made = await c.probe(str(tmp_path / "new" / "dir"), create=True)
        assert made.created and made.is_dir and made.writable
        assert (await c.tcp_check("127.0.0.1", port))["reachable"] is True
        refused = await c.tcp_check("127.0.0.1", closed_port, timeout=2)
        assert refused["reachable"] is False and refused["reason"]
        hello = await c.hello()
        assert hello["pid"] > 0 and hello["python"].startswith("3.")

    try:
        arun(body)
    finally:
        listener.close()


# ------------------------------------------------------------------ runs


def test_exec_exit_codes_and_output(tmp_path: Path) -> None:
    async def body(c: AgentClient) -> list[dict[str, Any]]:
        results = []
        for code in (0, 1, 7):
            run = await c.exec(f"echo out{code}; echo err{code} >&2; exit {code}")
            out: list[bytes] = []
            status = await c.attach(run["run_id"], on_output=out.append)
            assert b"".join(out) == f"out{code}\nerr{code}\n".encode()
            results.append(status)
        return results

    statuses = arun(body)
    assert [s["exit_code"] for s in statuses] == [0, 1, 7]
    assert all(s["signal"] is None and s["duration_s"] >= 0 for s in statuses)


@pytest.mark.timeout(120)
def test_a_run_starts_while_a_watch_starts(root: Path) -> None:
    """The watch's thread imports what inotify needs just as the run's supervisor is forked. The
    forked child must import nothing: a module lock another thread held at the fork is never
    released in the child, whose run would then never start (the agent waits for it forever)."""

    async def body(c: AgentClient) -> int:
        async def watch() -> None:
            async for _ in c.watch(str(root)):
                pass

        watching = asyncio.create_task(watch())
        await asyncio.sleep(0)  # the watch request goes out first
        try:
            run = await asyncio.wait_for(c.exec("true"), 10)
            status = await asyncio.wait_for(c.attach(run["run_id"]), 10)
        finally:
            watching.cancel()
        return int(status["exit_code"])

    for _ in range(5):  # a fresh agent each time: nothing imported yet
        assert arun(body) == 0


def test_exec_environment_venv_pythonpath_cwd(tmp_path: Path) -> None:
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    (venv / "bin" / "hello-venv").write_text("#!/bin/sh\necho from-venv\n")
    os.chmod(venv / "bin" / "hello-venv", 0o755)

    async def body(c: AgentClient) -> bytes:
        run = await c.exec(
            'hello-venv; echo "$VIRTUAL_ENV|$PYTHONPATH|$GREETING|$(pwd)"',
            cwd=str(tmp_path),
            env={"GREETING": "hi", "PYTHONPATH": "/theirs"},
            venv=str(venv),
            pythonpath="/tether/cache",
            run_id="env-run",
        )
        assert run["run_id"] == "env-run"
        out: list[bytes] = []
        await c.attach("env-run", on_output=out.append)
        with pytest.raises(RemoteOpError) as dup:
            await c.exec("true", run_id="env-run")
        assert dup.value.type == "exists"
        return b"".join(out)

    out = arun(body).decode()
    assert out == f"from-venv\n{venv}|/tether/cache:/theirs|hi|{tmp_path}\n"


def test_exec_of_a_missing_program_or_folder(tmp_path: Path) -> None:
    async def body(c: AgentClient) -> None:
        with pytest.raises(RemoteOpError):
            await c.exec(["/no/such/program"])
        with pytest.raises(RemoteOpError) as info:
            await c.exec("true", cwd=str(tmp_path / "missing"))
        assert "missing" in str(info.value)

    arun(body)


def pid_alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().split(") ")[1][0] != "Z"
    except FileNotFoundError:
        return False


def test_kill_takes_the_whole_group(tmp_path: Path) -> None:
    pidfile = tmp_path / "child.pid"
    script = f"sleep 60 & echo $! > {pidfile}; trap '' TERM; wait; sleep 60"

    async def body(c: AgentClient) -> tuple[dict[str, Any], dict[str, Any], int, int]:
        run = await c.exec(script)
        for _ in range(200):
            if pidfile.exists() and pidfile.read_text().strip():
                break
            await asyncio.sleep(0.01)
        child = int(pidfile.read_text())
        killed = await c.kill(run["run_id"], signal="TERM", grace_s=0.3)
        status = await c.attach(run["run_id"])
        return killed, status, child, run["pid"]

    killed, status, child, leader = arun(body)
    assert killed["escalated"] and killed["gone"] and killed["signalled"] == ["TERM", "KILL"]
    assert status["signal"] == "SIGKILL" and status["exit_code"] is None
    assert not pid_alive(child) and not pid_alive(leader)


def test_term_ends_a_polite_run(tmp_path: Path) -> None:
    async def body(c: AgentClient) -> tuple[dict[str, Any], dict[str, Any], list[dict[str, Any]]]:
        run = await c.exec(["sleep", "30"])
        listed = await c.runs()
        killed = await c.kill(run["run_id"], grace_s=5)
        return killed, await c.attach(run["run_id"]), listed

    killed, status, listed = arun(body)
    assert killed == {"signalled": ["TERM"], "escalated": False, "gone": True}
    assert status["signal"] == "SIGTERM"
    assert listed and listed[0]["running"] is True


def test_attach_after_the_agent_restarted(tmp_path: Path) -> None:
    flag = tmp_path / "go"

    async def start(c: AgentClient) -> tuple[str, int]:
        run = await c.exec(
            f"echo one; while [ ! -e {flag} ]; do sleep 0.02; done; echo two; exit 3"
        )
        seen: list[bytes] = []
        first = asyncio.Event()

        def output(chunk: bytes) -> None:
            seen.append(chunk)
            first.set()

        async def follow() -> None:
            await c.attach(run["run_id"], on_output=output)

        task = asyncio.create_task(follow())
        await asyncio.wait_for(first.wait(), 30)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        return run["run_id"], len(b"".join(seen))

    run_id, offset = arun(start)  # the agent exits here; the run goes on
    assert offset == len(b"one\n")
    flag.touch()

    async def resume(c: AgentClient) -> tuple[bytes, dict[str, Any], list[dict[str, Any]]]:
        out: list[bytes] = []
        status = await c.attach(run_id, offset=offset, on_output=out.append)
        return b"".join(out), status, await c.runs()

    rest, status, listed = arun(resume)
    assert rest == b"two\n"
    assert status["exit_code"] == 3 and status["offset"] == len(b"one\ntwo\n")
    assert [r["run_id"] for r in listed] == [run_id] and listed[0]["running"] is False


# ------------------------------------------------------------------ watch


async def next_batch(it: Any, timeout: float = 5.0) -> WatchBatch:
    return await asyncio.wait_for(it.__anext__(), timeout)


@pytest.mark.parametrize("force_poll", [False, True], ids=["inotify", "poll"])
def test_watch_batches_changes_and_hides_own_writes(root: Path, force_poll: bool) -> None:
    if not force_poll and not sys.platform.startswith("linux"):
        pytest.skip("inotify is Linux only")
    (root / "old.txt").write_text("old")
    (root / "ignored").mkdir()

    async def body(c: AgentClient) -> list[WatchBatch]:
        batches = []
        it = c.watch(
            str(root), rules("ignored/", "*.tmp"), coalesce_ms=50, force_poll=force_poll, poll_ms=50
        )
        assert await next_batch(it) == WatchBatch(())
        (root / "new.txt").write_text("a")
        (root / "old.txt").write_text("changed")
        (root / "sub").mkdir()
        (root / "sub" / "inner.txt").write_text("b")
        (root / "ignored" / "x").write_text("nobody cares")
        (root / "junk.tmp").write_text("nobody cares")
        batches.append(await next_batch(it))
        await c.write(str(root), "mine.txt", b"mine", mode=0o644, mtime_ns=OLD_NS, expect=None)
        await c.mkdir(str(root), "mydir/deeper", expect=None)
        (root / "old.txt").unlink()  # reported after the agent's own writes, had they been
        batches.append(await next_batch(it))
        await it.aclose()
        return batches

    first, second = arun(body)
    assert not first.rescan
    assert {"new.txt", "old.txt", "sub"} <= set(first.paths)
    assert set(first.paths) <= {"new.txt", "old.txt", "sub", "sub/inner.txt"}
    assert second.paths == ("old.txt",)


def test_watch_stops_when_the_consumer_leaves(root: Path) -> None:
    async def body(c: AgentClient) -> dict[str, Any]:
        it = c.watch(str(root))
        await next_batch(it)
        await it.aclose()
        return await c.hello()  # the agent is still fine and answers

    assert arun(body)["version"] == 1


# ------------------------------------------------------------------ a lying agent


def fake_agent(tmp_path: Path, reply_to_second: str) -> list[str]:
    """A wrapper that ignores the real agent and answers hello, then one scripted reply."""
    script = tmp_path / "fake_agent.py"
    script.write_text(
        textwrap.dedent(
            """
            import json, struct, sys
            inp, out = sys.stdin.buffer, sys.stdout.buffer
            out.write(b"TETHER-RUN /fake/agent.py\\n")
            def receive():
                (n,) = struct.unpack(">I", inp.read(4))
                return json.loads(inp.read(n))
            def send(raw):
                out.write(struct.pack(">I", len(raw)) + raw)
                out.flush()
            req = receive()
            send(json.dumps({"id": req["id"], "ok": True, "version": 1}).encode())
            req = receive()
            REPLY
            inp.read()
            """
        ).replace("REPLY", reply_to_second)
    )
    return [sys.executable, str(script)]


@pytest.mark.parametrize(
    "reply",
    [
        'send(json.dumps({"id": req["id"], "ok": True, "exists": True, "is_dir": True, '
        '"entries": {"../../etc/passwd": ["file", 1, 1, 420, "' + "0" * 64 + '", "", ""]}})'
        ".encode())",
        'send(json.dumps({"id": req["id"], "ok": True, "exists": True, "is_dir": True, '
        '"entries": {"a/b": ["file", 1, 1, 420, "' + "0" * 64 + '", "", ""]}}).encode())',
        'send(json.dumps({"id": req["id"], "ok": True, "exists": True, "is_dir": True, '
        '"entries": {"a": ["file", 1, 1, 420, "nothex", "", ""]}}).encode())',
        'send(json.dumps({"id": req["id"], "ok": True, "exists": True, "is_dir": True, '
        '"entries": {"a": ["dir", -1, 1, 420, "", "", ""]}}).encode())',
        'send(b"this is not json")',
        'send(json.dumps({"id": 999, "ok": True}).encode())',
        'send(json.dumps({"id": req["id"], "ok": "maybe"}).encode())',
        'out.write(struct.pack(">I", 1 << 31)); out.flush()',
    ],
    ids=["dotdot", "orphan", "digest", "negative", "garbage", "unknown-id", "bad-ok", "huge"],
)
def test_a_lying_agent_is_bad_host_data(tmp_path: Path, reply: str) -> None:
    async def body(c: AgentClient) -> None:
        with pytest.raises(BadHostData):
            await c.scan("/anything")
        with pytest.raises((BadHostData, HostUnreachable)):
            await c.hello()  # the client is unusable from then on

    arun(body, wrapper=fake_agent(tmp_path, reply))


@pytest.mark.parametrize(
    "fields",
    ['"size": 10, "block": 4096', '"size": 8192, "block": 4096', '"size": -1, "block": 4096'],
    ids=["records-for-no-block", "too-few-records", "negative-size"],
)
def test_a_lying_signature_is_bad_host_data(tmp_path: Path, fields: str) -> None:
    """A signature must be one record per full block of the size it claims: anything else
    would be read as other blocks than the host has."""
    reply = (
        'body = b"x" * 32; send(json.dumps({"id": req["id"], "ok": True, "blob": len(body), '
        + fields
        + "}).encode()); out.write(body); out.flush()"
    )

    async def body(c: AgentClient) -> None:
        with pytest.raises(BadHostData):
            await c.signature("/anything", "f", 4096)

    arun(body, wrapper=fake_agent(tmp_path, reply))


@pytest.mark.parametrize(
    "fields",
    [
        '"digest": "nothex", "size": 5',
        '"digest": "' + "A" * 64 + '", "size": 5',
        '"size": 5',
        '"digest": "' + "0" * 64 + '", "size": "5"',
    ],
    ids=["not-hex", "upper", "missing", "size-text"],
)
def test_a_lying_prefix_digest_is_bad_host_data(tmp_path: Path, fields: str) -> None:
    """What the host says a file's start hashes to decides whether a pull goes as an append:
    anything but a sha256 and a size is refused."""
    reply = 'send(json.dumps({"id": req["id"], "ok": True, ' + fields + "}).encode())"

    async def body(c: AgentClient) -> None:
        with pytest.raises(BadHostData):
            await c.digest_prefix("/anything", "f", 10)

    arun(body, wrapper=fake_agent(tmp_path, reply))


@pytest.mark.parametrize(
    "fields",
    [
        '"exists": "yes", "created": False, "is_dir": True, "writable": True, "free_bytes": 1',
        '"exists": True, "created": False, "is_dir": True, "free_bytes": 1',
        '"exists": True, "created": False, "is_dir": True, "writable": True, "free_bytes": -1',
        '"exists": True, "created": False, "is_dir": True, "writable": True, "free_bytes": "9"',
    ],
    ids=["flag-text", "flag-missing", "free-negative", "free-text"],
)
def test_a_lying_folder_probe_is_bad_host_data(tmp_path: Path, fields: str) -> None:
    """A probe decides whether a first sync, a fetch or a bench goes ahead: four booleans
    and a size or nothing, anything else is refused."""
    reply = 'send(json.dumps({"id": req["id"], "ok": True, ' + fields + "}).encode())"

    async def body(c: AgentClient) -> None:
        with pytest.raises(BadHostData):
            await c.probe("/anything")

    arun(body, wrapper=fake_agent(tmp_path, reply))


def test_an_agent_that_dies_fails_pending_calls_promptly(tmp_path: Path) -> None:
    async def body(c: AgentClient) -> float:
        started = time.monotonic()
        with pytest.raises(HostUnreachable):
            await asyncio.gather(*(c.hello() for _ in range(5)))
        return time.monotonic() - started

    assert arun(body, wrapper=fake_agent(tmp_path, "sys.exit(0)")) < 5
