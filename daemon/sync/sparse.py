"""Sparse files: where a file's data lies, and pieces of it with its holes left out.

A transfer moves a file as *pieces*: ``bytes`` for data and an ``int`` for a hole of that many
zero bytes. The reader finds holes with SEEK_DATA/SEEK_HOLE (where the platform and filesystem
have them) so a hole is neither read nor sent; the writer seeks over it, so it stays a hole; both
hash it as the zeros it reads as, in bounded pieces (a 2 GiB hole is never a 2 GiB buffer).
The host agent uses this module too: it ships in the agent's verified bundle, so it stays
stdlib-only and Python 3.8 (no ``X | Y`` outside annotations).
"""

from __future__ import annotations

import errno
import os
from typing import Any, Union

Piece = Union[bytes, int]
"""Data, or a hole of that many zero bytes."""
_ZEROS = bytes(1 << 20)
"""What a hole is hashed as, a piece at a time (the hash needs the zeros the disk never held)."""


def data_extents(fd: int, start: int, end: int) -> list[tuple[int, int]]:
    """The (start, stop) runs of data in [start, end) of ``fd``; one run where the platform or
    filesystem cannot tell holes apart (then zeros are simply read and sent)."""
    if start >= end:
        return []
    if not hasattr(os, "SEEK_DATA"):
        return [(start, end)]
    runs: list[tuple[int, int]] = []
    pos = start
    while pos < end:
        try:
            data = os.lseek(fd, pos, os.SEEK_DATA)
        except OSError as exc:
            if exc.errno == errno.ENXIO:  # nothing but a hole up to the end
                break
            return [(start, end)]
        if data >= end:
            break
        stop = min(os.lseek(fd, data, os.SEEK_HOLE), end)
        runs.append((data, stop))
        pos = stop
    return runs


def read_pieces(fd: int, offset: int, length: int, size: int) -> list[Piece]:
    """[offset, offset+length) of the file (cut at ``size``) as pieces: data read, holes not.
    A short read (the file shrank) ends the list early: the caller's digest check sees it."""
    end = min(offset + length, size)
    pieces: list[Piece] = []
    pos = offset
    for start, stop in data_extents(fd, offset, end):
        if start > pos:
            pieces.append(start - pos)
        data = os.pread(fd, stop - start, start)
        pieces.append(data)
        pos = start + len(data)
        if len(data) < stop - start:
            return pieces
    if pos < end:
        pieces.append(end - pos)
    return pieces


def hash_zeros(h: Any, n: int) -> None:
    """Feed ``n`` zero bytes to the hash ``h`` in pieces of at most ``len(_ZEROS)``."""
    view = memoryview(_ZEROS)
    while n > 0:
        step = min(n, len(view))
        h.update(view[:step])
        n -= step
