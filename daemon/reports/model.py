"""Reports as values: what the host listed, how a local copy stands, what a run changed, and
when a report has stopped changing. No I/O here."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from enum import Enum

from ..config import PairConfig, PairMode, ReportsConfig
from ..sync.entry import EntryKind, Snapshot
from ..transport.host_data import ReportRoot

Summary = tuple[int, int, int]
"""(newest file mtime_ns, bytes, files) of a report: what the host lists for each one cheaply,
and what tether compares to tell whether a report changed."""

Key = tuple[str, str, str]
"""(reports table, kind, folder): one report's identity."""


class LocalStatus(str, Enum):
    """How the local copy of a report stands against the host's."""

    NOT_PULLED = "not pulled"
    UP_TO_DATE = "up to date"
    OUTDATED = "outdated"
    """Changed on the host since it was pulled."""
    EDITED = "edited locally"
    """The local copy differs from what was pulled (a pull keeps the local version as a
    conflict copy)."""


@dataclass(frozen=True)
class Report:
    """One report folder on the host, with where it lands here and how that copy stands."""

    table: str
    kind: str
    folder: str
    name: str
    mtime_ns: int
    size: int
    files: int
    status: LocalStatus = LocalStatus.NOT_PULLED

    @property
    def key(self) -> Key:
        return (self.table, self.kind, self.folder)

    @property
    def summary(self) -> Summary:
        return (self.mtime_ns, self.size, self.files)

    def to_json(self) -> dict[str, object]:
        return {
            "reports": self.table,
            "kind": self.kind,
            "folder": self.folder,
            "name": self.name,
            "mtime_ns": self.mtime_ns,
            "size": self.size,
            "files": self.files,
            "status": self.status.value,
        }


def reports_of(table: str, root: ReportRoot) -> list[Report]:
    return [
        Report(table, root.kind, r.folder, r.name, r.mtime_ns, r.size, r.files)
        for r in root.reports
    ]


def report_pair(cfg: ReportsConfig, kind: str, folder: str) -> PairConfig:
    """The pull-mode pair that brings one report folder here: its own base in the sync state,
    so a re-pull moves only what changed and the status can be told from that base."""
    return PairConfig(
        name=f"reports.{cfg.name}.{kind}:{folder}",
        host=cfg.host,
        local=cfg.local_for(kind) / folder,
        remote=f"{cfg.roots[kind].rstrip('/')}/{folder}",
        mode=PairMode.PULL,
        ignore=cfg.ignore,
    )


def summarize(snapshot: Snapshot) -> Summary:
    """A snapshot's :data:`Summary`, counted as the host counts a report (files only)."""
    files = [e for e in snapshot.values() if e.kind is EntryKind.FILE]
    return (max((e.mtime_ns for e in files), default=0), sum(e.size for e in files), len(files))


def local_status(
    base: Snapshot, local: Mapping[str, tuple[int, int]] | None, remote: Summary
) -> LocalStatus:
    """Where a pulled report stands.

    Args:
        base: what its last pull agreed on (empty: never pulled).
        local: the local copy's files, path → (size, mtime_ns); None when the folder is gone.
        remote: the host's summary of it now.

    A pull sets each file's mtime to the host's, so a local file whose size or mtime differs
    from the base was edited here; the host's side is judged by its summary, which any write
    there moves (a new newest mtime, another size or count).
    """
    if not base or local is None:
        return LocalStatus.NOT_PULLED
    agreed = {p: (e.size, e.mtime_ns) for p, e in base.items() if e.kind is EntryKind.FILE}
    if dict(local) != agreed:
        return LocalStatus.EDITED
    return LocalStatus.UP_TO_DATE if summarize(base) == remote else LocalStatus.OUTDATED


def changed_since(before: Iterable[Report], after: Iterable[Report]) -> list[Report]:
    """The reports in ``after`` that are new or whose summary moved since ``before``: what a
    run created or changed (nothing older)."""
    seen = {r.key: r.summary for r in before}
    return [r for r in after if seen.get(r.key) != r.summary]


class Settler:
    """When each report last changed, so the daemon pulls one only once it has stopped.

    A report is ready when its summary has not moved for ``settle_s`` seconds and differs
    from the one last handed out (a report is handed out once per state).
    """

    def __init__(self, settle_s: float) -> None:
        self.settle_s = settle_s
        self._seen: dict[Key, tuple[Summary, float]] = {}
        self._done: dict[Key, Summary] = {}

    def observe(self, reports: Iterable[Report], now: float) -> list[Report]:
        ready = []
        present = set()
        for report in reports:
            present.add(report.key)
            seen = self._seen.get(report.key)
            if seen is None or seen[0] != report.summary:
                self._seen[report.key] = (report.summary, now)
                continue
            if now - seen[1] >= self.settle_s and self._done.get(report.key) != report.summary:
                ready.append(report)
        for key in set(self._seen) - present:
            del self._seen[key]
            self._done.pop(key, None)
        return ready

    def done(self, report: Report, summary: Summary | None = None) -> None:
        """``report`` was dealt with in this state (pulled, or left alone on purpose)."""
        self._done[report.key] = summary or report.summary


def with_status(report: Report, status: LocalStatus) -> Report:
    return replace(report, status=status)
