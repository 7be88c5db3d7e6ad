"""The SFTP endpoint (hosts without python3) under the real sync engine and a real sshd."""

from __future__ import annotations

import asyncio
import hashlib
import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from tether.config import load_config
from tether.sync.endpoint import Seg
from tether.sync.entry import Entry
from tether.transport.sftp_endpoint import SftpEndpoint
from tether.transport.ssh import open_connection

from tests.helpers import sync_over_sftp
from tests.sshd import SshServer


@pytest.fixture
def project(sshd: SshServer, tmp_path: Path, state_dir: Path) -> Path:
    local = tmp_path / "local"
    local.mkdir()
    (local / "tether.toml").write_text(
        sshd.toml_host("gpu")
        + f'[pairs.code]\nhost = "gpu"\nremote = "{tmp_path}/remote"\nmode = "two-way"\n'
    )
    return local


def test_two_way_over_sftp(project: Path, tmp_path: Path) -> None:
    remote = tmp_path / "remote"
    (project / "src").mkdir()
    (project / "src" / "k.py").write_text("kernel")
    (project / "run.sh").write_text("#!/bin/sh\necho hi\n")
    os.chmod(project / "run.sh", 0o755)
    os.symlink("src/k.py", project / "link.py")
    report = sync_over_sftp(project / "tether.toml")
    assert report.status.value == "ok", report.message
    assert (remote / "src" / "k.py").read_text() == "kernel"
    assert os.stat(remote / "run.sh").st_mode & 0o111
    assert os.readlink(remote / "link.py") == "src/k.py"
    assert not [p for p in remote.rglob("*.tmp")]  # staged files were renamed into place

    (remote / "from_host.txt").write_text("host")
    (project / "src" / "k.py").unlink()
    sync_over_sftp(project / "tether.toml")
    assert (project / "from_host.txt").read_text() == "host"
    assert not (remote / "src" / "k.py").exists()

    # A real conflict keeps both versions.
    (project / "run.sh").write_text("#!/bin/sh\necho local\n")
    (remote / "run.sh").write_text("#!/bin/sh\necho remote edit\n")
    report = sync_over_sftp(project / "tether.toml")
    assert len(report.conflicts) == 1
    copies = [p.name for p in project.iterdir() if ".conflict-" in p.name]
    assert len(copies) == 1


def test_escaping_symlink_on_host_is_not_followed(project: Path, tmp_path: Path) -> None:
    remote = tmp_path / "remote"
    remote.mkdir()
    os.symlink("/etc/passwd", remote / "escape")
    report = sync_over_sftp(project / "tether.toml")
    assert not (project / "escape").exists()
    assert report.status.value == "ok"


def test_names_over_sftp_are_bytes_and_a_backslash_is_a_reported_problem(
    project: Path, tmp_path: Path
) -> None:
    """A name that is not UTF-8 syncs faithfully both ways; a name with a backslash (tether's
    path rules refuse it) is reported and skipped while the rest syncs (it used to fail the
    whole sync as bad host data)."""
    remote = tmp_path / "remote"
    remote.mkdir()
    (remote / "back\\slash").write_text("x")
    with open(os.path.join(os.fsencode(remote), b"h\xf4te.txt"), "wb") as fh:
        fh.write(b"from the host")
    with open(os.path.join(os.fsencode(project), b"caf\xe9.txt"), "wb") as fh:
        fh.write(b"from here")
    for _ in range(2):
        report = sync_over_sftp(project / "tether.toml")
        assert report.status.value == "ok", report.message
        assert [p.path for p in report.problems] == ["back\\slash"]
    assert sorted(os.listdir(os.fsencode(project))) == [
        b"caf\xe9.txt",
        b"h\xf4te.txt",
        b"tether.toml",
    ]
    with open(os.path.join(os.fsencode(remote), b"caf\xe9.txt"), "rb") as fh:
        assert fh.read() == b"from here"


def test_tether_sync_falls_back_to_sftp_with_a_warning(
    sshd: SshServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import subprocess
    import sys

    monkeypatch.setenv("TETHER_STATE_DIR", str(tmp_path / "state"))
    local = tmp_path / "proj"
    local.mkdir()
    (local / "tether.toml").write_text(
        sshd.toml_host("gpu")
        + 'python = "/nonexistent/python3"\n'
        + f'[pairs.code]\nhost = "gpu"\nremote = "{tmp_path}/remote"\n'
    )
    (local / "kernel.py").write_text("k = 1\n")
    result = subprocess.run(
        [sys.executable, "-m", "tether.cli.main", "sync"],
        cwd=local,
        capture_output=True,
        text=True,
        timeout=60,
        env=os.environ.copy(),
    )
    assert result.returncode == 0, result.stderr
    assert "syncing over SFTP instead" in result.stderr
    assert (tmp_path / "remote" / "kernel.py").read_text() == "k = 1\n"


def test_big_and_sparse_files_stream_both_ways_over_sftp(project: Path, tmp_path: Path) -> None:
    """Over SFTP too a big file goes in ranges (no whole-file read) and its holes stay holes
    on the host; a changed one (no signatures there) is sent whole, exactly."""
    remote = tmp_path / "remote"
    sparse, big = project / "sparse.img", project / "big.bin"
    with sparse.open("wb") as fh:
        fh.seek(40 << 20)
        fh.write(os.urandom(3 << 20))
        fh.truncate(64 << 20)
    big.write_bytes(os.urandom(9 << 20))
    report = sync_over_sftp(project / "tether.toml")
    assert report.status.value == "ok", report.message
    assert (remote / "sparse.img").read_bytes() == sparse.read_bytes()
    if sparse.stat().st_blocks * 512 < 8 << 20:  # a filesystem that keeps holes
        assert (remote / "sparse.img").stat().st_blocks * 512 < 8 << 20
    (remote / "host.bin").write_bytes(os.urandom(5 << 20))
    with (remote / "big.bin").open("r+b") as fh:
        fh.seek(4 << 20)
        fh.write(b"edited on the host")
    sync_over_sftp(project / "tether.toml")
    assert big.read_bytes() == (remote / "big.bin").read_bytes()
    assert (project / "host.bin").read_bytes() == (remote / "host.bin").read_bytes()
    assert not [p for p in remote.rglob("*.tmp")] + [p for p in project.rglob("*.tmp")]


def test_a_streamed_write_keeps_its_temporary_from_a_scan(project: Path, tmp_path: Path) -> None:
    """While a big file streams over SFTP, a scan of its folder in this process (another
    pair's, or the next cycle's) sees the temporary as one being written, not as a cut
    write's leftover to remove under the writer's feet."""
    config = load_config(project / "tether.toml")
    remote = tmp_path / "remote"
    remote.mkdir()
    data = b"a" * 4096 + b"b" * 4096
    seen: list[list[str]] = []

    async def body() -> Entry:
        async with open_connection(config.host("gpu")) as conn:
            endpoint = await SftpEndpoint.start(conn)

            async def frames() -> AsyncIterator[list[Seg]]:
                yield [data[:4096]]
                await endpoint.scan(str(remote))  # mid-write
                seen.append([p.name for p in remote.iterdir()])
                yield [data[4096:]]

            try:
                return await endpoint.write_stream(
                    str(remote), "big.bin", frames(), mode=0o644, mtime_ns=10**18,
                    expect=None, digest=lambda: hashlib.sha256(data).hexdigest(),
                )  # fmt: skip
            finally:
                await endpoint.close()

    entry = asyncio.run(body())
    assert [len(names) for names in seen] == [1] and seen[0][0].endswith(".tmp")
    assert (remote / "big.bin").read_bytes() == data and entry.size == len(data)
    assert [p.name for p in remote.iterdir()] == ["big.bin"]
