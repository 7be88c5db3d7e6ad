"""One sync of one pair: scan both sides, check safety, reconcile, apply, save the new base.

:func:`sync_pair` is what ``tether sync`` runs and what the daemon runs from its watchers
(passing its own agent, an :class:`~.endpoint.Endpoint`, so the link is reused). The engine
opens no connection itself: the caller hands in a :class:`~.endpoint.Connector`
(:data:`tether.transport.endpoints.SSH`), so this layer imports no SSH library. The
base is saved only from what actually landed, in one SQLite transaction, so a sync killed at any
moment is finished by the next one with nothing lost or duplicated. A path edited between scan and
apply is never clobbered: the apply reports it and the engine rescans and tries again (a few
rounds).

Every read and write of the state database runs on the store's own thread
(:class:`~tether.store.OffLoop`): saving the base of 100,000 paths takes seconds, and the
daemon's other pairs, its tunnels and its control API go on meanwhile.

Before any plan runs, the base must be the one agreed for this pair's identity (its host and
both roots, :mod:`.identity`): another identity's base is forgotten and the sync is a first sync,
which never deletes. After it is planned, :mod:`.safety` judges it: a root gone, retyped or
emptied, or a plan that would delete most of one side, halts the pair; the halt is stored, and
a plan the user accepted (``tether resume``, ``tether sync --accept-deletes``) goes ahead only
while its deletions are the ones that were shown.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import sys
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..config import Config, PairConfig, PairMode
from ..errors import BadHostData, RemoteError
from ..store import OffLoop
from . import sides
from .apply import Outcome, ProgressFn, apply_plan, total_bytes
from .endpoint import Connector, Endpoint
from .entry import Entry, EntryKind, InvalidEntry, Snapshot
from .identity import PairIdentity, remote_root
from .ignore import GITIGNORE, IgnoreRules
from .links import makes_link, refuse_escaping_links
from .paths import case_collisions, is_within, parent_of
from .reconcile import (
    Action,
    ActionKind,
    Conflict,
    Plan,
    Problem,
    Side,
    next_base,
    reconcile,
    scanned_path,
)
from .safety import (
    BIG_DELETION_MIN,
    PairStatus,
    deletion_verdict,
    plan_fingerprint,
    root_verdict,
    syncable,
)
from .scan import DigestCache, LocalScan, scan_local
from .state import ConflictRecord, StateStore, off_loop, pair_key
from .transfer import hashed_as_sent
from .wire import foreign_name

log = logging.getLogger(__name__)

MAX_ROUNDS = 3
"""Scan-reconcile-apply rounds when paths change under our feet."""
MAX_DIRTY_ROOTS = 2000
"""More dirty subtrees than this and one full (cache-assisted) scan is cheaper and simpler."""


def dirty_roots(paths: Iterable[str]) -> list[str] | None:
    """The smallest set of subtrees covering ``paths`` (a path below another is dropped).

    None (scan everything) when a path is the root itself, is a ``.gitignore`` (the rules
    change), or there are too many subtrees.
    """
    roots: list[str] = []
    for path in sorted({_syncable_part(p.strip("/")) for p in paths}):
        if not path or path == "." or path.rpartition("/")[2] == GITIGNORE:
            return None
        if roots and is_within(path, roots[-1]):
            continue
        roots.append(path)
        if len(roots) > MAX_DIRTY_ROOTS:
            return None
    return roots


def _syncable_part(path: str) -> str:
    """``path`` up to the first name tether's rules refuse (a backslash): that name is scanned
    as its folder's child, and reported there; a scan cannot be asked for it by name."""
    parts = path.split("/")
    for i, part in enumerate(parts):
        if foreign_name(part) is not None:
            return "/".join(parts[:i])
    return path


@dataclass(frozen=True)
class Round:
    """One round's plan and what it was made from (the scans, the base, the digest cache)."""

    number: int
    plan: Plan
    base: Snapshot
    scanned: LocalScan
    remote: Snapshot
    cache: DigestCache
    """The digest cache the scan started from (the saved one is the scan's own)."""
    held: Mapping[Side, Callable[[], Awaitable[int]]]
    """What each side holds in all (see ``_Session._guard``)."""


@dataclass(frozen=True)
class Halt:
    """Why a pair halts, for the caller to report and store: the status, the line the user
    reads, and the fingerprint of the deletions a big-deletion halt stopped ("" for a root halt),
    which an accepted halt must match."""

    status: PairStatus
    message: str
    plan: str = ""


Ending = bool | Halt
"""How a sync strategy ended: True (done), False (a dry run, stopped once planned), or a Halt."""


Prescan = tuple[DigestCache, LocalScan]
"""A full local scan started before the link was up, with the digest cache it started from."""


@dataclass(frozen=True)
class Step:
    """What a round decided: ``end`` (see :data:`Ending`), or None: paths changed under the
    apply, rescan them (``changed``) from the new ``base`` and digest ``cache``."""

    end: Ending | None
    base: Snapshot = field(default_factory=dict)
    cache: DigestCache = field(default_factory=dict)
    changed: list[str] = field(default_factory=list)


@dataclass
class SyncReport:
    """What one sync of one pair did (``--json`` prints :meth:`to_json`)."""

    pair: str
    mode: str
    status: PairStatus = PairStatus.OK
    message: str = ""
    notice: str = ""
    """One line the user should read although nothing failed (a pair that now points elsewhere)."""
    dry_run: bool = False
    plan: list[str] = field(default_factory=list)
    copied: int = 0
    deleted: int = 0
    bytes: int = 0
    conflicts: list[Conflict] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)
    local_files: int = 0
    remote_files: int = 0
    hashed_local: int = 0
    hashed_remote: int = 0
    rounds: int = 0
    scope: list[str] | None = None
    """The subtrees an incremental sync covered (None: a full scan)."""
    unsettled: list[str] = field(default_factory=list)
    """Paths still changing after :data:`MAX_ROUNDS` tries: not copied (problems too)."""
    base_moved: list[str] = field(default_factory=list)
    """Paths whose base entry this sync changed (what landed, or where the sides caught up)."""
    scan_s: float = 0.0
    transfer_s: float = 0.0
    total_s: float = 0.0

    @property
    def halted(self) -> bool:
        return self.status.value.startswith("halted")

    def to_json(self) -> dict[str, Any]:
        return {
            "pair": self.pair,
            "mode": self.mode,
            "status": self.status.value,
            "message": self.message,
            "notice": self.notice,
            "dry_run": self.dry_run,
            "plan": self.plan,
            "copied": self.copied,
            "deleted": self.deleted,
            "bytes": self.bytes,
            "conflicts": [
                {"path": c.root, "winner": c.winner.value, "copy": c.copy} for c in self.conflicts
            ],
            "problems": [{"path": p.path, "message": p.message} for p in self.problems],
            "unsettled": self.unsettled,
            "local_files": self.local_files,
            "remote_files": self.remote_files,
            "hashed": {"local": self.hashed_local, "remote": self.hashed_remote},
            "rounds": self.rounds,
            "scope": self.scope,
            "seconds": {
                "scan": round(self.scan_s, 3),
                "transfer": round(self.transfer_s, 3),
                "total": round(self.total_s, 3),
            },
        }


class Progress:
    """Hooks the CLI (or the daemon) passes in; every method is optional to override."""

    def phase(self, name: str, detail: str = "") -> None:
        """``scan``, ``plan``, ``transfer``, ``done``."""

    def transfer_started(self, files: int, total_bytes: int) -> None:
        pass

    def file_done(self, path: str, done_bytes: int, total_bytes: int) -> None:
        pass

    def file_bytes(self, path: str, done: int, size: int) -> None:
        """A big file's bytes moving (once per chunk): ``done`` of its ``size`` so far."""


def stamp(now: float | None = None) -> str:
    return time.strftime("%Y%m%d-%H%M%S", time.localtime(now))


def _files(snap: Snapshot) -> int:
    return sum(1 for e in snap.values() if e.kind is EntryKind.FILE)


def _inside(snap: Snapshot, roots: list[str]) -> Snapshot:
    return {p: e for p, e in snap.items() if any(is_within(p, r) for r in roots)}


def _is_dir(entry: Entry | None) -> bool:
    return entry is not None and entry.kind is EntryKind.DIRECTORY


def local_is_case_insensitive(root: Path) -> bool:
    """Does the local filesystem fold case (macOS, Windows defaults)?"""
    if sys.platform not in ("darwin", "win32"):
        return False
    probe = root if root.exists() else root.parent
    swapped = probe.with_name(probe.name.swapcase())
    return swapped != probe and swapped.exists()


async def sync_pair(
    config: Config,
    pair: PairConfig,
    connector: Connector,
    *,
    dry_run: bool = False,
    progress: Progress | None = None,
    client: Endpoint | None = None,
    store: OffLoop[StateStore] | None = None,
    accept_empty: bool = False,
    accept_deletes: bool = False,
    now: Callable[[], float] = time.time,
    local_paths: Iterable[str] | None = None,
    remote_paths: Iterable[str] | None = None,
) -> SyncReport:
    """Sync one pair once.

    Args:
        config, pair: the project's config and the pair to sync.
        connector: opens the host's end and local agents (:data:`tether.transport.endpoints.SSH`).
        dry_run: scan and plan only; nothing is written, the base is not touched.
        progress: hooks for phase and per-file progress.
        client: a running agent on the pair's host (the daemon's); else one is started here.
        store: the state database, on its own thread (default: the user's, opened here).
        accept_empty: go on although a root emptied: it is filled from the other side as in a
            first sync (nothing is deleted on the side that kept its files).
        accept_deletes: go on with deletions the guard would halt: the ones of the stored halt
            (a plan that changed since is judged again), or any when no halt is stored; a root
            that emptied is then emptied on the other side too.
        local_paths, remote_paths: root-relative paths the watchers saw change on each side;
            when either is given, only those subtrees are scanned (on both sides), reconciled
            and written to the base (see :func:`dirty_roots`). Both None: a full scan. The sync
            falls back to a full scan whenever a partial one could be wrong: no base yet, a
            ``.gitignore`` among the paths or a new rule found, a root that is gone, no folder,
            or would be empty, an ancestor of a path that is not a folder on both sides, a
            case-folding local filesystem, or more than :data:`MAX_DIRTY_ROOTS` subtrees.

    Raises:
        TetherError: unreachable host (69), refused auth (77), bad host data (65), a full disk.
    """
    scope = (
        None
        if local_paths is None and remote_paths is None
        else dirty_roots([*(local_paths or ()), *(remote_paths or ())])
    )
    stamp_now = stamp(now())
    async with off_loop(store) as state:
        key = await asyncio.to_thread(pair_key, config.path, pair.name)  # resolves the path

        async def run(
            endpoint: Endpoint, prescan: asyncio.Future[Prescan] | None = None
        ) -> SyncReport:
            started = time.monotonic()
            local = sides.LocalSide(pair.local, connector.spawn_local)
            both: dict[Side, sides.Side] = {
                Side.LOCAL: local,
                Side.REMOTE: sides.AgentSide(endpoint, pair.remote, "remote"),
            }
            session = _Session(
                config,
                pair,
                connector,
                state,
                key,
                progress or Progress(),
                endpoint,
                both,
                accept_deletes=accept_deletes,
                prescan=prescan,
            )
            try:
                return await session.run(
                    dry_run=dry_run, accept_empty=accept_empty, stamp_now=stamp_now, scope=scope
                )
            finally:
                await local.close()
                session.report.total_s = time.monotonic() - started

        if client is not None:
            return await run(client)
        # A one-shot full sync: scan this side while the link comes up.
        prescan = (
            None if scope is not None else asyncio.ensure_future(_scan_ahead(state, key, pair))
        )
        try:
            async with connector.remote(config, pair) as started:
                return await run(started, prescan)
        finally:
            if prescan is not None:  # let an untaken prescan finish (a thread cannot be stopped)
                with contextlib.suppress(Exception):
                    await prescan


async def _scan_ahead(store: OffLoop[StateStore], key: str, pair: PairConfig) -> Prescan:
    cache = await store.run(StateStore.load_digests, key)
    rules = IgnoreRules(extra=pair.ignore)
    scanned = await asyncio.to_thread(scan_local, pair.local, rules, cache, defer_hashing=True)
    return cache, scanned


def _full_plan(base: Snapshot, local: Snapshot, remote: Snapshot, mode: PairMode, now: str) -> Plan:
    """A full sync's plan, links that would escape a root refused. The engine works it out on a
    worker thread: reconciling 100,000 paths takes about a second, which the daemon's other
    pairs, tunnels and control API do not wait out."""
    return refuse_escaping_links(reconcile(base, local, remote, mode, now=now), local, remote)


async def _count(snap: Snapshot) -> int:
    """What a scanned side holds: a held-count for :class:`Round` that needs no store."""
    return syncable(snap)


async def _hash_to_compare(scanned: LocalScan, base: Snapshot, remote: Snapshot) -> None:
    """Hash the local files the scan left unhashed that something will be compared with: a
    base entry or a remote one. The rest are new on this side only: whatever their content,
    they are copied, and hashed as they are read to be sent; so are big files changed here
    only (:func:`~tether.sync.transfer.hashed_as_sent`)."""
    need = [
        p
        for p, st in scanned.unhashed.items()
        if (p in remote or p in base)
        and not hashed_as_sent(st[0], st[1], base.get(p), remote.get(p))
    ]
    if need:
        await asyncio.to_thread(scanned.hash, need)


class _Session:
    """One sync of one pair over an endpoint already open, with both sides made from it."""

    def __init__(
        self,
        config: Config,
        pair: PairConfig,
        connector: Connector,
        store: OffLoop[StateStore],
        key: str,
        progress: Progress,
        client: Endpoint,
        sides: dict[Side, sides.Side],
        *,
        accept_deletes: bool,
        prescan: asyncio.Future[Prescan] | None,
    ) -> None:
        self.config, self.pair, self.store = config, pair, store
        self.connector, self.progress = connector, progress
        self.client, self.sides = client, sides
        self.accept_deletes = accept_deletes
        self.key = key
        self.report = SyncReport(pair.name, pair.mode.value)
        self._prescan = prescan
        """The full local scan started before the link was up; the first full round takes it
        (:func:`sync_pair` waits out one left untaken)."""

    async def run(
        self, *, dry_run: bool, accept_empty: bool, stamp_now: str, scope: list[str] | None
    ) -> SyncReport:
        report = self.report
        report.dry_run = dry_run
        fresh = await self._check_identity(dry_run)
        if self.accept_deletes and not dry_run:
            await self.store.run(StateStore.accept_halt, self.key)
        end: Ending | None = None
        if scope is not None:
            report.scope = scope
            end = True if not scope else await self._incremental(scope, fresh, dry_run, stamp_now)
        if end is None:
            report.scope = None
            end = await self._full(fresh, dry_run, accept_empty, stamp_now)
        if isinstance(end, Halt):
            report.status, report.message = end.status, end.message
            if not dry_run:
                await self.store.run(
                    StateStore.record_halt, self.key, end.status.value, end.message, end.plan
                )
            return report
        if not end:
            return report  # a dry run
        await self.store.run(StateStore.clear_halt, self.key)
        if report.conflicts:
            report.status = PairStatus.CONFLICTS
        self.progress.phase("done", self.pair.name)
        return report

    async def _identity(self) -> PairIdentity:
        """This pair's identity now (see :mod:`.identity`); reads only local files (resolving
        the local root on a worker thread: a slow mount must not hold up the loop)."""
        host = self.connector.host_label(self.config.host(self.pair.host))
        local = await asyncio.to_thread(self.pair.local.resolve)
        return PairIdentity(host, str(local), remote_root(self.pair.remote, self.client.home))

    async def _check_identity(self, dry_run: bool) -> bool:
        """Make the base the one agreed for this identity: another one's is forgotten (kept,
        unused, by a dry run), and the sync is a first sync, with a notice when there was one.
        True when the stored base is to be ignored (a dry run's first sync)."""
        identity = await self._identity()
        stored = await self.store.run(StateStore.identity, self.key)
        if stored == identity.key():
            return False
        if await self.store.run(StateStore.has_base, self.key):
            parts = (stored or "").split("\n")
            was = (
                f"was {PairIdentity(*parts).describe()}"
                if len(parts) == 3
                else "its state predates identities"
            )
            self.report.notice = (
                f"pair {self.pair.name} now syncs {identity.describe()} ({was}): a first sync, "
                "nothing is deleted and both sides' files are kept"
            )
            log.warning("%s", self.report.notice)
        if dry_run:
            return True
        await self.store.run(StateStore.adopt_identity, self.key, identity.key())
        return False

    async def _guard(
        self, plan: Plan, holding: Mapping[Side, Callable[[], Awaitable[int]]]
    ) -> Halt | None:
        """The halt due when ``plan`` deletes most of a side (see :func:`deletion_verdict`) and
        the user has not accepted exactly these deletions; None to go ahead. ``holding`` counts
        what a side holds now (called only when there are enough deletions to matter)."""
        deletes = [a for a in plan.actions if a.kind is ActionKind.DELETE]
        for side in (Side.LOCAL, Side.REMOTE):
            count = sum(1 for a in deletes if a.side is side)
            if count < BIG_DELETION_MIN:
                continue  # too few to matter: do not count what the side holds
            verdict = deletion_verdict(side.value, deleting=count, holding=await holding[side]())
            if verdict is None:
                continue
            fingerprint = plan_fingerprint((a.side.value, a.path) for a in deletes)
            halt = await self.store.run(StateStore.halt, self.key)
            if halt is None and self.accept_deletes:
                return None
            if halt is not None and halt.accepted and halt.plan == fingerprint:
                return None
            status, message = verdict
            name = self.pair.name
            return Halt(
                status,
                f"{message}; see them with `tether sync --dry-run {name}`, then accept with "
                f"`tether sync --accept-deletes {name}` or `tether resume {name}`",
                fingerprint,
            )
        return None

    async def _held(self, snap: Snapshot, base: Snapshot, scope: list[str]) -> int:
        """What a side holds in all, from its scan of ``scope`` and the base outside it."""
        outside = await self._outside(base, scope)
        return outside + syncable(_inside(snap, scope))

    async def _outside(self, base: Snapshot, scope: list[str]) -> int:
        """What the base holds outside ``scope`` (counting it scans all the pair's rows)."""
        held = await self.store.run(StateStore.count_syncable, self.key)
        return held - syncable(_inside(base, scope))

    async def _incremental(
        self, scope: list[str], fresh: bool, dry_run: bool, stamp_now: str
    ) -> Ending | None:
        """Sync only the subtrees in ``scope`` (see :data:`Ending`); None when only a full scan
        can decide safely (nothing was written). ``fresh``: the stored base is not this pair's."""
        report, pair, store, key = self.report, self.pair, self.store, self.key
        if local_is_case_insensitive(pair.local):
            return None  # a clash may be with a name outside the scope
        cached = await store.run(StateStore.load_rules, key)
        if fresh or cached is None or not await store.run(StateStore.has_base, key):
            return None  # first sync (or an empty base): the emptied checks need everything
        wire = [(str(r), bool(i)) for r, i in cached]
        known = set(wire)
        rules = IgnoreRules(extra=pair.ignore)
        for round_no in range(1, MAX_ROUNDS + 1):
            report.rounds = round_no
            t0 = time.monotonic()
            self.progress.phase("scan", pair.name)
            base = await store.run(StateStore.load_base_scope, key, scope)
            cache = await store.run(StateStore.load_digests_scope, key, scope)
            remote_scan = asyncio.ensure_future(
                self.client.scan(pair.remote, ignore=wire, paths=scope)
            )
            try:
                scanned = await asyncio.to_thread(
                    scan_local, pair.local, rules, cache, paths=scope, defer_hashing=True
                )
            finally:
                remote = await remote_scan
            await _hash_to_compare(scanned, base, remote.entries)
            report.scan_s += time.monotonic() - t0
            if not (scanned.exists and scanned.is_dir and remote.exists and remote.is_dir):
                return None  # a root gone or retyped: the full scan halts with the right status
            if scanned.rules_seen is not None and not scanned.rules_seen <= known:
                return None  # a .gitignore the host has not been sent: rescan both with it
            local, rem = scanned.entries, remote.entries
            for root in scope:
                parent = parent_of(root)
                while parent:
                    if not _is_dir(local.get(parent)) or not _is_dir(rem.get(parent)):
                        return None  # a parent deleted or retyped: decide from its own subtree
                    parent = parent_of(parent)

            if not (syncable(_inside(local, scope)) and syncable(_inside(rem, scope))):
                # A side keeps nothing here: would the whole root be empty? (Counting the base
                # scans all its rows, so only now.)
                outside = await self._outside(base, scope)
                if (
                    outside + syncable(_inside(local, scope)) == 0
                    or outside + syncable(_inside(rem, scope)) == 0
                ):
                    return None  # this would empty a root: let the full scan's safety check judge
            report.local_files, report.remote_files = _files(local), _files(rem)
            report.hashed_remote += int(remote.stats.get("hashed", 0))
            plan = await asyncio.to_thread(reconcile, base, local, rem, pair.mode, now=stamp_now)
            if any(makes_link(a) for a in plan.actions):
                return None  # a link's chain may pass outside the scope: judge the whole tree
            held = {
                side: functools.partial(self._held, snap, base, scope)
                for side, snap in ((Side.LOCAL, local), (Side.REMOTE, rem))
            }
            step = await self._round(
                Round(round_no, plan, base, scanned, rem, cache, held), dry_run=dry_run
            )
            if step.end is not None:
                return step.end
            wider = dirty_roots([*scope, *step.changed])
            if wider is None:
                return None
            scope = report.scope = wider
        return True

    async def _full(self, fresh: bool, dry_run: bool, accept_empty: bool, stamp_now: str) -> Ending:
        """Scan both roots whole (see :data:`Ending`). ``fresh``: the stored base is not this
        pair's (a dry run's first sync)."""
        report, pair, store, key = self.report, self.pair, self.store, self.key
        base = {} if fresh else await store.run(StateStore.load_base, key)
        prescan = self._prescan  # a session runs one full sync at most: it takes it once
        if prescan is None:
            cache = await store.run(StateStore.load_digests, key)
        else:
            cache = (await prescan)[0]
        for round_no in range(1, MAX_ROUNDS + 1):
            report.rounds = round_no
            t0 = time.monotonic()
            self.progress.phase("scan", pair.name)
            rules = IgnoreRules(extra=pair.ignore)
            # Start the host's scan with last time's rules while this side scans; if the
            # .gitignore files changed meanwhile, scan the host again with the new ones.
            cached = await store.run(StateStore.load_rules, key)
            last = None if fresh else await store.run(StateStore.load_remote_scan, key, pair.remote)
            early = (
                asyncio.ensure_future(
                    self.client.scan(
                        pair.remote,
                        ignore=[(r, bool(i)) for r, i in cached],
                        delta=True,
                        since=last,
                    )
                )
                if cached is not None
                else None
            )
            try:
                if prescan is not None:
                    scanned = (await prescan)[1]
                    prescan = None
                else:
                    scanned = await asyncio.to_thread(
                        scan_local, pair.local, rules, cache, defer_hashing=True
                    )
            finally:
                remote_early = await early if early is not None else None
            wire = (scanned.rules or rules).to_wire()
            if remote_early is not None and wire == cached:
                remote = remote_early
            else:
                if remote_early is not None and remote_early.token:
                    last = (remote_early.token, remote_early.entries)
                remote = await self.client.scan(pair.remote, ignore=wire, delta=True, since=last)
                await store.run(StateStore.save_rules, key, wire)
            if remote.token and (last is None or last[0] != remote.token):
                await store.run(
                    StateStore.save_remote_scan, key, pair.remote, remote.token, remote.entries
                )
            elif not remote.token and last is not None:
                await store.run(StateStore.forget_remote_scan, key)
            await _hash_to_compare(scanned, base, remote.entries)
            report.scan_s += time.monotonic() - t0
            local = scanned.entries
            report.local_files, report.remote_files = _files(local), _files(remote.entries)
            report.hashed_remote += int(remote.stats.get("hashed", 0))
            if local_is_case_insensitive(pair.local):
                clashes = case_collisions(remote.entries)
                if clashes:
                    a, b = clashes[0]
                    raise BadHostData(
                        f"the host has {a!r} and {b!r}, which are one name on this machine",
                        "rename one of them on the host",
                    )
            for verdict in (
                root_verdict(
                    "local",
                    exists=scanned.exists,
                    is_dir=scanned.is_dir,
                    snapshot=local,
                    other=remote.entries,
                    base=base,
                ),
                root_verdict(
                    "remote",
                    exists=remote.exists,
                    is_dir=remote.is_dir,
                    snapshot=remote.entries,
                    other=local,
                    base=base,
                ),
            ):
                if verdict is None:
                    continue
                status, message = verdict
                if status is PairStatus.HALTED_ROOT_EMPTIED and self.accept_deletes:
                    continue  # the deletions are judged (and accepted) as a plan below
                if status is PairStatus.HALTED_ROOT_EMPTIED and accept_empty:
                    # A first sync: the empty side is filled, nothing is deleted.
                    if not dry_run:
                        await store.run(StateStore.save_base, key, base, {})
                    base = {}
                    continue
                return Halt(status, message)
            plan = await asyncio.to_thread(
                _full_plan, base, local, remote.entries, pair.mode, stamp_now
            )
            snaps = {Side.LOCAL: local, Side.REMOTE: remote.entries}
            held = {s: functools.partial(_count, snap) for s, snap in snaps.items()}
            step = await self._round(
                Round(round_no, plan, base, scanned, remote.entries, cache, held),
                dry_run=dry_run,
                create_local=scanned.exists is False,
                create_remote=not remote.exists,
            )
            if step.end is not None:
                return step.end
            base, cache = step.base, step.cache
        return True

    async def _round(
        self,
        r: Round,
        *,
        dry_run: bool,
        create_local: bool = False,
        create_remote: bool = False,
    ) -> Step:
        """The tail of a round, the same for both strategies: report the plan, judge it, apply
        it, save the new base from what landed, and say whether to go again."""
        report, plan = self.report, r.plan
        if r.number == 1:
            report.plan = [a.describe() for a in plan.actions]
            report.conflicts = list(plan.conflicts)
        report.problems = list(plan.problems)
        halt = await self._guard(plan, r.held)
        if halt is not None:
            return Step(end=halt)
        if dry_run:
            return Step(end=False)
        if create_local and plan.actions:
            await asyncio.to_thread(self.pair.local.mkdir, parents=True, exist_ok=True)
        if create_remote and plan.actions:
            await self.client.probe(self.pair.remote, create=True)
        outcome = await self._apply(plan)
        # What the apply learned about this side's files, taken in here once: the scan's digest
        # cache gains them, and next_base completes the entries from ``outcome.learned``.
        learned = learned_here(plan.actions, outcome)
        cache = r.scanned.cache_with(learned)
        report.hashed_local += r.scanned.hashed + sum(1 for p in learned if p in r.scanned.unhashed)
        base = await self._save(r.base, r.scanned.entries, r.remote, plan, outcome, r.cache, cache)
        if outcome.fatal is not None:
            raise outcome.fatal
        report.problems.extend(outcome.problems)
        if not outcome.changed:
            return Step(end=True)
        if r.number == MAX_ROUNDS:
            self._unsettled(outcome.changed)
            return Step(end=True)
        log.info("%d paths changed during the sync; rescanning", len(outcome.changed))
        report.problems = [p for p in report.problems if p.path not in outcome.changed]
        return Step(end=None, base=base, cache=cache, changed=outcome.changed)

    def _unsettled(self, changed: list[str]) -> None:
        """Paths that were still changing on the last round (each read or check found other
        bytes than the scan): reported by path, never dropped. The daemon tries them again
        later; the CLI exits non-zero."""
        report = self.report
        paths = sorted(set(changed))
        report.problems = [p for p in report.problems if p.path not in paths]
        why = f"kept changing during the sync ({MAX_ROUNDS} tries): not copied; sync again later"
        report.problems.extend(Problem(p, why) for p in paths)
        report.unsettled = paths
        log.warning("%d paths kept changing during the sync: %s", len(paths), ", ".join(paths))

    async def _apply(self, plan: Plan) -> Outcome:
        """Carry out ``plan``, its counts added to the report; the scans are left as they were."""
        report = self.report
        files = [a for a in plan.actions if a.kind is ActionKind.COPY]
        self.progress.phase("transfer", self.pair.name)
        self.progress.transfer_started(len(files), total_bytes(plan.actions))
        t0 = time.monotonic()
        progress: ProgressFn = self.progress.file_done
        outcome = await apply_plan(
            plan.actions,
            self.sides,
            on_progress=progress,
            on_file_bytes=self.progress.file_bytes,
        )
        report.transfer_s += time.monotonic() - t0
        report.copied += outcome.files
        report.deleted += outcome.deleted
        report.bytes += outcome.bytes
        return outcome

    async def _save(
        self,
        base: Snapshot,
        local: Snapshot,
        remote: Snapshot,
        plan: Plan,
        outcome: Outcome,
        old_cache: DigestCache,
        cache: DigestCache,
    ) -> Snapshot:
        """The new base from what landed; validated, then written in one transaction."""
        if outcome.fatal is not None:
            return base  # a full disk: leave the base exactly as it was
        landed = {a.path for a in outcome.done}
        records = [
            ConflictRecord(
                self.key,
                c.root,
                c.copy,
                c.winner.value,
                tuple(s.value for s in c.copy_sides),
                f"local: {len(c.local_changes)} change(s); remote: {len(c.remote_changes)}",
                time.time(),
            )
            for c in plan.conflicts
            if c.root in landed
        ]
        key = self.key

        def save(store: StateStore) -> tuple[Snapshot, list[str]]:
            """On the store's thread: working out a base of 100,000 paths takes as long as
            writing it (about a second each), and the loop waits for neither."""
            new = _validated_next_base(base, local, remote, outcome)
            moved = store.save_base(key, base, new)
            store.save_digests(key, old_cache, cache)
            if records:
                store.add_conflicts(records)
            return new, moved

        new, moved = await self.store.run(save)
        self.report.base_moved.extend(moved)
        return new


def learned_here(actions: list[Action], outcome: Outcome) -> dict[str, str]:
    """What an apply learned about the local scan: for each file sent from this side that the
    scan left unhashed, its scanned path (a conflict copy's is the name its folder had, see
    :func:`scanned_path`) and the digest of the bytes read to send it."""
    asides = [a for a in actions if a.kind is ActionKind.MOVE_ASIDE and a.side is Side.LOCAL]
    return {
        scanned_path(asides, a.source_path): outcome.learned[a.source_path]
        for a in outcome.done
        if a.side is Side.REMOTE and a.source_path in outcome.learned
    }


def _validated_next_base(
    base: Snapshot, local: Snapshot, remote: Snapshot, outcome: Outcome
) -> Snapshot:
    """:func:`next_base` from what landed, each entry not already validated checked (what the
    host sent is never saved unchecked)."""
    new = next_base(base, local, remote, outcome.done, outcome.learned)
    for path, entry in new.items():
        if base.get(path) is entry or (local.get(path) is entry and entry.digest):
            continue  # already validated (scanned here, or loaded from a validated base)
        try:
            entry.check_valid(path)
        except InvalidEntry as exc:
            raise RemoteError(f"refusing to save an invalid base: {exc}") from None
    return new
