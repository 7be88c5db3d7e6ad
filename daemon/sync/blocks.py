"""Block signatures of big files: one recipe for both ends of a delta.

The side that holds a file cuts it into fixed blocks and signs each with the first 16 bytes of
its sha256 and its first 16 bytes (its *head*, which the matcher looks for with ``bytes.find``).
The host's agent signs with :func:`sign_fd`; tether's own process signs with the same function
and matches with daemon/sync/delta.py. The host uses this module as it is: it ships in the
agent's verified bundle, so it stays stdlib-only and Python 3.8.

Why no weak checksum beside the strong one (rsync's adler32): the matcher never rolls a checksum
byte by byte (see delta.py), so a weak sum would only pre-filter the strong one, and on CPUs with
SHA extensions sha256 alone (about 1.3 GB/s here) is cheaper than adler32 plus sha256 on every
block. Nothing rests on 16 bytes of it being unique either: a rebuilt file's whole sha256 is
checked before it lands.
"""

from __future__ import annotations

import hashlib
import os
import struct

BLOCK = 64 * 1024
"""Smallest block; bigger files get bigger blocks so a signature stays at most MAX_BLOCKS long."""
MAX_BLOCKS = 1 << 17
RECORD = struct.Struct(">16s16s")
"""One block's signature: sha256[:16], the block's first 16 bytes."""
SIG_MIN, SIG_MAX = 4096, 64 << 20
"""The block sizes a signer accepts."""


def block_size(size: int) -> int:
    """The block size for a file of ``size`` bytes: BLOCK, doubled until MAX_BLOCKS cover it."""
    block = BLOCK
    while size // block > MAX_BLOCKS:
        block *= 2
    return block


def strong(block: bytes | bytearray | memoryview) -> bytes:
    """A block's strong sum, as its signature record holds it."""
    return hashlib.sha256(block).digest()[:16]


def block_sig(block: bytes | bytearray | memoryview) -> bytes:
    """The signature record of one full block."""
    return RECORD.pack(strong(block), bytes(block[:16]))


def sign_fd(fd: int, block: int) -> tuple[bytes, int]:
    """The records of every full block of the open file ``fd`` from where it stands, and how
    many bytes were read (a short last block is not signed)."""
    parts: list[bytes] = []
    read = 0
    buf = bytearray(block)
    view = memoryview(buf)
    while True:
        got = 0
        while got < block:
            n = os.readv(fd, [view[got:]])
            if not n:
                break
            got += n
        read += got
        if got < block:
            view.release()
            return b"".join(parts), read
        parts.append(block_sig(view))
