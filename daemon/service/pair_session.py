"""Live sync of one pair: watch both sides, sync what changed, over whatever link is up.

A session marks the pair dirty when the local watcher (watchdog) or the host's agent (inotify
there) reports a change, then runs the sync engine once for the whole burst, on just the paths
reported (an incremental sync: both sides rescan only those subtrees). A full sync (both roots
scanned whole) runs first, after every (re)start of the host's watch (a reconnect: what changed
during the outage was not reported), when a watcher lost track (the host's ``rescan``, the local
root itself reported), on resume, and every :data:`FULL_EVERY_S` as a safety net; the engine
itself falls back to a full scan whenever a partial one could decide wrongly. While the link is
down it waits; when the link comes back it syncs in full, so edits made during the outage land
then, with nothing lost. A sync that halts (a root emptied or deleted, most of a side about to
be deleted) stops the session until the user resumes it: the halt is kept in the state database,
so a restarted daemon starts the pair halted, and while halted the session only collects changes
(it waits on the resume, never spins: the other pairs, the tunnels and the control API share
this event loop). Files tether itself just wrote come back from the watchers as an echo; the
engine finds nothing to do for them, and they do not count as landed for triggers.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import ctypes
import dataclasses
import gc
import logging
import os
import secrets
import sys
import time
from collections.abc import Awaitable, Callable, Mapping
from enum import Enum
from typing import Any

from ..config import Config, PairConfig, PairMode
from ..errors import HostUnreachable, TetherError
from ..store import OffLoop
from ..sync.engine import SyncReport, sync_pair
from ..sync.ignore import IgnoreRules
from ..sync.paths import shown
from ..sync.safety import PairStatus
from ..sync.state import StateStore, pair_key
from ..sync.tempnames import barrier_name, barrier_token
from ..sync.watch import LocalWatcher
from ..transport.endpoints import SSH
from ..transport.link import Link

log = logging.getLogger(__name__)

OnLanded = Callable[[PairConfig, list[str]], Awaitable[None]]

FULL_EVERY_S = 600.0
"""A full sync at least this often while changes flow (a watcher may drop events silently)."""
RELEASE_AFTER_FILES = 20_000
"""Return freed heap to the OS only after full cycles this big: a gc.collect costs tens of
milliseconds, too much to pay on every flush of a small tree, and small scans free little."""
RETRY_FIRST_S = 1.0
RETRY_MAX_S = 30.0
"""Paths that failed to land are retried after 1 s, 2 s, 4 s ... at most every 30 s."""
BARRIER_TIMEOUT_S = 2.0
HOST_WATCH_WAIT_S = 5.0
"""How long a full cycle waits for the host's watch to be up (see ``_host_watching``)."""


class SessionState(str, Enum):
    """What a pair is doing now (`tether status`)."""

    STARTING = "starting"
    WATCHING = "watching"
    """In sync, waiting for changes."""
    SYNCING = "syncing"
    WAITING = "waiting"
    """The link is down; changes are being collected."""
    PAUSED = "paused"
    HALTED = "halted"
    """A safety check stopped the pair (root emptied or deleted, a big deletion, bad host data);
    it waits for `tether resume`."""


@dataclasses.dataclass(frozen=True)
class Pending:
    """The work a session owes, as one value: every change makes a new one (watchers add paths,
    a cycle takes it all and leaves a fresh one), so no flag is ever half updated."""

    local: frozenset[str] = frozenset()
    """Local paths reported changed since the last cycle."""
    remote: frozenset[str] = frozenset()
    """Paths the host reported changing: they came *from* the host (not landed by tether)."""
    remote_dirty: bool = False
    """The host reported something (paths, or a rescan)."""
    full: bool = False
    """The next cycle scans both roots whole (a watch (re)started, a watcher lost track)."""
    retry: bool = False
    """The paths that failed to land are due for another try."""
    accept_halt: bool = False
    """`tether resume` of a halted pair: the next cycle accepts the stored halt's plan."""
    accept_deletes: bool = False
    """`tether sync --accept-deletes`: the next cycle is a full one that accepts them."""

    def count(self, failing: int) -> int:
        """How many things wait (`tether status`): 0 means idle. ``failing``: paths that failed."""
        return (
            len(self.local)
            + (failing if self.retry else 0)
            + (1 if self.remote_dirty or self.full else 0)
        )

    def with_local(self, paths: set[str] | frozenset[str]) -> Pending:
        return dataclasses.replace(self, local=self.local | paths)

    def with_remote(self, paths: set[str] | frozenset[str], *, rescan: bool) -> Pending:
        return dataclasses.replace(
            self, remote=self.remote | paths, remote_dirty=True, full=self.full or rescan
        )

    def put_back(self, local: set[str], remote: set[str] | frozenset[str] = frozenset()) -> Pending:
        """A cycle's paths returned after it could not run them."""
        return dataclasses.replace(self, local=self.local | local, remote=self.remote | remote)


class PairSession:
    """Keeps one pair in sync for as long as it runs."""

    def __init__(
        self,
        config: Config,
        pair: PairConfig,
        link: Link,
        *,
        on_landed: OnLanded | None = None,
        on_event: Callable[[dict[str, Any]], None] | None = None,
        coalesce_ms: float = 10,
    ) -> None:
        self.config, self.pair, self.link = config, pair, link
        self.coalesce_ms = coalesce_ms
        self._on_landed = on_landed
        self._on_event = on_event
        self.state = SessionState.STARTING
        self.message = ""
        self.last_sync: float | None = None
        self.last_report: SyncReport | None = None
        self.syncs = 0
        self._reports: collections.deque[tuple[int, SyncReport]] = collections.deque(maxlen=64)
        self._collecting = 0
        """`sync_now` calls waiting for their cycles: while one is, reports are kept whole (their
        per-file ``plan`` and ``base_moved`` lists); otherwise only the counts are kept."""
        self._release_due = False
        self._pending = Pending(full=True)
        self._failed: dict[str, str] = {}
        """Paths whose last attempt failed (read-only or full folder, permissions) → why. They
        stay pending: retried with backoff, and in every cycle until they land."""
        self._retry_delay_s = RETRY_FIRST_S
        self._retry_timer: asyncio.TimerHandle | None = None
        self._last_full = 0.0
        self._host_watching = asyncio.Event()
        """Set while the host's watch stream is up. Its start asks for a full cycle (what changed
        before it was never reported); a full cycle waits for it, so that the first one, which
        starts with the session, also covers the time before the watch, instead of a second
        full cycle of the whole tree right after the first."""
        self._barriers: dict[str, asyncio.Future[None]] = {}
        self._watcher: LocalWatcher | None = None
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()
        self._resumed = asyncio.Event()
        self._resumed.set()
        self._tasks: list[asyncio.Task[None]] = []
        self.watch_mode = ""

    # -- control -----------------------------------------------------------------------------

    def start(self) -> PairSession:
        self._tasks = [
            asyncio.create_task(self._watch_local(), name=f"watch local {self.pair.name}"),
            asyncio.create_task(self._watch_remote(), name=f"watch remote {self.pair.name}"),
            asyncio.create_task(self._run(), name=f"sync {self.pair.name}"),
        ]
        return self

    async def close(self) -> None:
        if self._retry_timer is not None:
            self._retry_timer.cancel()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []

    def pause(self) -> None:
        self._resumed.clear()
        self.state = SessionState.PAUSED
        self._event("paused", "paused by request")

    def resume(self) -> None:
        """Resume a paused or halted pair (a halted one syncs in full, re-checking its roots,
        and goes ahead with the deletions its halt showed, if they are still the plan)."""
        halted = self.state is SessionState.HALTED
        if halted:
            self.state, self.message = SessionState.STARTING, ""
        self._pending = dataclasses.replace(
            self._pending, full=True, accept_halt=self._pending.accept_halt or halted
        )
        self._resumed.set()
        self._wake.set()
        self._event("resumed", "resumed")

    def accept_deletes(self) -> None:
        """`tether sync --accept-deletes`: the next cycle goes ahead with the big deletion."""
        self._pending = dataclasses.replace(self._pending, accept_deletes=True)
        if self.state is SessionState.HALTED:
            self.resume()

    def _halt(self, message: str) -> None:
        """Stop syncing until `tether resume` (changes are still collected meanwhile)."""
        self.state, self.message = SessionState.HALTED, message
        self._resumed.clear()
        self._event("halted", message)

    @property
    def pending(self) -> int:
        return self._pending.count(len(self._failed))

    async def flush(self, timeout_s: float, *, require_landed: bool = True) -> None:
        """Return once everything on disk when flush was called has landed; raise promptly if
        it cannot (host down, pair paused or halted, or, with ``require_landed``, paths that
        failed to land: a read-only or full folder, say).

        A watcher may not have reported a save made a millisecond ago, so flush does not trust
        the dirty set alone. With inotify (which delivers events in order) it writes a barrier
        file in the root and waits for the watcher to report it: every save made before flush
        was called has then been reported too, and the next incremental cycle covers it. On any
        other backend, or in a mode where the host's changes flow too (its watch stream has no
        such barrier), flush asks for one full cycle, which rescans (cheaply, through the
        digest caches). Either way it returns when that cycle and everything after it is done.
        """
        deadline = time.monotonic() + timeout_s
        if not (
            self.watch_mode == "inotify"
            and self.pair.mode is PairMode.PUSH
            and await self._local_barrier(min(BARRIER_TIMEOUT_S, timeout_s))
        ):
            self._pending = dataclasses.replace(self._pending, full=True)
        # What failed before gets another try now.
        self._pending = dataclasses.replace(self._pending, retry=bool(self._failed))
        self._idle.clear()
        self._wake.set()
        while True:
            if self.state is SessionState.HALTED:
                raise TetherError(f"pair {self.pair.name} is halted: {self.message}",
                                  "fix it, then `tether resume`")  # fmt: skip
            if self.state is SessionState.PAUSED:
                raise TetherError(f"pair {self.pair.name} is paused", "`tether resume` first")
            if self.state is SessionState.WAITING or self.link.state.value != "up":
                await self._wait_for_link(deadline)
            if self.pending == 0 and self._idle.is_set():
                if self._failed and require_landed:
                    path, why = next(iter(self._failed.items()))
                    raise TetherError(
                        f"pair {self.pair.name}: {len(self._failed)} path(s) could not land, "
                        f"e.g. {shown(path)}: {shown(why)}",
                        "tether keeps them and retries; see `tether status`",
                    )
                return
            left = deadline - time.monotonic()
            if left <= 0:
                raise TetherError(f"pair {self.pair.name}: not flushed within {timeout_s:g}s")
            self._idle.clear()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._idle.wait(), min(left, 0.5))

    async def sync_now(self, timeout_s: float) -> SyncReport:
        """Flush, then one report for every cycle that ran meanwhile (`tether sync` through the
        daemon): counts summed, the last cycle's status and problems."""
        started = time.monotonic()
        mark = self.syncs
        self._collecting += 1
        try:
            await self.flush(timeout_s, require_landed=False)  # problems go into the report
        finally:
            self._collecting -= 1
        merged = merge_reports(
            self.pair, [r for n, r in self._reports if n > mark], time.monotonic() - started
        )
        if not self._collecting:  # nobody waits for the per-file lists any more
            self._reports = collections.deque(
                ((n, _counts_only(r)) for n, r in self._reports), maxlen=self._reports.maxlen
            )
            if self.last_report is not None:
                self.last_report = _counts_only(self.last_report)
        return merged

    async def _local_barrier(self, timeout_s: float) -> bool:
        """Write a barrier file in the local root and wait until the watcher has reported it
        and handed over everything reported before it. False if it did not come in time."""
        loop = asyncio.get_running_loop()
        token = secrets.token_hex(4)
        path = self.pair.local / barrier_name(token)
        arrived = self._barriers[token] = loop.create_future()
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
            os.close(fd)
            await asyncio.wait_for(arrived, timeout_s)
        except (OSError, asyncio.TimeoutError):
            return False
        finally:
            self._barriers.pop(token, None)
            with contextlib.suppress(OSError):
                os.unlink(path)
        # The events before the barrier were handed to the loop before it (one observer
        # thread, in order), so they are in the watcher's pending batch: send it now and let
        # it reach _watch_local.
        if self._watcher is not None:
            self._watcher.flush_now()
        for _ in range(3):
            await asyncio.sleep(0)
        return True

    def _barrier_seen(self, token: str) -> None:
        arrived = self._barriers.get(token)
        if arrived is not None and not arrived.done():
            arrived.set_result(None)

    async def _wait_for_link(self, deadline: float) -> None:
        """Give a link that is not up one connect timeout to come (it may be mid-handshake or
        mid-reconnect); past that the host is down and flush says so (exit 69)."""
        grace = self.link.host.connect_timeout_s or 5.0
        try:
            await self.link.wait_up(max(0.1, min(grace, deadline - time.monotonic())))
        except HostUnreachable as exc:
            raise HostUnreachable(
                f"pair {self.pair.name}: host {self.pair.host} is unreachable ({exc.message})",
                "changes are kept and will land when the host is back",
            ) from None

    def snapshot(self, conflicts: Mapping[str, int]) -> dict[str, Any]:
        """The pair as `tether status` shows it. ``conflicts``: the unresolved conflicts of every
        pair (:meth:`~.state.StateStore.conflict_counts`, read by the caller off the loop): the
        last sync's own count would hide those earlier syncs left unresolved (and count ones
        already resolved)."""
        report = self.last_report
        return {
            "pair": self.pair.name,
            "host": self.pair.host,
            "mode": self.pair.mode.value,
            "local": str(self.pair.local),
            "remote": self.pair.remote,
            "state": self.state.value,
            "message": self.message,
            "pending": self.pending,
            "last_sync": self.last_sync,
            "syncs": self.syncs,
            "conflicts": conflicts.get(pair_key(self.config.path, self.pair.name), 0),
            "problems": [f"{p.path}: {p.message}" for p in report.problems] if report else [],
            "failing": len(self._failed),
            "watch": self.watch_mode,
        }

    # -- watchers ----------------------------------------------------------------------------

    async def _watch_local(self) -> None:
        self.pair.local.mkdir(parents=True, exist_ok=True)
        rules = _rules(self.pair)
        loop = asyncio.get_running_loop()

        def ignore(path: str, is_dir: bool) -> bool:  # runs on the observer's thread
            token = barrier_token(path)
            if token is not None:
                loop.call_soon_threadsafe(self._barrier_seen, token)
                return True
            return rules(path, is_dir)

        async with LocalWatcher(
            self.pair.local, ignore=ignore, coalesce_ms=self.coalesce_ms
        ) as watcher:
            self.watch_mode = watcher.mode
            self._watcher = watcher
            try:
                for warning in watcher.warnings:
                    self._event("warning", warning)
                async for batch in watcher:
                    self._pending = self._pending.with_local(batch)
                    self._wake.set()
            finally:
                self._watcher = None

    async def _watch_remote(self) -> None:
        """Follow the host's watch stream on each connection; a change marks the pair dirty."""
        while True:
            try:
                agent = await self.link.wait_agent()
                await agent.probe(self.pair.remote, create=True)
                async for batch in agent.watch(self.pair.remote, _rules(self.pair).to_wire()):
                    if not self._host_watching.is_set():  # the first batch: watching now
                        # What changed on the host before this watch started was never
                        # reported (a first start, a reconnect): the next cycle is a full one.
                        self._host_watching.set()
                        self._pending = dataclasses.replace(self._pending, full=True)
                        self._wake.set()
                    if batch.paths or batch.rescan:
                        self._pending = self._pending.with_remote(
                            set(batch.paths), rescan=batch.rescan
                        )
                        self._wake.set()
            except (HostUnreachable, TetherError) as exc:
                if self.link.state.value == "up":
                    self._event("warning", f"remote watch stopped: {exc}; retrying")
                    await asyncio.sleep(1.0)
            finally:
                self._host_watching.clear()
            await asyncio.sleep(0.05)

    # -- the sync loop -----------------------------------------------------------------------

    async def _run(self) -> None:
        async with OffLoop(StateStore) as store:
            halt = await store.run(StateStore.halt, pair_key(self.config.path, self.pair.name))
            if halt is not None and not halt.accepted:  # kept from before a restart
                self._halt(halt.message)
            while True:
                if self.pending == 0:
                    if self.state not in (SessionState.HALTED, SessionState.PAUSED):
                        self.state = SessionState.WATCHING
                    self._idle.set()
                    await self._wake.wait()
                self._wake.clear()
                await self._resumed.wait()
                await self._cycle(store)
                if self._release_due:  # after the cycle, when its locals are gone too
                    self._release_due = False
                    release_memory()

    async def _cycle(self, store: OffLoop[StateStore]) -> None:
        if self.link.state.value != "up":
            self.state = SessionState.WAITING
            self._idle.set()
        try:
            agent = await self.link.wait_agent()
        except TetherError as exc:  # a permanent link failure: show it, try on resume
            self.state, self.message = SessionState.WAITING, exc.one_line()
            self._resumed.clear()
            return
        self._idle.clear()
        self.state = SessionState.SYNCING
        if self._pending.full and not self._host_watching.is_set():
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._host_watching.wait(), HOST_WATCH_WAIT_S)
        taken, self._pending = self._pending, Pending()
        dirty, from_host = set(taken.local) | set(self._failed), set(taken.remote)
        accept_deletes = taken.accept_deletes
        if taken.accept_halt:
            await store.run(StateStore.accept_halt, pair_key(self.config.path, self.pair.name))
        full = taken.full or accept_deletes or time.monotonic() - self._last_full > FULL_EVERY_S
        started = time.monotonic()
        try:
            report = await sync_pair(
                self.config,
                self.pair,
                SSH,
                client=agent,
                store=store,
                accept_deletes=accept_deletes,
                local_paths=None if full else dirty,
                remote_paths=None if full else from_host,
            )
        except HostUnreachable:
            self._pending = dataclasses.replace(self._pending.put_back(dirty, from_host), full=True)
            self.state = SessionState.WAITING
            return
        except TetherError as exc:
            self._pending = self._pending.put_back(dirty)
            self._halt(exc.one_line())
            return
        # A full cycle's plan lists every file it moved (100,000 lines after a first sync):
        # keep it only for a `sync_now` waiting for this cycle.
        kept = report if self._collecting else _counts_only(report)
        self.last_report, self.last_sync, self.syncs = kept, time.time(), self.syncs + 1
        self._reports.append((self.syncs, kept))
        if report.scope is None:
            self._last_full = started
            # A big full cycle held both trees in memory; give it back once it is over.
            self._release_due = report.local_files + report.remote_files >= RELEASE_AFTER_FILES
        if report.notice:
            self._event("notice", report.notice, level="warning")
        if report.halted:
            self._pending = self._pending.put_back(dirty)
            self._halt(report.message)
            return
        self.message = ""
        took = (time.monotonic() - started) * 1000
        if report.copied or report.deleted or report.conflicts:
            self._event(
                "synced",
                f"{report.copied} copied, {report.deleted} deleted, "
                f"{len(report.conflicts)} conflicts in {took:.0f} ms",
                copied=report.copied,
                conflicts=len(report.conflicts),
                ms=round(took, 1),
            )
        for problem in report.problems:
            self._event("problem", shown(f"{problem.path}: {problem.message}"), level="warning")
        self._schedule_retry({p.path: p.message for p in report.problems if p.path})
        if self._on_landed:
            # The base is the witness, not the watcher: a save can land before its event is
            # delivered (flush rescans), an echo of tether's own write moves nothing, and a path
            # whose transfer failed keeps its old base. What the host changed itself is not
            # "landed on the host".
            landed = sorted(set(report.base_moved) - from_host)
            if landed:
                await self._on_landed(self.pair, landed)

    def _schedule_retry(self, failed: dict[str, str]) -> None:
        """Keep the paths that failed pending; try them again after a growing delay."""
        self._failed = failed
        if self._retry_timer is not None:
            self._retry_timer.cancel()
            self._retry_timer = None
        if not failed:
            self._retry_delay_s = RETRY_FIRST_S
            return

        def due() -> None:
            self._pending = dataclasses.replace(self._pending, retry=True)
            self._wake.set()

        self._retry_timer = asyncio.get_running_loop().call_later(self._retry_delay_s, due)
        self._retry_delay_s = min(RETRY_MAX_S, self._retry_delay_s * 2)

    def _event(self, kind: str, message: str, **extra: Any) -> None:
        log.info("pair %s: %s", self.pair.name, message)
        if self._on_event is not None:
            self._on_event(
                {"kind": f"pair.{kind}", "pair": self.pair.name, "message": message, **extra}
            )


def _rules(pair: PairConfig) -> IgnoreRules:
    gitignore = pair.local / ".gitignore"
    text = gitignore.read_text(errors="replace") if gitignore.is_file() else ""
    return IgnoreRules(extra=pair.ignore, gitignores=[("", text)] if text else [])


def _counts_only(report: SyncReport) -> SyncReport:
    """``report`` without its per-file lists (what a cycle's caller used them for is done)."""
    if not report.plan and not report.base_moved:
        return report
    return dataclasses.replace(report, plan=[], base_moved=[])


def merge_reports(pair: PairConfig, reports: list[SyncReport], seconds: float) -> SyncReport:
    """Several cycles' reports as one (none: nothing was pending, an empty OK report)."""
    merged = SyncReport(pair.name, pair.mode.value, scope=[])
    for report in reports:
        merged.plan += report.plan
        merged.copied += report.copied
        merged.deleted += report.deleted
        merged.bytes += report.bytes
        merged.conflicts += report.conflicts
        merged.hashed_local += report.hashed_local
        merged.hashed_remote += report.hashed_remote
        merged.rounds += report.rounds
        merged.scan_s += report.scan_s
        merged.transfer_s += report.transfer_s
        if report.scope is None or merged.scope is None:
            merged.scope = None
        else:
            merged.scope = sorted({*merged.scope, *report.scope})
    if reports:
        last = reports[-1]
        merged.status, merged.message, merged.problems = last.status, last.message, last.problems
        merged.unsettled = last.unsettled
        merged.local_files, merged.remote_files = last.local_files, last.remote_files
    if merged.conflicts and not merged.halted:
        merged.status = PairStatus.CONFLICTS
    merged.total_s = seconds
    return merged


def release_memory() -> None:
    """Hand the heap a full sync freed back to the OS.

    CPython frees a large scan's objects, but glibc keeps the arenas, so a daemon that once
    synced 100k files would sit on that peak for good. ``malloc_trim`` returns them (Linux with
    glibc only; elsewhere this is a no-op).
    """
    gc.collect()
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):  # musl, no glibc: nothing to trim
            ctypes.CDLL("libc.so.6").malloc_trim(0)
