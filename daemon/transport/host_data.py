"""What the host sends, checked before anything acts on it: entries and scans (every path safe,
every entry valid, every parent a directory, links that escape the root left untracked), scan
deltas, report listings and watch batches; and an entry's form on the wire.

Pure (no I/O): the client hands each reply here, and a reply that fails is :class:`BadHostData`.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, TypeGuard

from ..errors import BadHostData
from ..sync.endpoint import Probe
from ..sync.entry import Entry, EntryKind, InvalidEntry
from ..sync.paths import check_relpath, escaping_link_problem, parent_of, symlink_stays_inside


@dataclass(frozen=True)
class WatchBatch:
    """Paths that changed on the host (rescan their subtrees); ``rescan``: rescan everything."""

    paths: tuple[str, ...]
    rescan: bool = False


@dataclass(frozen=True)
class RemoteReport:
    """One report folder the host listed (the ``reports`` op), validated."""

    folder: str
    """Relative to its root."""
    name: str
    """Its display name (TT-NN's ``config.json`` ``report_name``), else ""."""
    mtime_ns: int
    """Its newest file's."""
    size: int
    files: int


@dataclass(frozen=True)
class ReportRoot:
    """One root of report folders as the host saw it: its reports, or why it could not."""

    kind: str
    path: str
    reports: tuple[RemoteReport, ...] = ()
    error: str = ""
    """Empty when listed; else the reason (the root is missing, not a folder, unreadable)."""


def reports_from_wire(asked: Sequence[tuple[str, str]], raw: object) -> list[ReportRoot]:
    """The ``reports`` op's reply → one :class:`ReportRoot` per root asked, in that order:
    every folder a safe relative path, every number an int, or :class:`BadHostData`."""
    roots = raw.get("roots") if isinstance(raw, dict) else None
    if not isinstance(roots, list) or len(roots) != len(asked):
        raise BadHostData("the host sent a malformed report listing")
    out = []
    for (kind, path), item in zip(asked, roots, strict=True):
        if not isinstance(item, dict) or (item.get("kind"), item.get("path")) != (kind, path):
            raise BadHostData(f"the host sent a listing for another root than {path!r}")
        error = item.get("error")
        if error is not None:
            message = error.get("message") if isinstance(error, dict) else None
            out.append(ReportRoot(kind, path, error=as_text(message) or "unreadable"))
            continue
        reports = item.get("reports")
        if not isinstance(reports, list):
            raise BadHostData(f"the host sent a malformed listing of {path!r}")
        found = []
        for r in reports:
            if not isinstance(r, dict) or not isinstance(r.get("name"), str):
                raise BadHostData(f"the host sent a malformed report under {path!r}: {r!r}")
            mtime_ns, size, files = r.get("mtime_ns"), r.get("size"), r.get("files")
            if not (
                is_int(mtime_ns) and is_int(size) and is_int(files)
                and min(mtime_ns, size, files) >= 0
            ):  # fmt: skip
                raise BadHostData(f"the host sent bad numbers for a report under {path!r}: {r!r}")
            folder = check_relpath(r.get("folder"))
            found.append(RemoteReport(folder, r["name"][:200], mtime_ns, size, files))
        out.append(ReportRoot(kind, path, tuple(found)))
    return out


def entry_to_wire(entry: Entry | None) -> list[Any] | None:
    if entry is None:
        return None
    return [
        entry.kind.value,
        entry.size,
        entry.mtime_ns,
        entry.mode,
        entry.digest,
        entry.target,
        entry.problem,
    ]


def is_int(value: object) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool)


def entry_from_wire(path: str, raw: object) -> Entry:
    """One wire entry → a valid :class:`Entry`, or :class:`BadHostData`."""
    if not isinstance(raw, list) or len(raw) != 7:
        raise BadHostData(f"the host sent a malformed entry for {path!r}: {raw!r}")
    kind, size, mtime_ns, mode, digest, target, problem = raw
    if not (is_int(size) and is_int(mtime_ns) and is_int(mode) and 0 <= mode <= 0o7777):
        raise BadHostData(f"the host sent bad numbers for {path!r}: {raw!r}")
    if not (isinstance(digest, str) and isinstance(target, str) and isinstance(problem, str)):
        raise BadHostData(f"the host sent a malformed entry for {path!r}: {raw!r}")
    try:
        entry = Entry(EntryKind(kind), size, mtime_ns, mode, digest, target, problem)
        entry.check_valid(path)
    except (ValueError, InvalidEntry) as exc:
        raise BadHostData(f"the host sent an invalid entry: {exc}") from None
    return entry


def validate_snapshot(raw: object) -> dict[str, Entry]:
    """Every path safe, every entry valid, every parent a directory; escaping links untracked."""
    if not isinstance(raw, dict):
        raise BadHostData("the host sent a scan without an entries object")
    entries = validate_entries(raw)
    _check_parents(entries, entries)
    return entries


def _check_parents(entries: dict[str, Entry], paths: Iterable[str]) -> None:
    for path in paths:
        parent = parent_of(path)
        if parent and (parent not in entries or entries[parent].kind is not EntryKind.DIRECTORY):
            raise BadHostData(f"the host listed {path!r} without its parent directory")


def apply_scan_delta(
    previous: dict[str, Entry], changed: object, removed: object
) -> dict[str, Entry]:
    """``previous`` (a validated snapshot) with the host's changes: validated like a full scan."""
    if not isinstance(changed, dict) or not isinstance(removed, list):
        raise BadHostData("the host sent a malformed scan delta")
    entries = dict(previous)
    retyped = False
    for path in removed:
        check_relpath(path, foreign_ok=True)  # only dropped from the snapshot
        gone = entries.pop(path, None)
        retyped = retyped or (gone is not None and gone.kind is EntryKind.DIRECTORY)
    fresh = validate_entries(changed)
    for path, entry in fresh.items():
        old = entries.get(path)
        retyped = retyped or (
            old is not None
            and old.kind is EntryKind.DIRECTORY
            and entry.kind is not EntryKind.DIRECTORY
        )
        entries[path] = entry
    # A dir that went away (or became something else) must take its children with it.
    _check_parents(entries, entries if retyped else fresh)
    return entries


def validate_entries(raw: dict[str, object]) -> dict[str, Entry]:
    """Safe paths, valid entries; links escaping the root become untracked."""
    entries: dict[str, Entry] = {}
    for path, value in raw.items():
        entry = entry_from_wire(path, value)
        # A name tether's rules refuse (a backslash) may be listed, as untracked: reported only.
        check_relpath(path, foreign_ok=entry.kind is EntryKind.UNTRACKED)
        if entry.kind is EntryKind.SYMLINK and not symlink_stays_inside(path, entry.target):
            why = escaping_link_problem(entry.target)
            entry = Entry(EntryKind.UNTRACKED, 0, entry.mtime_ns, entry.mode, problem=why)
        entries[path] = entry
    return entries


def probe_from_wire(raw: object) -> Probe:
    """The ``probe`` op's reply → a :class:`Probe`: four booleans and a size, or BadHostData."""
    flags = ("exists", "created", "is_dir", "writable")
    if not isinstance(raw, dict) or not all(isinstance(raw.get(k), bool) for k in flags):
        raise BadHostData(f"the host sent a malformed folder probe: {raw!r}")
    free = raw.get("free_bytes")
    if free is not None and not (is_int(free) and free >= 0):
        raise BadHostData(f"the host sent bad free space in a folder probe: {raw!r}")
    return Probe(raw["exists"], raw["created"], raw["is_dir"], raw["writable"], free)


def as_text(data: bytes | str | None) -> str:
    """What the host sent as text (stderr, an error message), whatever it was."""
    if data is None:
        return ""
    return data.decode("utf-8", "replace") if isinstance(data, bytes) else data
