"""Listing and pulling report folders: one ``reports`` round trip per host, one pull-mode sync
per report (only what changed moves; every file staged and renamed into place by the engine)."""

from __future__ import annotations

import asyncio
import os
import stat
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ..config import Config, ReportsConfig
from ..store import OffLoop
from ..sync.engine import Progress, SyncReport, sync_pair
from ..sync.state import StateStore, off_loop, pair_key
from ..sync.tempnames import is_temp
from ..transport.agent_client import AgentClient
from ..transport.endpoints import SSH
from .model import (
    LocalStatus,
    Report,
    local_status,
    report_pair,
    reports_of,
    summarize,
    with_status,
)

PULL_TRIES = 3
"""A report that moved on the host during its pull is pulled again this many times in all
before it is reported as still being written."""


@dataclass
class Listing:
    """The reports under every root asked, newest first, and the roots that could not be read."""

    reports: list[Report] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    """One line per root: its table, kind, path and why."""


@dataclass
class Pulled:
    """What pulling one report did."""

    report: Report
    sync: SyncReport | None = None
    changing: bool = False
    """The report kept changing on the host while it was pulled: pull it again once done."""
    error: str = ""

    @property
    def ok(self) -> bool:
        return not (self.changing or self.error or (self.sync and self.sync.problems))


def tables_for(config: Config, host: str, names: Iterable[str] = ()) -> list[ReportsConfig]:
    wanted = set(names)
    return [
        t for t in config.reports.values() if t.host == host and (not wanted or t.name in wanted)
    ]


async def list_host(
    agent: AgentClient, tables: Sequence[ReportsConfig], kind: str | None = None
) -> Listing:
    """Every report under the tables' roots (of ``kind`` only, if given), in one round trip."""
    asked = [
        (t, k, path) for t in tables for k, path in t.roots.items() if kind is None or k == kind
    ]
    roots = await agent.reports([(k, p, t.markers.get(k, ())) for t, k, p in asked])
    listing = Listing()
    for (table, _, _), root in zip(asked, roots, strict=True):
        if root.error:
            listing.errors.append(f"{table.name}.{root.kind}: {root.path}: {root.error}")
        listing.reports.extend(reports_of(table.name, root))
    listing.reports.sort(key=lambda r: (-r.mtime_ns, r.kind, r.folder))
    return listing


def local_files(folder: Path) -> dict[str, tuple[int, int]] | None:
    """The files of a local report copy, path → (size, mtime_ns); None when it is not there."""
    if not folder.is_dir():
        return None
    files: dict[str, tuple[int, int]] = {}
    for here, _, names in os.walk(folder):  # symlinked folders are listed, not entered
        rel = Path(here).relative_to(folder).as_posix()
        for name in names:
            st = os.lstat(os.path.join(here, name))
            if stat.S_ISREG(st.st_mode) and not is_temp(name):
                files[name if rel == "." else f"{rel}/{name}"] = (st.st_size, st.st_mtime_ns)
    return files


def with_local_status(config: Config, store: StateStore, reports: Iterable[Report]) -> list[Report]:
    """Each report with how its local copy stands (from the base its last pull agreed on)."""
    out = []
    for r in reports:
        pair = report_pair(config.reports[r.table], r.kind, r.folder)
        base = store.load_base(pair_key(config.path, pair.name))
        status = local_status(base, local_files(pair.local), r.summary)
        out.append(with_status(r, status))
    return out


async def pull(
    config: Config,
    agent: AgentClient,
    report: Report,
    *,
    progress: Progress | None = None,
    store: OffLoop[StateStore] | None = None,
) -> Pulled:
    """Pull one report whole: sync its folder, then ask the host again; a report that moved
    meanwhile is pulled again (:data:`PULL_TRIES` in all), else reported as still changing."""
    table = config.reports[report.table]
    pair = report_pair(table, report.kind, report.folder)
    await asyncio.to_thread(pair.local.mkdir, parents=True, exist_ok=True)
    async with off_loop(store) as state:
        result = Pulled(report)
        for _ in range(PULL_TRIES):
            result.sync = await sync_pair(
                config, pair, SSH, client=agent, progress=progress, store=state, accept_empty=True
            )
            if result.sync.halted:
                result.error = result.sync.message
                return result
            now = await _now_on_host(agent, table, report)
            if now is None:
                result.error = "it is gone from the host"
                return result
            base = await state.run(StateStore.load_base, pair_key(config.path, pair.name))
            result.report = with_status(now, LocalStatus.UP_TO_DATE)
            if not result.sync.unsettled and summarize(base) == now.summary:
                result.changing = False
                return result
            result.changing = True
        return result


async def _now_on_host(agent: AgentClient, table: ReportsConfig, report: Report) -> Report | None:
    listing = await list_host(agent, [table], report.kind)
    return next((r for r in listing.reports if r.folder == report.folder), None)
