"""Move one big file between two sides in bounded memory: streamed, sparse, or as a delta.

Every big file goes as a stream of ranges of at most :data:`CHUNK` bytes with a fixed window of
them in flight (:data:`WINDOW`) both ways, hashed as it goes, so neither end nor this process
ever holds more than about ``WINDOW * CHUNK`` of it, whatever its size. Holes are found where it
is read and seeked over where it is written (daemon/sync/sparse.py). A changed file of at least
:data:`DELTA_MIN` bytes goes as a delta against what the receiver has (daemon/sync/delta.py):
the receiver's agent rebuilds it beside the target from its old blocks and the bytes it lacks,
checks the sha256 of the result and renames it into place like any other file. A delta whose
result fails that check is dropped and the file is sent whole. Nothing partial is ever visible:
a failure anywhere (the source changed, the link was cut) drops the staged file.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from typing import Any, Protocol, TypeVar

from .blocks import block_size
from .delta import Copy, Event, Matcher, Signature, found_blocks, pull_plan
from .endpoint import Range, Seg
from .entry import Entry, EntryKind
from .sparse import Piece, hash_zeros
from .wire import CHUNK, WINDOW

log = logging.getLogger(__name__)

DELTA_MIN = 4 << 20
"""A changed file at least this big (both versions) goes as a delta."""


def hashed_as_sent(size: int, mtime_ns: int, base: Entry | None, remote: Entry | None) -> bool:
    """May this side's file (``size`` bytes, modified at ``mtime_ns``), which the scan left
    unhashed, go unhashed into reconcile, its digest learned as it is sent?

    Yes when it is big (a delta), its size or mtime is not the base's (it was written since the
    last sync; a file that only lost its cache entry, e.g. one written just before that sync,
    is hashed and found unchanged), and the other side still holds the base's content: then it
    is this side's change whatever its bytes, so no comparison needs its digest, and the
    transfer reads it once, hashing as it goes, instead of a scan reading it first (the digest
    that lands in the base is the sha256 of what was read, checked where it landed, never a
    guess). A rewrite with the same bytes costs a delta of block copies, as with rsync.
    Anything else (the other side changed too, or no base) is hashed first: a conflict, a
    deletion against a modification, or a first sync of two copies depends on the bytes.
    """
    return (
        size >= DELTA_MIN
        and base is not None
        and base.kind is EntryKind.FILE
        and base.size >= DELTA_MIN
        and (size, mtime_ns) != (base.size, base.mtime_ns)
        and base.same_content(remote)
    )


BytesFn = Callable[[int], None]
"""``on_bytes(done)``: how many of the file's bytes have landed (or been settled) so far."""
T = TypeVar("T")


class StreamSide(Protocol):
    """What a transfer needs of a side (:class:`~tether.sync.sides.Side` has it)."""

    local: bool

    async def read_range(self, path: str, offset: int, length: int) -> Range: ...
    async def signature(self, path: str, block: int) -> tuple[bytes, int] | None: ...
    async def digest_prefix(self, path: str, length: int) -> tuple[str, int] | None: ...
    async def write_stream(
        self,
        path: str,
        frames: AsyncIterator[list[Seg]],
        entry: Entry,
        expect: Entry | None,
        digest: Callable[[], str],
        base: bool = False,
    ) -> Entry: ...


class SourceChanged(Exception):
    """The file being sent is not what the scan saw (apply turns it into ``changed``)."""


async def ordered(
    jobs: Iterable[Callable[[], Awaitable[T]]], window: int = WINDOW
) -> AsyncIterator[T]:
    """Run ``jobs`` with at most ``window`` in flight; yield their results in order."""
    it = iter(jobs)
    pending: deque[asyncio.Future[T]] = deque()
    try:
        for job in it:
            pending.append(asyncio.ensure_future(job()))
            if len(pending) >= window:
                break
        while pending:
            result = await pending.popleft()
            for job in it:
                pending.append(asyncio.ensure_future(job()))
                break
            yield result
    finally:
        for task in pending:
            task.cancel()
        if pending:
            await asyncio.gather(*pending, return_exceptions=True)


async def pieces_of(
    side: StreamSide, path: str, entry: Entry, start: int = 0, end: int | None = None
) -> AsyncIterator[list[Piece]]:
    """The file at ``path`` (bytes ``start`` to ``end``) range by range, as long as it is the
    one the scan saw (its size, and its mtime where the scan left it unhashed; its digest is the
    caller's to check)."""
    stop = entry.size if end is None else end

    def job(offset: int) -> Callable[[], Awaitable[Range]]:
        return lambda: side.read_range(path, offset, min(CHUNK, stop - offset))

    async for got in ordered(job(offset) for offset in range(start, stop, CHUNK)):
        if got.size != entry.size or (not entry.digest and got.mtime_ns != entry.mtime_ns):
            raise SourceChanged(f"{path} changed since it was scanned")
        yield got.pieces


async def _hash(h: Any, pieces: list[Piece]) -> None:
    """Hash pieces off the event loop (hashlib lets go of the GIL)."""

    def work() -> None:
        for piece in pieces:
            if isinstance(piece, int):
                hash_zeros(h, piece)
            else:
                h.update(piece)

    await asyncio.to_thread(work)


def seg_len(seg: Seg) -> int:
    """How many of the file's bytes a segment stands for."""
    if isinstance(seg, int):
        return seg
    return seg[1] if isinstance(seg, tuple) else len(seg)


def _dense(pieces: list[Piece]) -> bytes:
    """A range's bytes with its holes as zeros (at most CHUNK: bounded)."""
    return b"".join(bytes(p) if isinstance(p, int) else p for p in pieces)


async def copy_file(
    there: StreamSide,
    here: StreamSide,
    src: str,
    dst: str,
    new: Entry,
    old: Entry | None,
    on_bytes: BytesFn | None = None,
) -> str:
    """Copy ``there:src`` (scanned as ``new``) to ``here:dst`` (expected to be ``old``).

    Returns the sha256 of what landed. Raises SourceChanged, or the sides' own errors.
    """
    if (
        old is not None
        and old.kind is EntryKind.FILE
        and min(old.size, new.size) >= DELTA_MIN
        and (here.local or there.local)
    ):
        try:
            pushed = here.local is False
            append = _append if pushed else _append_pulled
            done = await append(there, here, src, dst, new, old, on_bytes)
            if done is not None:
                return done
            done = await (
                _push(there, here, src, dst, new, old, on_bytes)
                if pushed
                else _pull(there, here, src, dst, new, old, on_bytes)
            )
            if done is not None:
                return done
        except DeltaFailed as exc:
            log.info("%s: the delta did not land (%s); sending it whole", dst, exc)
    return await _whole(there, here, src, dst, new, old, on_bytes)


class DeltaFailed(Exception):
    """A delta could not be made or its result failed its digest: send the file whole."""


async def _whole(
    there: StreamSide,
    here: StreamSide,
    src: str,
    dst: str,
    new: Entry,
    old: Entry | None,
    on_bytes: BytesFn | None,
) -> str:
    h = hashlib.sha256()

    async def frames() -> AsyncIterator[list[Seg]]:
        async for segs in _sent(there, src, new, 0, h, on_bytes):
            yield segs
        if new.digest and h.hexdigest() != new.digest:
            raise SourceChanged(f"{src} changed since it was scanned")

    await here.write_stream(dst, frames(), new, old, h.hexdigest)
    return h.hexdigest()


async def _sent(
    there: StreamSide, src: str, new: Entry, start: int, h: Any, on_bytes: BytesFn | None
) -> AsyncIterator[list[Seg]]:
    """The frames of ``new``'s bytes from ``start`` on as they are read, hashed into ``h``
    (unless None) on the way, with progress counted from ``start``."""
    done = start
    async for pieces in pieces_of(there, src, new, start):
        if h is not None:
            await _hash(h, pieces)
        yield list(pieces)
        done += sum(seg_len(p) for p in pieces)
        if on_bytes is not None:
            on_bytes(done)


APPEND_PROBE = 64 << 10
"""Bytes compared at the end of the receiver's file before it is taken for the start of the
new one."""


class NotAppended(Exception):
    """The new file does not begin with the receiver's: send it as an ordinary delta."""


async def _append(
    there: StreamSide,
    here: StreamSide,
    src: str,
    dst: str,
    new: Entry,
    old: Entry,
    on_bytes: BytesFn | None,
) -> str | None:
    """A push of ``new`` that is ``old`` with bytes added at its end (a growing log, a dataset
    appended to): the host copies its own file and only the tail crosses the link; no
    signature, no matching. None when it is not such a file: the caller sends a delta.

    Tried only where ``old``'s last bytes are the same bytes of ``new`` (one small read each
    side), and exact: the start of ``new``, read and hashed here while the host copies, must
    hash to ``old``'s digest before any of the tail is sent, and the host checks the whole
    result against ``new``'s digest before the rename.
    """
    if not there.local or not await _ends_alike(there, here, src, dst, new, old):
        return None
    h = hashlib.sha256()

    async def frames() -> AsyncIterator[list[Seg]]:
        yield [(0, old.size)]  # the host starts copying while the start is hashed here
        async for pieces in pieces_of(there, src, new, 0, old.size):
            await _hash(h, pieces)
        if h.copy().hexdigest() != old.digest:
            raise NotAppended(f"{src} does not begin with the host's copy")
        async for segs in _sent(there, src, new, old.size, h, on_bytes):
            yield segs
        if new.digest and h.hexdigest() != new.digest:
            raise SourceChanged(f"{src} changed since it was scanned")

    try:
        return await _landed(
            here.write_stream(dst, frames(), new, old, h.hexdigest, True), h.hexdigest
        )
    except (NotAppended, DeltaFailed) as exc:
        log.info("%s: not an append after all (%s); sending a delta", dst, exc)
        return None


async def _ends_alike(
    there: StreamSide, here: StreamSide, src: str, dst: str, new: Entry, old: Entry
) -> bool:
    """Could ``new`` be ``old`` (known by its digest) with bytes added: is it longer, and are the
    last bytes of the receiver's ``old`` the same bytes of the sender's ``new``, both still
    their scanned sizes? (One small read each side: is it worth trying as an append?)"""
    if new.size <= old.size or not old.digest:
        return False
    n = min(APPEND_PROBE, old.size)
    sent = await there.read_range(src, old.size - n, n)
    try:
        kept = await here.read_range(dst, old.size - n, n)
    except Exception as exc:
        if getattr(exc, "kind", ""):  # a per-path failure (gone, unreadable): the delta decides
            return False
        raise
    return (kept.size, sent.size) == (old.size, new.size) and _dense(kept.pieces) == _dense(
        sent.pieces
    )


async def _append_pulled(
    there: StreamSide,
    here: StreamSide,
    src: str,
    dst: str,
    new: Entry,
    old: Entry,
    on_bytes: BytesFn | None,
) -> str | None:
    """A pull of the host's ``new`` that is this machine's ``old`` with bytes added at its end
    (a training log, a results CSV growing on the host): this machine copies its own file and
    fetches only the tail; no signature, no matching. None when it is not such a file.

    Tried only where the ends agree (:func:`_ends_alike`) and the host's file begins with
    ``old``'s bytes: the host hashes that start (one read there, instead of signing all of it
    and matching all of this side's copy against that here). The rebuilt file must still hash
    to ``new``'s digest (the host's scan) before it is renamed into place.
    """
    if not here.local or not new.digest or not await _ends_alike(there, here, src, dst, new, old):
        return None
    start = await there.digest_prefix(src, old.size)
    if start is None:
        return None
    if start[1] != new.size:
        raise SourceChanged(f"{src} changed since it was scanned")
    if start[0] != old.digest:
        return None

    async def frames() -> AsyncIterator[list[Seg]]:
        yield [(0, old.size)]
        async for segs in _sent(there, src, new, old.size, None, on_bytes):
            yield segs

    try:
        return await _landed(
            here.write_stream(dst, frames(), new, old, lambda: new.digest, True),
            lambda: new.digest,
        )
    except DeltaFailed as exc:
        log.info("%s: not an append after all (%s); sending a delta", dst, exc)
        return None


def _segs(events: list[Event], block: int) -> list[Seg]:
    """Matcher events → write segments: block copies (neighbours merged) and literal bytes."""
    segs: list[Seg] = []
    for event in events:
        if isinstance(event, Copy):
            at = event.block * block
            last = segs[-1] if segs else None
            if isinstance(last, tuple) and last[0] + last[1] == at:
                segs[-1] = (last[0], last[1] + block)
            else:
                segs.append((at, block))
        else:
            segs.append(event.data)
    return segs


async def _push(
    there: StreamSide,
    here: StreamSide,
    src: str,
    dst: str,
    new: Entry,
    old: Entry,
    on_bytes: BytesFn | None,
) -> str | None:
    """``there`` is this machine: match the new file against the host's signature of its old
    one; send block references and the bytes the host lacks.

    A file the scan left unhashed is hashed by a reader of its own that starts at once, so its
    sha256 runs beside the host's signing and the matching (two cores, not one after the
    other); the host checks the rebuilt file against that digest, so a file edited between the
    two reads never lands under it (the edit fails the check and the whole send finds it).
    With the scan's digest known, that check covers what was read, and nothing is hashed here.
    """
    hashing = None if new.digest else asyncio.ensure_future(_digest(there, src, new))
    try:
        block = block_size(old.size)
        got = await here.signature(dst, block)
        if got is None or got[1] != old.size:
            return None
        sig = Signature(block, got[0])
        matcher = Matcher(sig)
        whole = new.digest

        async def frames() -> AsyncIterator[list[Seg]]:
            nonlocal whole
            done = 0
            async for pieces in pieces_of(there, src, new):
                data = _dense(pieces)
                yield _segs(await asyncio.to_thread(matcher.feed, data), block)
                done += len(data)
                if on_bytes is not None:
                    on_bytes(done)
            yield _segs(matcher.finish(), block)
            if hashing is not None:
                whole = await hashing

        return await _landed(
            here.write_stream(dst, frames(), new, old, lambda: whole, True), lambda: whole
        )
    finally:
        if hashing is not None:  # done or not: its failure is seen through frames() or moot
            hashing.cancel()
            await asyncio.gather(hashing, return_exceptions=True)


async def _digest(side: StreamSide, path: str, entry: Entry) -> str:
    """The sha256 of the file at ``path``, read as :func:`pieces_of` reads it."""
    h = hashlib.sha256()
    async for pieces in pieces_of(side, path, entry):
        await _hash(h, pieces)
    return h.hexdigest()


async def _pull(
    there: StreamSide,
    here: StreamSide,
    src: str,
    dst: str,
    new: Entry,
    old: Entry,
    on_bytes: BytesFn | None,
) -> str | None:
    """``here`` is this machine: find which blocks of the host's new file this machine's old
    copy already has; copy those from it, fetch the rest."""
    if not new.digest:
        return None
    block = block_size(new.size)
    got = await there.signature(src, block)
    if got is None:
        return None
    if got[1] != new.size:
        raise SourceChanged(f"{src} changed since it was scanned")
    sig = Signature(block, got[0])
    matcher = Matcher(sig)
    have: dict[int, int] = {}
    async for pieces in pieces_of(here, dst, old):
        found_blocks(await asyncio.to_thread(matcher.feed, _dense(pieces)), sig, have)
    found_blocks(matcher.finish(), sig, have)

    def job(step: tuple[str, int, int]) -> Callable[[], Awaitable[list[Seg]]]:
        kind, offset, n = step

        async def run() -> list[Seg]:
            if kind == "copy":
                return [(offset, n)]
            got = await there.read_range(src, offset, n)
            if got.size != new.size:
                raise SourceChanged(f"{src} changed since it was scanned")
            return list(got.pieces)

        return run

    async def frames() -> AsyncIterator[list[Seg]]:
        done = 0
        async for segs in ordered(job(step) for step in pull_plan(have, sig, new.size)):
            yield segs
            done += sum(seg_len(s) for s in segs)
            if on_bytes is not None:
                on_bytes(done)

    return await _landed(
        here.write_stream(dst, frames(), new, old, lambda: new.digest, True), lambda: new.digest
    )


async def _landed(write: Awaitable[Entry], digest: Callable[[], str]) -> str:
    """Await a delta's write; a result that failed its digest (``corrupt``) or a base that is
    not there (``not_found``) is :class:`DeltaFailed`: the caller sends the file whole."""
    try:
        await write
    except Exception as exc:
        if getattr(exc, "kind", getattr(exc, "type", "")) in ("corrupt", "not_found"):
            raise DeltaFailed(str(exc)) from exc
        raise
    return digest()
