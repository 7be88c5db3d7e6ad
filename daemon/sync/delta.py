"""Deltas of big files: the receiver's block signatures, a matcher that finds those blocks in
another stream of bytes, and the plan that rebuilds a file from blocks it has and bytes it lacks.

The side that holds a file signs its blocks (daemon/sync/blocks.py, shipped to the host too, so
both ends use one recipe). The matcher always runs in tether's own process, over the file on
*this* machine:

* push (this machine's file is new): the host signs its current version; the matcher walks the
  new file and says, per stretch, "block k of yours" or "these bytes"; the host rebuilds the
  file from its old blocks and the bytes it is sent (rsync's direction).
* pull (the host's file is new): the host signs the *new* file; the matcher walks this machine's
  old copy to find which of those blocks it already has, and only the rest is fetched (zsync's
  direction). Either way the host needs nothing but signing and copying blocks.

Why no byte-by-byte rolling checksum: in CPython one step costs ~3 us here (0.3 MB/s), so a
1 MiB change would cost seconds and a file of new bytes minutes. Instead the matcher checks the
block that would follow the last match at the aligned position (sha256 runs in C), and where that
fails it looks for the heads of the next few expected blocks with ``bytearray.find`` (C speed,
~GB/s) in a window ahead, confirming any hit with the block's sum. That finds what a
growing log, a rewritten middle, an insertion or a deletion leave behind; a file whose blocks were
reordered wholesale is sent mostly whole, which is still correct. Correctness never rests on the
search: the rebuilt file's sha256 is checked before it is renamed into place.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

from .blocks import RECORD, strong

SEARCH = 1 << 20
"""How far past a mismatch the matcher looks for the next expected block at once."""
CANDIDATES = 8
"""Expected blocks looked for after a mismatch (a deletion of up to this many is found)."""
TRIES = 32
"""Head hits confirmed per candidate and window (a head of zeros can hit everywhere)."""
LITERAL = 1 << 20
"""Literal bytes are handed on in pieces of at most this size."""


@dataclass(frozen=True)
class Signature:
    """The signed blocks of one file: ``count`` records of RECORD.size bytes in ``raw``."""

    block: int
    raw: bytes
    by_strong: dict[bytes, list[int]] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if len(self.raw) % RECORD.size or self.block < 16:
            raise ValueError("a signature is whole records of blocks of at least 16 bytes")
        index: dict[bytes, list[int]] = {}
        for k, (sum_, _) in enumerate(RECORD.iter_unpack(self.raw)):
            index.setdefault(sum_, []).append(k)
        object.__setattr__(self, "by_strong", index)

    @property
    def count(self) -> int:
        return len(self.raw) // RECORD.size

    def record(self, k: int) -> tuple[bytes, bytes]:
        """Block ``k``'s (sum, head)."""
        sum_, head = RECORD.unpack_from(self.raw, k * RECORD.size)
        return sum_, head

    def twins(self, k: int) -> list[int]:
        """Every block with block ``k``'s content (``k`` included)."""
        return self.by_strong[self.record(k)[0]]


@dataclass(frozen=True)
class Copy:
    """``pos``: where in the matched stream block ``block`` of the signed file was found."""

    pos: int
    block: int


@dataclass(frozen=True)
class Literal:
    """Bytes of the matched stream, from ``pos``, that no signed block covers."""

    pos: int
    data: bytes


Event = Copy | Literal


class Matcher:
    """Walk a stream fed in pieces; say where the signed file's blocks occur in it.

    Holds at most about ``search + block + LITERAL`` bytes and a fed piece, whatever the
    stream's size.
    """

    def __init__(self, sig: Signature, search: int = SEARCH) -> None:
        self.sig = sig
        self.search = search
        self.buf = bytearray()
        self.start = 0  # stream offset of buf[0]
        self.p = 0  # where the next match is tried (index in buf)
        self.lit = 0  # where the pending literal begins (index in buf)
        self.last = -1  # the block matched last

    def feed(self, data: bytes | bytearray | memoryview) -> list[Event]:
        self.buf += data
        return self._run(final=False)

    def finish(self) -> list[Event]:
        """The rest of the stream: what is left unmatched is literal."""
        out = self._run(final=True)
        self._flush(out, len(self.buf))
        self._trim()
        return out

    def _run(self, *, final: bool) -> list[Event]:
        out: list[Event] = []
        if self.sig.count == 0:
            self.p = len(self.buf)
        b = self.sig.block
        while True:
            avail = len(self.buf) - self.p
            if avail < b or (not final and avail < b + self.search):
                break
            k = self._match(self.p, self._expected())
            if k is None:
                hi = min(self.p + self.search, len(self.buf) - b)
                found = self._search(self.p + 1, hi)
                if found is None:
                    self.p = hi + 1
                    if self.p - self.lit >= LITERAL:
                        self._flush(out, self.p)
                    continue
                self.p, k = found
            self._flush(out, self.p)
            out.append(Copy(self.start + self.p, k))
            self.p += b
            self.lit = self.p
            self.last = k
        self._trim()
        return out

    def _expected(self) -> list[int]:
        """The blocks most likely to come next: those after the last match."""
        first = self.last + 1
        return list(range(first, min(first + CANDIDATES, self.sig.count)))

    def _match(self, at: int, prefer: list[int]) -> int | None:
        """The signed block equal to buf[at:at+block], if any (an expected one first)."""
        with memoryview(self.buf) as view, view[at : at + self.sig.block] as piece:
            got = strong(piece)
        ks = self.sig.by_strong.get(got)
        if not ks:
            return None
        for k in prefer:
            if self.sig.record(k)[0] == got:
                return k
        return ks[0]

    def _probes(self) -> list[int]:
        """The blocks looked for past a mismatch: the next few (an edit or a small deletion),
        then ever farther ones (a big deletion: whatever block follows it will do, the blocks
        between are found again backwards from it)."""
        near = self._expected() or ([0] if self.sig.count else [])
        far, step = [], CANDIDATES * 2
        while self.last + step < self.sig.count:
            far.append(self.last + step)
            step *= 2
        return near + far

    def _search(self, lo: int, hi: int) -> tuple[int, int] | None:
        """The first position in [lo, hi] where a probed block starts, with that block, moved
        back over the blocks that precede it there too."""
        best: tuple[int, int] | None = None
        for k in self._probes():
            head = self.sig.record(k)[1]
            end = hi if best is None else best[0] - 1
            pos = self.buf.find(head, lo, end + len(head))
            tries = 0
            while 0 <= pos <= end and tries < TRIES:
                tries += 1
                if self._match(pos, [k]) == k:
                    best = (pos, k)
                    break
                pos = self.buf.find(head, pos + 1, end + len(head))
        if best is None:
            return None
        pos, k = best
        b = self.sig.block
        while k > self.last + 1 and pos - b >= self.lit and self._match(pos - b, [k - 1]) == k - 1:
            pos, k = pos - b, k - 1
        return pos, k

    def _flush(self, out: list[Event], upto: int) -> None:
        """Hand on buf[lit:upto] as literal pieces."""
        while self.lit < upto:
            stop = min(upto, self.lit + LITERAL)
            out.append(Literal(self.start + self.lit, bytes(self.buf[self.lit : stop])))
            self.lit = stop

    def _trim(self) -> None:
        drop = min(self.lit, self.p)
        if drop:
            del self.buf[:drop]
            self.start += drop
            self.p -= drop
            self.lit -= drop


Step = tuple[str, int, int]
"""("copy", offset in the old file, length) or ("fetch", offset in the new file, length)."""


def pull_plan(
    have: dict[int, int], sig: Signature, size: int, piece: int = LITERAL
) -> Iterator[Step]:
    """How to rebuild the signed (new) file of ``size`` bytes, in order, given ``have``: block
    index -> offset in the old file where that block's content lies. Neighbouring copies and
    fetches are merged (fetches up to ``piece`` bytes each)."""
    b = sig.block
    kind, off, n = "", 0, 0
    for k in range(sig.count):
        at = have.get(k)
        extends = kind == "copy" and off + n == at if at is not None else kind == "fetch"
        if extends and (at is not None or n + b <= piece):
            n += b
        else:
            if n:
                yield (kind, off, n)
            kind, off, n = ("copy", at, b) if at is not None else ("fetch", k * b, b)
    if n:
        yield (kind, off, n)
    pos = sig.count * b
    while pos < size:
        n = min(piece, size - pos)
        yield ("fetch", pos, n)
        pos += n


def found_blocks(events: list[Event], sig: Signature, have: dict[int, int]) -> None:
    """Note in ``have`` where each matched block (and each of its twins) lies in the old file."""
    for event in events:
        if isinstance(event, Copy):
            for k in sig.twins(event.block) if event.block not in have else ():
                have.setdefault(k, event.pos)
