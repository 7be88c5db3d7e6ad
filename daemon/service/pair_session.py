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
from pathlib import Path
from types import MappingProxyType
from typing import Any

from ..aio import within
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
LOOP_RESTART_S = 30.0
"""How soon a sync loop that failed on an unexpected error starts again by itself."""


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
    FAILED = "failed"
    """Its sync loop stopped on an error it was not written for (see ``message``); it starts
    again by itself after :data:`LOOP_RESTART_S`, or at once on `tether resume`."""


@dataclasses.dataclass(frozen=True)
class Cycle:
    """What one sync cycle takes from :class:`Pending`: the paths to rescan (or the whole
    roots) and the user's go-aheads. A cycle that cannot run gives its paths back."""

    local: frozenset[str]
    """Local paths to rescan: those reported changed and those that failed to land before."""
    remote: frozenset[str]
    """Paths the host reported changing: they came *from* the host (not landed by tether)."""
    full: bool
    """Both roots scanned whole (then ``local`` and ``remote`` only say what was reported)."""
    accept_halt: bool
    accept_deletes: bool


@dataclasses.dataclass(frozen=True)
class Pending:
    """The work a session owes, as one value: every change makes a new one (watchers add paths,
    a cycle takes its work and leaves the rest), so no flag is ever half updated. Pure: the
    time comes in as an argument (``time.monotonic()``), the retry timer is the caller's."""

    local: frozenset[str] = frozenset()
    """Local paths reported changed since the last cycle."""
    remote: frozenset[str] = frozenset()
    """Paths the host reported changing: they came *from* the host (not landed by tether)."""
    full: bool = False
    """The next cycle scans both roots whole (a watch (re)started, a watcher lost track)."""
    full_due_at: float = 0.0
    """When (monotonic seconds) a full cycle is due as a safety net, :data:`FULL_EVERY_S`
    after the last one started (a watcher may drop events silently): the next cycle that
    runs from then on is a full one. 0: none ran yet."""
    failed: Mapping[str, str] = dataclasses.field(default_factory=lambda: MappingProxyType({}))
    """Paths whose last attempt failed (read-only or full folder, permissions) → why. Every
    cycle rescans them until they land; they wait (count as pending) only once a retry is due,
    else an idle session would spin on a folder that stays read-only."""
    retry: bool = False
    """The paths that failed are due for another try (the backoff timer fired, or a flush)."""
    retry_in_s: float | None = None
    """How long after the last cycle its failed paths are tried again: 1 s, 2 s, 4 s ... at
    most :data:`RETRY_MAX_S`; None while nothing fails (the next failure starts at 1 s)."""
    accept_halt: bool = False
    """`tether resume` of a halted pair: the next cycle accepts the stored halt's plan."""
    accept_deletes: bool = False
    """`tether sync --accept-deletes`: the next cycle is a full one that accepts them."""

    def count(self) -> int:
        """How many things wait (`tether status`): 0 means idle, and the session sleeps."""
        return (
            len(self.local)
            + (len(self.failed) if self.retry else 0)
            + (1 if self.remote or self.full else 0)
        )

    def take(self, now: float) -> tuple[Cycle, Pending]:
        """The next cycle's work at monotonic time ``now``, and what stays owed meanwhile: the
        failed paths and their backoff (until the cycle says what failed this time) and the
        safety net's due time (until a full cycle ran)."""
        cycle = Cycle(
            local=self.local | frozenset(self.failed),
            remote=self.remote,
            full=self.full or self.accept_deletes or now > self.full_due_at,
            accept_halt=self.accept_halt,
            accept_deletes=self.accept_deletes,
        )
        rest = Pending(full_due_at=self.full_due_at, failed=self.failed, retry_in_s=self.retry_in_s)
        return cycle, rest

    def with_local(self, paths: set[str] | frozenset[str]) -> Pending:
        return dataclasses.replace(self, local=self.local | paths)

    def with_remote(self, paths: set[str] | frozenset[str], *, rescan: bool) -> Pending:
        return dataclasses.replace(self, remote=self.remote | paths, full=self.full or rescan)

    def with_full(self) -> Pending:
        """The next cycle scans both roots whole."""
        return dataclasses.replace(self, full=True)

    def with_retry(self) -> Pending:
        """What failed gets another try in the next cycle (and waits until it ran)."""
        return dataclasses.replace(self, retry=bool(self.failed))

    def resumed(self, *, halted: bool) -> Pending:
        """`tether resume`: a full cycle, re-checking the roots; for a pair that was halted,
        one that goes ahead with the plan its halt showed, if that is still the plan."""
        return dataclasses.replace(self, full=True, accept_halt=self.accept_halt or halted)

    def with_accept_deletes(self) -> Pending:
        return dataclasses.replace(self, accept_deletes=True)

    def put_back(
        self, local: set[str] | frozenset[str], remote: set[str] | frozenset[str] = frozenset()
    ) -> Pending:
        """A cycle's paths returned after it could not run them."""
        return dataclasses.replace(self, local=self.local | local, remote=self.remote | remote)

    def full_ran(self, started: float) -> Pending:
        """A full cycle that started at ``started`` ran: the next is due :data:`FULL_EVERY_S`
        later."""
        return dataclasses.replace(self, full_due_at=started + FULL_EVERY_S)

    def with_failed(self, failed: Mapping[str, str]) -> Pending:
        """A cycle ran and ``failed`` (path → why) did not land: they replace the failures
        before, and the next retry waits twice as long as the last (a clean cycle resets it)."""
        if not failed:
            return dataclasses.replace(self, failed=MappingProxyType({}), retry_in_s=None)
        wait = RETRY_FIRST_S if self.retry_in_s is None else min(RETRY_MAX_S, self.retry_in_s * 2)
        return dataclasses.replace(self, failed=MappingProxyType(dict(failed)), retry_in_s=wait)


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
        self._pending = Pending(full=True)
        self._retry_timer: asyncio.TimerHandle | None = None
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
        if halted or self.state is SessionState.FAILED:
            self.state, self.message = SessionState.STARTING, ""
        self._pending = self._pending.resumed(halted=halted)
        self._resumed.set()
        self._wake.set()
        self._event("resumed", "resumed")

    def accept_deletes(self) -> None:
        """`tether sync --accept-deletes`: the next cycle goes ahead with the big deletion."""
        self._pending = self._pending.with_accept_deletes()
        if self.state is SessionState.HALTED:
            self.resume()

    def _halt(self, message: str) -> None:
        """Stop syncing until `tether resume` (changes are still collected meanwhile)."""
        self.state, self.message = SessionState.HALTED, message
        self._resumed.clear()
        self._event("halted", message)

    @property
    def pending(self) -> int:
        return self._pending.count()

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
            self._pending = self._pending.with_full()
        self._pending = self._pending.with_retry()  # what failed before gets another try now
        self._idle.clear()
        self._wake.set()
        while True:
            if self.state is SessionState.HALTED:
                raise TetherError(f"pair {self.pair.name} is halted: {self.message}",
                                  "fix it, then `tether resume`")  # fmt: skip
            if self.state is SessionState.PAUSED:
                raise TetherError(f"pair {self.pair.name} is paused", "`tether resume` first")
            if self.state is SessionState.FAILED:
                raise TetherError(
                    f"pair {self.pair.name}: {self.message}",
                    f"it starts again within {LOOP_RESTART_S:g} s, or now with `tether resume`; "
                    "`tether logs` has the details",
                )
            if self.state is SessionState.WAITING or self.link.state.value != "up":
                await self._wait_for_link(deadline)
            if self.pending == 0 and self._idle.is_set():
                failed = self._pending.failed
                if failed and require_landed:
                    path, why = next(iter(failed.items()))
                    raise TetherError(
                        f"pair {self.pair.name}: {len(failed)} path(s) could not land, "
                        f"e.g. {shown(path)}: {shown(why)}",
                        "tether keeps them and retries; see `tether status`",
                    )
                return
            left = deadline - time.monotonic()
            if left <= 0:
                raise TetherError(f"pair {self.pair.name}: not flushed within {timeout_s:g}s")
            self._idle.clear()
            await within(self._idle.wait(), min(left, 0.5))

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
            # Written (on a thread: a slow disk must not stop the loop) only now, after flush
            # was called: every save before it is reported before it.
            await asyncio.to_thread(_create, path)
            if not await within(arrived, timeout_s):
                return False
        except OSError:
            return False
        finally:
            self._barriers.pop(token, None)
            await asyncio.to_thread(_remove, path)
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
        pair (:meth:`~tether.sync.state.StateStore.conflict_counts`, read by the caller off the
        loop): the last sync's own count would hide those earlier syncs left unresolved (and
        count ones already resolved)."""
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
            "failing": len(self._pending.failed),
            "watch": self.watch_mode,
        }

    # -- watchers ----------------------------------------------------------------------------

    async def _watch_local(self) -> None:
        await asyncio.to_thread(self.pair.local.mkdir, parents=True, exist_ok=True)
        rules = await asyncio.to_thread(_rules, self.pair)
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
                rules = await asyncio.to_thread(_rules, self.pair)  # .gitignore may have changed
                async for batch in agent.watch(self.pair.remote, rules.to_wire()):
                    if not self._host_watching.is_set():  # the first batch: watching now
                        # What changed on the host before this watch started was never
                        # reported (a first start, a reconnect): the next cycle is a full one.
                        self._host_watching.set()
                        self._pending = self._pending.with_full()
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
        """The sync loop, kept alive. An error it was not written for (a state database that
        cannot be opened, a bug) must not end it silently, leaving a pair that looks started
        but never syncs again: it is logged with its traceback, the pair shows it as
        ``failed`` with its reason (flush and `tether status` say it at once), and the loop
        starts again on `tether resume` or after :data:`LOOP_RESTART_S`. Not a halt: resuming
        it accepts nothing a safety check stopped (the loop reads a kept halt again first)."""
        while True:
            try:
                await self._sync_loop()
            except Exception as exc:  # a cancellation (close) is no Exception: it ends the loop
                log.exception("pair %s: the sync loop failed", self.pair.name)
                self.state = SessionState.FAILED
                self.message = f"tether's sync loop failed ({type(exc).__name__}: {exc})"
                self._resumed.clear()
                self._event("failed", self.message, level="error")
                await within(self._resumed.wait(), LOOP_RESTART_S)
                if self.state is SessionState.FAILED:  # not resumed by hand meanwhile
                    self.state, self.message = SessionState.STARTING, ""
                    self._resumed.set()

    async def _sync_loop(self) -> None:
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
                if await self._cycle(store):  # now that the cycle's locals are gone too
                    release_memory()

    async def _cycle(self, store: OffLoop[StateStore]) -> bool:
        """Run one sync of what is pending. True if it was a big full one: the caller then
        hands the memory it held back to the OS (:func:`release_memory`)."""
        if self.link.state.value != "up":
            self.state = SessionState.WAITING
            self._idle.set()
        try:
            agent = await self.link.wait_agent()
        except TetherError as exc:  # a permanent link failure: show it, try on resume
            self.state, self.message = SessionState.WAITING, exc.one_line()
            self._resumed.clear()
            return False
        self._idle.clear()
        self.state = SessionState.SYNCING
        if self._pending.full and not self._host_watching.is_set():
            # Not asyncio.wait_for: before Python 3.12 it can drop a cancel that lands as the
            # watch comes up, and a session closed then would never end (see tether.aio).
            await within(self._host_watching.wait(), HOST_WATCH_WAIT_S)
        cycle, self._pending = self._pending.take(time.monotonic())
        if cycle.accept_halt:
            await store.run(StateStore.accept_halt, pair_key(self.config.path, self.pair.name))
        started = time.monotonic()
        try:
            report = await sync_pair(
                self.config,
                self.pair,
                SSH,
                client=agent,
                store=store,
                accept_deletes=cycle.accept_deletes,
                local_paths=None if cycle.full else set(cycle.local),
                remote_paths=None if cycle.full else set(cycle.remote),
            )
        except HostUnreachable:
            self._pending = self._pending.put_back(cycle.local, cycle.remote).with_full()
            self.state = SessionState.WAITING
            return False
        except TetherError as exc:
            self._pending = self._pending.put_back(cycle.local)
            self._halt(exc.one_line())
            return False
        # A full cycle's plan lists every file it moved (100,000 lines after a first sync):
        # keep it only for a `sync_now` waiting for this cycle.
        kept = report if self._collecting else _counts_only(report)
        self.last_report, self.last_sync, self.syncs = kept, time.time(), self.syncs + 1
        self._reports.append((self.syncs, kept))
        if report.scope is None:
            self._pending = self._pending.full_ran(started)
        # A big full cycle held both trees in memory; give it back once it is over.
        release = (
            report.scope is None and report.local_files + report.remote_files >= RELEASE_AFTER_FILES
        )
        if report.notice:
            self._event("notice", report.notice, level="warning")
        if report.halted:
            self._pending = self._pending.put_back(cycle.local)
            self._halt(report.message)
            return release
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
            landed = sorted(set(report.base_moved) - cycle.remote)
            if landed:
                await self._on_landed(self.pair, landed)
        return release

    def _schedule_retry(self, failed: dict[str, str]) -> None:
        """Keep the paths that failed pending; try them again after a growing delay."""
        self._pending = self._pending.with_failed(failed)
        if self._retry_timer is not None:
            self._retry_timer.cancel()
            self._retry_timer = None
        if self._pending.retry_in_s is None:
            return

        def due() -> None:
            self._pending = self._pending.with_retry()
            self._wake.set()

        self._retry_timer = asyncio.get_running_loop().call_later(self._pending.retry_in_s, due)

    def _event(self, kind: str, message: str, **extra: Any) -> None:
        log.info("pair %s: %s", self.pair.name, message)
        if self._on_event is not None:
            self._on_event(
                {"kind": f"pair.{kind}", "pair": self.pair.name, "message": message, **extra}
            )


def _create(path: Path) -> None:
    """Create ``path``, empty and private; an error if it is there already."""
    os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))


def _remove(path: Path) -> None:
    with contextlib.suppress(OSError):
        os.unlink(path)


def _rules(pair: PairConfig) -> IgnoreRules:
    """The pair's ignore rules with its root's ``.gitignore`` as it is now (blocking: it reads
    the file)."""
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
