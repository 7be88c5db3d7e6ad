"""Pure predicates that stop a pair before a destructive plan runs.

A side whose root vanished, stopped being a folder, or emptied while the base still remembers
files is far more likely an unmounted disk or a wrong path than a user deleting everything; the
pair halts with a named :class:`PairStatus` instead of deleting the other side.
"""

from __future__ import annotations

from enum import Enum

from .entry import EntryKind, Snapshot


class PairStatus(str, Enum):
    """Where a pair stands after a sync attempt."""

    OK = "ok"
    """In sync (or synced with per-path problems reported)."""
    CONFLICTS = "conflicts"
    """Synced; some paths carry conflict copies awaiting `tether conflicts resolve`."""
    HALTED_ROOT_DELETED = "halted-root-deleted"
    """A root that held files is gone."""
    HALTED_ROOT_EMPTIED = "halted-root-emptied"
    """A root that held files is now empty while the other side is not."""
    HALTED_ROOT_TYPE_CHANGED = "halted-root-type-changed"
    """A root is no longer a folder."""
    FAILED = "failed"
    """The sync stopped on an error (link cut, disk full); the base is unchanged."""


def syncable(snap: Snapshot) -> int:
    """How many files, folders and links ``snap`` holds."""
    return sum(
        1
        for e in snap.values()
        if e.kind in (EntryKind.FILE, EntryKind.DIRECTORY, EntryKind.SYMLINK)
    )


def root_verdict(
    side: str,
    *,
    exists: bool,
    is_dir: bool,
    snapshot: Snapshot,
    other: Snapshot,
    base: Snapshot,
) -> tuple[PairStatus, str] | None:
    """Why this side's root must halt the pair, or None when it is safe to go on."""
    if not base:
        if exists and not is_dir:
            return PairStatus.HALTED_ROOT_TYPE_CHANGED, f"the {side} root is not a folder"
        return None  # first sync: a missing root is simply created
    if not exists:
        return (
            PairStatus.HALTED_ROOT_DELETED,
            f"the {side} root is gone but the last sync saw {len(base)} paths there",
        )
    if not is_dir:
        return PairStatus.HALTED_ROOT_TYPE_CHANGED, f"the {side} root is no longer a folder"
    if syncable(snapshot) == 0 and syncable(other) > 0 and syncable(base) > 0:
        return (
            PairStatus.HALTED_ROOT_EMPTIED,
            f"the {side} root is empty but the last sync saw {len(base)} paths there",
        )
    return None
