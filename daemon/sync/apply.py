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
from typing import TypeVar

from ..errors import RemoteError
from .entry import Entry, EntryKind
from .paths import is_within
from .reconcile import Action, ActionKind, Problem
from .reconcile import Side as Where
from .sides import Content, OpFailed, Side
from .transfer import SourceChanged, copy_file
from .wire import CHUNK

T = TypeVar("T")

ProgressFn = Callable[[str, int, int], None]
"""``on_progress(path, bytes_done, bytes_total)``, called as each file lands."""
FileBytesFn = Callable[[str, int, int], None]
"""``on_file_bytes(path, bytes_done, file_size)``, called as a big file's bytes move."""

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


@dataclass(frozen=True)
class Result:
    """What one action came to: it landed (``failure`` None), or it failed and why. A file that
    landed carries the sha256 of the content written (``digest``)."""

    action: Action
    failure: OpFailed | None = None
    digest: str = ""


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


def outcome_of(actions: list[Action], results: Iterable[Result]) -> Outcome:
    """The outcome of an apply, from its actions' results in whatever order they finished: each
    list in plan order (``next_base`` replays ``done`` in it), so the outcome of one plan is one
    value however the transfers interleaved. An action without a result was skipped (it lay below
    a path that failed, or a full disk stopped the apply)."""
    by_action = {id(r.action): r for r in results}
    out = Outcome()
    for a in actions:
        r = by_action.get(id(a))
        if r is None:
            continue
        exc = r.failure
        if exc is not None:
            out.problems.append(Problem(a.path, f"{a.side.value}: {exc.message}"))
            if exc.kind in RESCAN_KINDS:
                out.changed.append(a.path)
            if exc.kind == "no_space" and out.fatal is None:
                out.fatal = _disk_full(a)
            continue
        out.done.append(a)
        if a.kind is ActionKind.DELETE:
            out.deleted += 1
        elif a.new is not None and a.new.kind is EntryKind.FILE:
            out.files += 1
            out.bytes += a.new.size
            if not a.new.digest:
                out.learned[a.source_path] = r.digest
    return out


def _disk_full(a: Action) -> RemoteError:
    return RemoteError(
        f"{a.side.value} disk is full while writing {a.path}",
        "free some space there and run `tether sync` again; nothing partial was kept",
    )


async def apply_plan(
    actions: list[Action],
    sides: dict[Where, Side],
    *,
    on_progress: ProgressFn | None = None,
    on_file_bytes: FileBytesFn | None = None,
    in_flight: int = IN_FLIGHT,
) -> Outcome:
    """Run ``actions`` (in reconcile's order) against ``sides``; never raises for one path.

    Each action's work returns its own :class:`Result`; the phases run one after another, and
    an action below a path that failed in an earlier phase, on the same side, is skipped (its
    parent is not what the plan expects). :func:`outcome_of` puts the results together."""
    run = _Run(sides, _Meter(total_bytes(actions), on_progress), on_file_bytes)
    asides = [a for a in actions if a.kind is ActionKind.MOVE_ASIDE]
    deletes = [a for a in actions if a.kind is ActionKind.DELETE]
    copies = [a for a in actions if a.kind is ActionKind.COPY and a.new is not None]
    dirs = [a for a in copies if a.new is not None and a.new.kind is EntryKind.DIRECTORY]
    leaves = [a for a in copies if a.new is not None and a.new.kind is not EntryKind.DIRECTORY]
    phases = [
        asides,
        *_by_depth(deletes, deepest_first=True),
        *_by_depth(dirs, deepest_first=False),
    ]

    results: list[Result] = []
    for phase in phases:
        failed = _failed_roots(results)
        got = await asyncio.gather(*(run.one(a, failed) for a in phase))
        results += [r for r in got if r is not None]

    failed = _failed_roots(results)
    small = [a for a in leaves if _batchable(a)]
    rest = [a for a in leaves if not _batchable(a)]
    groups = [g for w in Where for g in _batches([a for a in small if a.side is w])]
    sem = asyncio.Semaphore(in_flight)

    async def single(a: Action) -> list[Result]:
        r = await run.one(a, failed, sem)
        return [] if r is None else [r]

    batched, singles = await asyncio.gather(
        _lanes(groups, lambda g: run.many(g, failed), BATCHES_IN_FLIGHT),
        _lanes(rest, single, in_flight),
    )
    return outcome_of(actions, [*results, *batched, *singles])


def _by_depth(group: list[Action], *, deepest_first: bool) -> list[list[Action]]:
    """``group`` cut into phases of one depth each: deletes deepest first (a folder empties
    before it goes), folders parents first."""
    depths = sorted({a.path.count("/") for a in group}, reverse=deepest_first)
    return [[a for a in group if a.path.count("/") == d] for d in depths]


def _failed_roots(results: Iterable[Result]) -> list[tuple[Where, str]]:
    """The paths that failed, each with its side: nothing below one is tried."""
    return [(r.action.side, r.action.path) for r in results if r.failure is not None]


class _Meter:
    """The progress display's running total of bytes landed: the one count the apply's tasks
    add to as they finish (the outcome itself is built from their results)."""

    def __init__(self, total: int, report: ProgressFn | None) -> None:
        self.total, self.report, self.done = total, report, 0

    def landed(self, a: Action) -> None:
        if a.new is not None and a.new.kind is EntryKind.FILE:
            self.done += a.new.size
            if self.report is not None:
                self.report(a.path, self.done, self.total)


class _Run:
    """What every action of one apply works with: the two sides, the progress hooks, the gate on
    big files, and the stop a full disk sets (no action starts after it). It keeps no results:
    each action's work returns its own."""

    def __init__(self, sides: dict[Where, Side], meter: _Meter, on_file_bytes: FileBytesFn | None):
        self.sides, self.meter, self.on_file_bytes = sides, meter, on_file_bytes
        self.big = asyncio.Semaphore(BIG_IN_FLIGHT)
        self.stop = asyncio.Event()

    def skipped(self, a: Action, failed: list[tuple[Where, str]]) -> bool:
        """A full disk stopped the apply, or ``a`` lies below a path that failed on its side."""
        return self.stop.is_set() or any(
            side is a.side and is_within(a.path, p) for side, p in failed
        )

    def failure(self, a: Action, exc: OpFailed) -> Result:
        if exc.kind == "no_space":
            self.stop.set()
        return Result(a, failure=exc)

    def landed(self, a: Action, digest: str = "") -> Result:
        self.meter.landed(a)
        return Result(a, digest=digest)

    async def one(
        self, a: Action, failed: list[tuple[Where, str]], sem: asyncio.Semaphore | None = None
    ) -> Result | None:
        """Carry out one action; None when it is skipped."""
        if self.skipped(a, failed):
            return None
        here = self.sides[a.side]
        try:
            if a.kind is ActionKind.MOVE_ASIDE:
                assert a.old is not None
                await here.rename(a.path, a.source, a.old)
            elif a.kind is ActionKind.DELETE:
                assert a.old is not None
                await here.delete(a.path, a.old)
            else:
                new = _made(a)
                if new.kind is EntryKind.DIRECTORY:
                    await here.mkdir(a.path, new, a.old)
                elif new.kind is EntryKind.SYMLINK:
                    await here.symlink(a.path, new.target, a.old)
                else:
                    assert sem is not None
                    return self.landed(a, await self.file(a, sem))
        except OpFailed as exc:
            return self.failure(a, exc)
        return self.landed(a)

    async def file(self, a: Action, sem: asyncio.Semaphore) -> str:
        """Copy one file (not batched) and return its digest; raises :class:`OpFailed`."""
        here, there, new = self.sides[a.side], self.sides[a.side.other], _made(a)
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

    async def many(self, group: list[Action], failed: list[tuple[Where, str]]) -> list[Result]:
        """Small files for one side: read them all, write them in one request."""
        group = [a for a in group if not self.skipped(a, failed)]
        if not group:
            return []
        here, there = self.sides[group[0].side], self.sides[group[0].side.other]
        read = await there.read_many([(a.source_path, _made(a)) for a in group])
        results: list[Result] = []
        ready: list[tuple[Action, Content]] = []
        for a, content in zip(group, read, strict=True):
            if isinstance(content, OpFailed):
                results.append(self.failure(a, content))
            else:
                ready.append((a, content))
        if not ready:
            return results
        files = [(a.path, content, _made(a), a.old) for a, content in ready]
        try:
            written = await here.write_many(files)
        except OpFailed as exc:  # the whole request failed (not one file)
            return results + [self.failure(a, exc) for a, _ in ready]
        for (a, content), got in zip(ready, written, strict=True):
            if isinstance(got, OpFailed):
                results.append(self.failure(a, got))
            else:
                results.append(self.landed(a, content.digest))
        return results


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


async def _lanes(
    items: Iterable[T], work: Callable[[T], Awaitable[list[Result]]], n: int
) -> list[Result]:
    """``work`` on every item, at most ``n`` at a time (no task per item up front); each lane
    returns the results of the items it took, and the lanes' results are joined."""
    it = iter(items)

    async def lane() -> list[Result]:
        return [r for item in it for r in await work(item)]

    return [r for got in await asyncio.gather(*(lane() for _ in range(n))) for r in got]
