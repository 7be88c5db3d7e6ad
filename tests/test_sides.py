"""daemon/sync/sides.py, this machine's side: what a transfer reads is exactly what is on disk, and
a file that is no longer what the scan saw is refused (``changed``: rescan, never send it)."""

from __future__ import annotations

import asyncio
import hashlib
import os
from pathlib import Path

import pytest
from tether.sync.entry import Entry, EntryKind
from tether.sync.sides import LocalSide, OpFailed, read_to_end


def scanned(path: Path, *, hashed: bool) -> Entry:
    """The entry a scan made of ``path`` (unhashed, as a new file is until it is read)."""
    st = path.stat()
    digest = hashlib.sha256(path.read_bytes()).hexdigest() if hashed else ""
    return Entry(EntryKind.FILE, st.st_size, st.st_mtime_ns, st.st_mode & 0o7777, digest)


async def no_agent() -> None:
    raise AssertionError("reading must not start an agent")


@pytest.mark.parametrize("size", [0, 1, 4096, 70_000, 300_000])
def test_read_to_end_reads_everything_even_if_the_file_grew(tmp_path: Path, size: int) -> None:
    path = tmp_path / "f"
    path.write_bytes(os.urandom(size))
    for told in (size, size // 3):  # what stat said, or less: it grew since
        fd = os.open(path, os.O_RDONLY)
        try:
            assert read_to_end(fd, told) == path.read_bytes()
        finally:
            os.close(fd)


@pytest.mark.parametrize("hashed", [True, False], ids=["hashed", "unhashed"])
def test_reads_what_the_scan_saw_and_refuses_a_changed_file(tmp_path: Path, hashed: bool) -> None:
    same, grown = tmp_path / "same.py", tmp_path / "grown.py"
    same.write_bytes(b"print('same')\n")
    grown.write_bytes(b"v1\n")
    expect = {p.name: scanned(p, hashed=hashed) for p in (same, grown)}
    with grown.open("ab") as fh:  # edited after the scan
        fh.write(b"v2\n")
    side = LocalSide(tmp_path, no_agent)
    got = asyncio.run(side.read_many([(name, entry) for name, entry in expect.items()]))
    content, refused = got
    assert not isinstance(content, OpFailed)
    assert content.data == same.read_bytes()
    assert content.digest == hashlib.sha256(same.read_bytes()).hexdigest()
    assert isinstance(refused, OpFailed) and refused.kind == "changed"
