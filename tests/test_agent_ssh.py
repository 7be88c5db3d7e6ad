"""The agent client over a real OpenSSH server on loopback (tests/sshd.py)."""

from __future__ import annotations

import asyncio
import hashlib
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path, PurePosixPath
from typing import Any, TypeVar

import pytest
from tether.errors import HostUnreachable, RemoteError
from tether.sync.entry import EntryKind
from tether.transport.agent_boot import AGENT_PATH, BUNDLE
from tether.transport.agent_client import AgentClient
from tether.transport.ssh import open_connection

from tests.sshd import SshServer

T = TypeVar("T")
OLD_NS = 1_600_000_000 * 10**9


def over_ssh(sshd: SshServer, body: Callable[[Any], Awaitable[T]]) -> T:
    """Run ``body(conn)`` with a connection to the test sshd."""

    async def main() -> T:
        async with open_connection(sshd.host_config()) as conn:
            return await asyncio.wait_for(body(conn), 60)

    return asyncio.run(main())


def test_start_uploads_once(sshd: SshServer, tmp_path: Path) -> None:
    remote_dir = tmp_path / "cache"
    installed = remote_dir / "agent" / "agent.py"

    async def body(conn: Any) -> list[bool]:
        uploads = []
        for _ in range(2):
            client = await AgentClient.start(conn, remote_dir=str(remote_dir))
            uploads.append(client.uploaded)
            assert client.info["version"] == 1 and client.remote_dir == str(remote_dir)
            await client.close()
        installed.write_bytes(b"# an older agent\n")
        client = await AgentClient.start(conn, remote_dir=str(remote_dir))
        uploads.append(client.uploaded)
        await client.close()
        (remote_dir / "sync" / "tempnames.py").write_bytes(b"# a tampered module\n")
        client = await AgentClient.start(conn, remote_dir=str(remote_dir))
        uploads.append(client.uploaded)
        await client.close()
        return uploads

    assert over_ssh(sshd, body) == [True, False, True, True]
    assert installed.read_bytes() == AGENT_PATH.read_bytes()
    shipped = AGENT_PATH.parent.parent / "sync" / "tempnames.py"
    assert (remote_dir / "sync" / "tempnames.py").read_bytes() == shipped.read_bytes()
    # The verified sources only: run from the bytes checked, so no bytecode is written.
    assert sorted(p.relative_to(remote_dir).as_posix() for p in remote_dir.rglob("*")) == sorted(
        {"agent", "sync", *BUNDLE}
    )
    assert {"agent/agent.py", "agent/agent_base.py", "sync/wire.py"} <= set(BUNDLE)


MARKER_CODE = "open({marker!r}, 'a').write({label!r} + chr(10))\n"


def plant_pyc(source: Path, marker: Path) -> None:
    """Beside ``source``, bytecode that Python's import would take for it (same mtime and
    size in its header) but that only writes ``marker``: a tampered cache."""
    import importlib._bootstrap_external as external  # the one place pyc headers are built
    import importlib.util

    st = source.stat()
    code = compile(MARKER_CODE.format(marker=str(marker), label=f"pyc {source.name}"), "x", "exec")
    data = external._code_to_timestamp_pyc(code, int(st.st_mtime), st.st_size)
    cached = Path(importlib.util.cache_from_source(str(source)))
    cached.parent.mkdir(exist_ok=True)
    cached.write_bytes(bytes(data))


def test_the_agent_runs_only_its_verified_source(sshd: SshServer, tmp_path: Path) -> None:
    """A tampered ``__pycache__`` beside the installed agent and modules planted in the login
    folder (``-c`` puts it first on sys.path) or on PYTHONPATH never run: the bootstrap checks
    the digest with the real hashlib and runs the checked bytes themselves."""
    remote_dir, marker, planted = tmp_path / "cache", tmp_path / "marker", tmp_path / "home"
    planted.mkdir()
    bundled = tuple(PurePosixPath(rel).stem for rel in BUNDLE)  # agent, agent_base, wire, ...
    for name in ("hashlib", "json", "os", "re", "struct", "types", *bundled):
        (planted / f"{name}.py").write_text(MARKER_CODE.format(marker=str(marker), label=name))
    # The host's python as a user's login would start it: in that folder, with it on PYTHONPATH.
    python = tmp_path / "python3"
    python.write_text(
        f'#!/bin/sh\ncd {planted}\nexport PYTHONPATH={planted}\nexec {sys.executable} "$@"\n'
    )
    python.chmod(0o755)

    async def body(conn: Any) -> None:
        for _ in range(2):  # installing, then with its files in place and a tampered cache
            client = await AgentClient.start(conn, python=str(python), remote_dir=str(remote_dir))
            try:
                assert (await client.hello())["version"] == 1
                scan = await client.scan(str(planted))
                assert "hashlib.py" in scan.entries
            finally:
                await client.close()
            for name in BUNDLE:
                plant_pyc(remote_dir / name, marker)

    over_ssh(sshd, body)
    assert not marker.exists(), marker.read_text()


def test_no_python_on_the_host_is_a_remote_error(sshd: SshServer) -> None:
    async def body(conn: Any) -> None:
        with pytest.raises(RemoteError) as info:
            await AgentClient.start(conn, python="/no/such/python3")
        assert "python" in info.value.message and info.value.hint

    over_ssh(sshd, body)


def test_scan_write_read_round_trip(sshd: SshServer, tmp_path: Path) -> None:
    root = tmp_path / "remote"
    root.mkdir()
    (root / "exists.txt").write_text("already here")
    big = bytes(range(256)) * 12_000  # 3 MB: chunked both ways

    async def body(conn: Any) -> None:
        client = await AgentClient.start(conn, remote_dir=str(tmp_path / "cache"))
        try:
            before = await client.scan(str(root))
            assert set(before.entries) == {"exists.txt"}
            entry = await client.write(
                str(root), "pkg/big.bin", big, mode=0o755, mtime_ns=OLD_NS, expect=None
            )
            assert entry.kind is EntryKind.FILE and entry.executable
            ranges = [  # a big file is read in ranges, a window of them in flight
                await client.read_range(str(root), "pkg/big.bin", offset, 1 << 20)
                for offset in range(0, len(big), 1 << 20)
            ]
            assert b"".join(p for r in ranges for p in r.pieces) == big  # type: ignore[misc]
            assert {r.size for r in ranges} == {len(big)}
            after = await client.scan(str(root))
            assert after.entries["pkg/big.bin"] == entry
            assert after.entries["pkg"].kind is EntryKind.DIRECTORY
        finally:
            await client.close()

    over_ssh(sshd, body)
    assert hashlib.sha256((root / "pkg" / "big.bin").read_bytes()).hexdigest() == (
        hashlib.sha256(big).hexdigest()
    )


def test_pipelined_small_writes(sshd: SshServer, tmp_path: Path) -> None:
    root = tmp_path / "remote"
    root.mkdir()  # a missing root is never created by writes: the pair would halt instead

    async def body(conn: Any) -> int:
        client = await AgentClient.start(conn, remote_dir=str(tmp_path / "cache"))
        try:
            await asyncio.gather(
                *(
                    client.write(
                        str(root),
                        f"d{i % 10}/f{i}.py",
                        f"x = {i}\n".encode(),
                        mode=0o644,
                        mtime_ns=OLD_NS,
                        expect=None,
                    )
                    for i in range(500)
                )
            )
            return len((await client.scan(str(root))).entries)
        finally:
            await client.close()

    assert over_ssh(sshd, body) == 510
    assert (root / "d7" / "f417.py").read_text() == "x = 417\n"


def test_exec_over_ssh_survives_the_agent(sshd: SshServer, tmp_path: Path) -> None:
    flag = tmp_path / "go"

    async def start(conn: Any) -> dict[str, Any]:
        client = await AgentClient.start(conn, remote_dir=str(tmp_path / "cache"))
        try:
            return await client.exec(
                f"echo started; while [ ! -e {flag} ]; do sleep 0.02; done; echo done; exit 5",
                env={"TETHER_TEST": "1"},
            )
        finally:
            await client.close()

    run = over_ssh(sshd, start)  # the SSH connection is gone; the run goes on
    flag.touch()

    async def collect(conn: Any) -> tuple[bytes, dict[str, Any]]:
        client = await AgentClient.start(conn, remote_dir=str(tmp_path / "cache"))
        out: list[bytes] = []
        try:
            status = await client.attach(run["run_id"], on_output=out.append)
        finally:
            await client.close()
        return b"".join(out), status

    output, status = over_ssh(sshd, collect)
    assert output == b"started\ndone\n"
    assert status["exit_code"] == 5


def test_an_agent_that_does_not_start_in_time_is_a_one_line_error(
    sshd: SshServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A host whose login hangs before the agent answers (a login script waiting on a lock):
    HostUnreachable naming what to try, not a TimeoutError traceback."""
    from tether.transport import agent_client

    monkeypatch.setattr(agent_client, "HELLO_TIMEOUT_S", 1.0)
    python = tmp_path / "python3"
    python.write_text(f'#!/bin/sh\nsleep 20\nexec {sys.executable} "$@"\n')
    python.chmod(0o755)

    async def body(conn: Any) -> None:
        with pytest.raises(HostUnreachable) as info:
            await AgentClient.start(conn, python=str(python), remote_dir=str(tmp_path / "c"))
        assert "did not start on the host within 1 s" in str(info.value)

    over_ssh(sshd, body)
