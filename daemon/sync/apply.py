"""Carry out a plan: one transfer function over two :class:`~tether.sync.sides.Side` values.

Phases, each pipelined (many calls in flight over the agent's one multiplexed stream, so a small
file costs no round trip of its own): conflict copies step aside; deletes, deepest first; folders,
parents first; then files and links, with a bounded number in flight. Every change names the
entry it expects to find; a path edited since the scan fails ``changed`` and is left for a rescan,
never clobbered. A failure on one path becomes a :class:`~tether.sync.reconcile.Problem` and the
rest goes on; a full disk stops the whole apply (the agent removes its staged temp files).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from ..errors import RemoteError
from .entry import Entry, EntryKind
from .paths import is_within
from .reconcile import Action, ActionKind, Problem
from .reconcile import Side as Where
from .sides import Content, OpFailed, Side
from .transfer import SourceChanged, copy_file
from .wire import CHUNK

ProgressFn = Callable[[str, int, int], None]
"""``on_progress(path, bytes_done, bytes_total)``, called as each file lands."""
FileBytesFn = Callable[[str, int, int], None]
"""``on_file_bytes(path, bytes_done, file_size)``, called as a big file's bytes move."""
DigestFn = Callable[[str, str], object]
"""``on_digest(source_path, sha256)``: a file the scan left unhashed landed with this content."""

RESCAN_KINDS = frozenset({"changed", "exists", "not_empty", "not_found", "corrupt"})
IN_FLIGHT = 64
"""Files read and written concurrently (each streams with a window of a few MiB at most)."""
BIG_FILE = 8 << 20
BIG_IN_FLIGHT = 2
"""Files over BIG_FILE moved at once: their windows are what a transfer's memory comes to."""
SMALL_FILE = 256 * 1024
"""Files up to this size travel in batches (``read_many``, then one ``write_many``)."""
BATCH_BYTES = 1 << 20
BATCH_FILES = 512
BATCHES_IN_FLIGHT = 4
"""Batches read and written concurrently (bounds memory to about 4 MB of file bodies)."""


@dataclass
class Outcome:
    """What an apply did, path by path: the actions that landed, the digests it learned, and
    what did not land. :func:`~tether.sync.reconcile.next_base` takes these as its arguments."""

    done: list[Action] = field(default_factory=list)
    """The actions that landed, in plan order."""
    learned: dict[str, str] = field(default_factory=dict)
    """Source path → sha256 of each file that landed from an entry the scan left unhashed."""
    problems: list[Problem] = field(default_factory=list)
    changed: list[str] = field(default_factory=list)
    """Paths found different from the scan: rescan before trying again."""
    files: int = 0
    bytes: int = 0
    deleted: int = 0
    fatal: RemoteError | None = None


def total_bytes(actions: Iterable[Action]) -> int:
    return sum(
        a.new.size
        for a in actions
        if a.kind is ActionKind.COPY and a.new is not None and a.new.kind is EntryKind.FILE
    )


async def apply_plan(
    actions: list[Action],
    sides: dict[Where, Side],
    *,
    on_progress: ProgressFn | None = None,
    on_digest: DigestFn | None = None,
    on_file_bytes: FileBytesFn | None = None,
    in_flight: int = IN_FLIGHT,
) -> Outcome:
    """Run ``actions`` (in reconcile's order) against ``sides``; never raises for one path."""
    run = _Apply(sides, total_bytes(actions), on_progress, on_digest, on_file_bytes)
    asides = [a for a in actions if a.kind is ActionKind.MOVE_ASIDE]
    deletes = [a for a in actions if a.kind is ActionKind.DELETE]
    copies = [a for a in actions if a.kind is ActionKind.COPY and a.new is not None]
    dirs = [a for a in copies if a.new is not None and a.new.kind is EntryKind.DIRECTORY]
    leaves = [a for a in copies if a.new is not None and a.new.kind is not EntryKind.DIRECTORY]

    await run.all_of(asides)
    for depth in sorted({a.path.count("/") for a in deletes}, reverse=True):
        await run.all_of([a for a in deletes if a.path.count("/") == depth])
    for depth in sorted({a.path.count("/") for a in dirs}):
        await run.all_of([a for a in dirs if a.path.count("/") == depth])

    small = [a for a in leaves if _batchable(a)]
    rest = [a for a in leaves if not _batchable(a)]
    groups = [g for w in Where for g in _batches([a for a in small if a.side is w])]
    sem = asyncio.Semaphore(in_flight)
    await asyncio.gather(
        _lanes(groups, run.many, BATCHES_IN_FLIGHT),
        _lanes(rest, lambda a: run.one(a, sem), in_flight),
    )
    out = run.out
    # Keep plan order in ``done`` (next_base replays it).
    rank = {id(a): i for i, a in enumerate(actions)}
    out.done.sort(key=lambda a: rank[id(a)])
    return out


class _Apply:
    """One apply's running state: the outcome it builds and the subtrees that failed (an action
    below a failed path on the same side is skipped: its parent is not what the plan expects)."""

    def __init__(
        self,
        sides: dict[Where, Side],
        total: int,
        on_progress: ProgressFn | None,
        on_digest: DigestFn | None,
        on_file_bytes: FileBytesFn | None,
    ) -> None:
        self.sides, self.total = sides, total
        self.on_progress, self.on_digest, self.on_file_bytes = on_progress, on_digest, on_file_bytes
        self.out = Outcome()
        self.failed: list[tuple[Where, str]] = []
        self.big = asyncio.Semaphore(BIG_IN_FLIGHT)

    def skipped(self, a: Action) -> bool:
        """A full disk stopped the apply, or ``a`` lies below a path that failed on its side."""
        return self.out.fatal is not None or any(
            side is a.side and is_within(a.path, p) for side, p in self.failed
        )

    def fail(self, a: Action, exc: OpFailed) -> None:
        out = self.out
        self.failed.append((a.side, a.path))
        out.problems.append(Problem(a.path, f"{a.side.value}: {exc.message}"))
        if exc.kind in RESCAN_KINDS:
            out.changed.append(a.path)
        if exc.kind == "no_space" and out.fatal is None:
            out.fatal = RemoteError(
                f"{a.side.value} disk is full while writing {a.path}",
                "free some space there and run `tether sync` again; nothing partial was kept",
            )

    def landed(self, a: Action, digest: str) -> None:
        """A file is in place with content ``digest``."""
        out, new = self.out, a.new
        assert new is not None
        if not new.digest:
            out.learned[a.source_path] = digest
            if self.on_digest is not None:
                self.on_digest(a.source_path, digest)
        out.files += 1
        out.bytes += new.size
        out.done.append(a)
        if self.on_progress is not None:
            self.on_progress(a.path, out.bytes, self.total)

    async def all_of(self, group: list[Action]) -> None:
        """Every action of ``group`` at once (one phase: asides, a depth of deletes or folders)."""
        if group:
            await asyncio.gather(*(self.one(a) for a in group))

    async def one(self, a: Action, sem: asyncio.Semaphore | None = None) -> None:
        if self.skipped(a):
            return
        here = self.sides[a.side]
        try:
            if a.kind is ActionKind.MOVE_ASIDE:
                assert a.old is not None
                await here.rename(a.path, a.source, a.old)
            elif a.kind is ActionKind.DELETE:
                assert a.old is not None
                await here.delete(a.path, a.old)
                self.out.deleted += 1
            else:
                new = a.new
                assert new is not None
                if new.kind is EntryKind.DIRECTORY:
                    await here.mkdir(a.path, new, a.old)
                elif new.kind is EntryKind.SYMLINK:
                    await here.symlink(a.path, new.target, a.old)
                else:
                    assert sem is not None
                    self.landed(a, await self.file(a, sem))
                    return
        except OpFailed as exc:
            self.fail(a, exc)
            return
        self.out.done.append(a)

    async def file(self, a: Action, sem: asyncio.Semaphore) -> str:
        """Copy one file (not batched) and return its digest; raises :class:`OpFailed`."""
        here, there, new = self.sides[a.side], self.sides[a.side.other], a.new
        assert new is not None
        report = None
        if self.on_file_bytes is not None:
            on_bytes, path, size = self.on_file_bytes, a.path, new.size
            report = lambda done: on_bytes(path, done, size)  # noqa: E731
        gate = self.big if new.size > BIG_FILE else contextlib.nullcontext()
        async with sem, gate:
            if new.size <= CHUNK:  # one frame: read whole, one write, one reply
                content = await there.read(a.source_path, new)
                await here.write(a.path, content, new, a.old)
                return content.digest
            try:
                return await copy_file(there, here, a.source_path, a.path, new, a.old, report)
            except SourceChanged as exc:
                raise OpFailed("changed", str(exc), a.source_path) from exc

    async def many(self, group: list[Action]) -> None:
        """Small files for one side: read them all, write them in one request."""
        group = [a for a in group if not self.skipped(a)]
        if not group:
            return
        here, there = self.sides[group[0].side], self.sides[group[0].side.other]
        read = await there.read_many([(a.source_path, _made(a)) for a in group])
        ready: list[tuple[Action, Content]] = []
        for a, content in zip(group, read, strict=True):
            if isinstance(content, OpFailed):
                self.fail(a, content)
            else:
                ready.append((a, content))
        if not ready:
            return
        files = [(a.path, content, _made(a), a.old) for a, content in ready]
        try:
            results = await here.write_many(files)
        except OpFailed as exc:  # the whole request failed (not one file)
            for a, _ in ready:
                self.fail(a, exc)
            return
        for (a, content), result in zip(ready, results, strict=True):
            if isinstance(result, OpFailed):
                self.fail(a, result)
            else:
                self.landed(a, content.digest)


def _made(a: Action) -> Entry:
    """What a COPY action makes: its ``new``, which reconcile sets on every copy it plans."""
    assert a.new is not None, f"a copy of {a.path} without the entry it makes"
    return a.new


def _batchable(a: Action) -> bool:
    return a.new is not None and a.new.kind is EntryKind.FILE and a.new.size <= SMALL_FILE


def _batches(group: list[Action]) -> Iterator[list[Action]]:
    """``group`` cut into batches of at most :data:`BATCH_BYTES` and :data:`BATCH_FILES`."""
    chunk: list[Action] = []
    size = 0
    for a in group:
        assert a.new is not None
        if chunk and (size + a.new.size > BATCH_BYTES or len(chunk) >= BATCH_FILES):
            yield chunk
            chunk, size = [], 0
        chunk.append(a)
        size += a.new.size
    if chunk:
        yield chunk


async def _lanes(items: Iterable[Any], work: Callable[[Any], Awaitable[None]], n: int) -> None:
    """``work`` on every item, at most ``n`` at a time (no task per item up front)."""
    it = iter(items)

    async def lane() -> None:
        for item in it:
            await work(item)

    await asyncio.gather(*(lane() for _ in range(n)))
