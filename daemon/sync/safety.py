"""Pure predicates that stop a pair before a destructive plan runs.

A side whose root vanished, stopped being a folder, or emptied while the base still remembers
files is far more likely an unmounted disk or a wrong path than a user deleting everything; the
pair halts with a named :class:`PairStatus` instead of deleting the other side.

An exactly empty root is only the clearest case: ``rm -rf *`` followed by one new file, or a
root that keeps one stray file, looks the same to a user and must stop the same way. So, like
Unison's ``confirmbigdeletes``, a plan that would delete most of one side halts the pair too
(:func:`deletion_verdict`), until the user accepts exactly that plan
(:func:`plan_fingerprint` names it).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
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
    HALTED_BIG_DELETION = "halted-big-deletion"
    """The plan would delete most of one side; it waits for the user to accept it."""
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


BIG_DELETION_MIN = 4
"""Fewer deletions than this never halt: in a small tree, deleting 1 of 2 or 3 of 5 files is an
everyday edit, not a wiped disk, and a guard that nags for it gets switched off."""


def deletion_verdict(side: str, *, deleting: int, holding: int) -> tuple[PairStatus, str] | None:
    """Would deleting ``deleting`` of the ``holding`` files, folders and links one side holds
    now delete most of it? Then the pair halts (None: go on).

    The rule: more than half of the side, and at least :data:`BIG_DELETION_MIN` paths. Counting
    what the side holds *now* (not the base) makes the near misses halt too: a root emptied but
    for one file, or emptied and given one new file, still loses nearly everything it held.
    """
    if deleting < BIG_DELETION_MIN or deleting * 2 <= holding:
        return None
    return (
        PairStatus.HALTED_BIG_DELETION,
        f"this sync would delete {deleting} of the {holding} paths on the {side} side",
    )


def plan_fingerprint(deletions: Iterable[tuple[str, str]]) -> str:
    """A short name for a plan's deletions (``(side, path)`` pairs, in any order): the user
    accepts a halt for exactly the deletions shown; if they change, the plan is judged again."""
    digest = hashlib.sha256()
    for side, path in sorted(set(deletions)):
        digest.update(f"{side}\0{path}\0".encode("utf-8", "surrogateescape"))
    return digest.hexdigest()[:16]
