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
from .entry import EntryKind
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
    """What an apply did: the actions that landed, and what did not."""

    done: list[Action] = field(default_factory=list)
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
    out = Outcome()
    failed: list[tuple[Where, str]] = []
    total = total_bytes(actions)
    big = asyncio.Semaphore(BIG_IN_FLIGHT)

    def blocked(a: Action) -> bool:
        return any(side is a.side and is_within(a.path, p) for side, p in failed)

    def fail(a: Action, exc: OpFailed) -> None:
        failed.append((a.side, a.path))
        out.problems.append(Problem(a.path, f"{a.side.value}: {exc.message}"))
        if exc.kind in RESCAN_KINDS:
            out.changed.append(a.path)
        if exc.kind == "no_space" and out.fatal is None:
            out.fatal = RemoteError(
                f"{a.side.value} disk is full while writing {a.path}",
                "free some space there and run `tether sync` again; nothing partial was kept",
            )

    async def one(a: Action, sem: asyncio.Semaphore | None = None) -> None:
        if out.fatal is not None or blocked(a):
            return
        here, there = sides[a.side], sides[a.side.other]
        try:
            if a.kind is ActionKind.MOVE_ASIDE:
                assert a.old is not None
                await here.rename(a.path, a.source, a.old)
            elif a.kind is ActionKind.DELETE:
                assert a.old is not None
                await here.delete(a.path, a.old)
                out.deleted += 1
            else:
                new = a.new
                assert new is not None
                if new.kind is EntryKind.DIRECTORY:
                    await here.mkdir(a.path, new, a.old)
                elif new.kind is EntryKind.SYMLINK:
                    await here.symlink(a.path, new.target, a.old)
                else:
                    assert sem is not None
                    report = None
                    if on_file_bytes is not None:
                        path, size = a.path, new.size
                        report = lambda done: on_file_bytes(path, done, size)  # noqa: E731
                    gate = big if new.size > BIG_FILE else contextlib.nullcontext()
                    async with sem, gate:
                        if new.size <= CHUNK:  # one frame: read whole, one write, one reply
                            content = await there.read(a.source_path, new)
                            await here.write(a.path, content, new, a.old)
                            digest = content.digest
                        else:
                            try:
                                digest = await copy_file(
                                    there, here, a.source_path, a.path, new, a.old, report
                                )
                            except SourceChanged as exc:
                                raise OpFailed("changed", str(exc), a.source_path) from exc
                    learn(a, digest)
                    out.files += 1
                    out.bytes += new.size
                    if on_progress is not None:
                        on_progress(a.path, out.bytes, total)
        except OpFailed as exc:
            fail(a, exc)
            return
        out.done.append(a)

    def learn(a: Action, digest: str) -> None:
        if on_digest is not None and a.new is not None and not a.new.digest:
            on_digest(a.source_path, digest)

    def landed(a: Action, content: Content) -> None:
        assert a.new is not None
        learn(a, content.digest)
        out.files += 1
        out.bytes += a.new.size
        out.done.append(a)
        if on_progress is not None:
            on_progress(a.path, out.bytes, total)

    async def many(group: list[Action]) -> None:
        """Small files for one side: read them all, write them in one request."""
        group = [a for a in group if out.fatal is None and not blocked(a)]
        if not group:
            return
        here, there = sides[group[0].side], sides[group[0].side.other]
        read = await there.read_many([(a.source_path, a.new) for a in group])  # type: ignore[arg-type]
        ready: list[tuple[Action, Content]] = []
        for a, content in zip(group, read, strict=True):
            if isinstance(content, OpFailed):
                fail(a, content)
            else:
                ready.append((a, content))
        if not ready:
            return
        files = [(a.path, content, a.new, a.old) for a, content in ready]
        try:
            results = await here.write_many(files)  # type: ignore[arg-type]
        except OpFailed as exc:  # the whole request failed (not one file)
            for a, _ in ready:
                fail(a, exc)
            return
        for (a, content), result in zip(ready, results, strict=True):
            if isinstance(result, OpFailed):
                fail(a, result)
            else:
                landed(a, content)

    def batches(group: list[Action]) -> Iterator[list[Action]]:
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

    async def lanes(items: Iterable[Any], work: Callable[[Any], Awaitable[None]], n: int) -> None:
        """``work`` on every item, at most ``n`` at a time (no task per item up front)."""
        it = iter(items)

        async def lane() -> None:
            for item in it:
                await work(item)

        await asyncio.gather(*(lane() for _ in range(n)))

    async def batch(group: list[Action], sem: asyncio.Semaphore | None = None) -> None:
        if group:
            await asyncio.gather(*(one(a, sem) for a in group))

    asides = [a for a in actions if a.kind is ActionKind.MOVE_ASIDE]
    deletes = [a for a in actions if a.kind is ActionKind.DELETE]
    copies = [a for a in actions if a.kind is ActionKind.COPY and a.new is not None]
    dirs = [a for a in copies if a.new is not None and a.new.kind is EntryKind.DIRECTORY]
    leaves = [a for a in copies if a.new is not None and a.new.kind is not EntryKind.DIRECTORY]

    await batch(asides)
    for depth in sorted({a.path.count("/") for a in deletes}, reverse=True):
        await batch([a for a in deletes if a.path.count("/") == depth])
    for depth in sorted({a.path.count("/") for a in dirs}):
        await batch([a for a in dirs if a.path.count("/") == depth])

    def batchable(a: Action) -> bool:
        return a.new is not None and a.new.kind is EntryKind.FILE and a.new.size <= SMALL_FILE

    small = [a for a in leaves if batchable(a)]
    rest = [a for a in leaves if not batchable(a)]
    groups = [g for w in Where for g in batches([a for a in small if a.side is w])]
    sem = asyncio.Semaphore(in_flight)
    await asyncio.gather(
        lanes(groups, many, BATCHES_IN_FLIGHT), lanes(rest, lambda a: one(a, sem), in_flight)
    )
    # Keep plan order in ``done`` (next_base replays it).
    rank = {id(a): i for i, a in enumerate(actions)}
    out.done.sort(key=lambda a: rank[id(a)])
    return out
