"""The pure core of sync: base + local + remote + mode → a plan of actions, conflicts, problems.

Nothing here touches the world (no filesystem, network, clock or logging): every decision is a
function of the three flat snapshots, the pair's mode and the time stamp the caller passes in, so
the semantics are tested on in-memory values (``tests/test_reconcile.py``).

The walk is mutagen's: at each path, if neither side's subtree changed since the base there is
nothing to do; if only one side changed, that side's subtree is propagated; if both changed the
same way the base simply catches up; if both changed and both are directories, the walk descends;
anything else is a conflict rooted at that path (so a directory-to-file swap is one conflict, not
one per descendant). Deletions only ever propagate from a side that had the path in the base,
because "absent on one side and absent in the base" is no change at all.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from enum import Enum
from typing import Final

from ..config import PairMode
from .entry import Entry, EntryKind, Snapshot
from .paths import is_within, parent_of

SYNCABLE: Final = frozenset({EntryKind.FILE, EntryKind.DIRECTORY, EntryKind.SYMLINK})


class Side(str, Enum):
    """One end of a pair."""

    LOCAL = "local"
    """The folder on this machine."""
    REMOTE = "remote"
    """The folder on the host."""

    @property
    def other(self) -> Side:
        return Side.REMOTE if self is Side.LOCAL else Side.LOCAL


class ActionKind(str, Enum):
    """What an action does on the side it applies to."""

    COPY = "copy"
    """Make ``path`` hold ``new`` (a file's bytes, a directory, a link) read from the other side
    at ``source``; ``old`` is what must be there now (None: nothing)."""
    DELETE = "delete"
    """Remove ``path`` (a directory only once empty; its children come first in the plan)."""
    MOVE_ASIDE = "move_aside"
    """Rename ``path`` (with its subtree) to the conflict copy name ``source``."""


@dataclass(frozen=True, slots=True)
class Action:
    """One step on one side. ``old`` is checked before anything is touched."""

    path: str
    side: Side
    kind: ActionKind
    old: Entry | None = None
    new: Entry | None = None
    source: str = ""
    """COPY: the path to read on the other side (default ``path``). MOVE_ASIDE: the new name."""

    @property
    def source_path(self) -> str:
        return self.source or self.path

    def describe(self) -> str:
        arrow = "→ local" if self.side is Side.LOCAL else "→ remote"
        if self.kind is ActionKind.DELETE:
            return f"delete {self.side.value}: {self.path}"
        if self.kind is ActionKind.MOVE_ASIDE:
            return f"keep {self.side.value} as {self.source}: {self.path}"
        what = self.new.kind.value if self.new is not None else "?"
        origin = f" (from {self.source})" if self.source and self.source != self.path else ""
        return f"{what} {arrow}: {self.path}{origin}"


@dataclass(frozen=True, slots=True)
class Change:
    """How one side differs from the base at one path (``new`` None: deleted)."""

    path: str
    old: Entry | None
    new: Entry | None


@dataclass(frozen=True, slots=True)
class Conflict:
    """Both sides changed ``root`` differently. ``copy`` is where the losing version was kept."""

    root: str
    local_changes: tuple[Change, ...]
    remote_changes: tuple[Change, ...]
    winner: Side
    copy: str = ""
    """Conflict copy path holding the other side's version ("" when none was needed)."""
    copy_sides: tuple[Side, ...] = ()
    """Sides on which the conflict copy is created."""


@dataclass(frozen=True, slots=True)
class Problem:
    """A path that could not be synced, and why. Never fatal for the rest of the pair."""

    path: str
    message: str


@dataclass
class Plan:
    """Everything reconcile decided. Actions are in a safe order (see :func:`ordered`)."""

    actions: list[Action] = field(default_factory=list)
    conflicts: list[Conflict] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)

    @property
    def empty(self) -> bool:
        return not self.actions


def same(a: Entry | None, b: Entry | None) -> bool:
    """Do two entries agree for sync purposes (content, kind, executable bit, link target)?"""
    if a is None or b is None:
        return a is b
    return a.same_content(b)


def _changed_paths(a: Snapshot, b: Snapshot, *, untracked_is_absent: bool = False) -> set[str]:
    """Paths (and all their ancestors) whose subtree differs between two snapshots.

    With ``untracked_is_absent``, an untracked entry that appears or goes is not a change (it is
    not synced, so it cannot make a side "changed").
    """
    out: set[str] = set()
    file, folder = EntryKind.FILE, EntryKind.DIRECTORY
    for path in _union(a, b):
        x, y = a.get(path), b.get(path)
        if x is y:
            continue
        if x is not None and y is not None and x.kind is y.kind:
            # Fast paths for what most entries are; same_content() decides everything else.
            if x.kind is folder:
                continue
            if x.kind is file and x.digest == y.digest and not (x.mode ^ y.mode) & 0o111:
                continue
        if untracked_is_absent:
            x = None if x is not None and x.kind is EntryKind.UNTRACKED else x
            y = None if y is not None and y.kind is EntryKind.UNTRACKED else y
        if not same(x, y):
            while path and path not in out:
                out.add(path)
                path = parent_of(path)
    return out


def _union(a: Snapshot, b: Snapshot) -> list[str]:
    """Keys of ``a``, then those of ``b`` not in ``a`` (no big set built when they agree)."""
    return [*a, *(p for p in b if p not in a)]


def _children(paths: set[str]) -> dict[str, list[str]]:
    index: dict[str, list[str]] = {}
    for path in paths:
        parent = path.rpartition("/")[0]
        kids = index.get(parent)
        if kids is None:
            index[parent] = [path]
        else:
            kids.append(path)
    for kids in index.values():
        kids.sort()
    return index


def _subtree(snap: Snapshot, kids: dict[str, list[str]], root: str) -> list[str]:
    """``root`` and its descendants present in ``snap``, parents first."""
    out: list[str] = []
    stack = [root]
    while stack:
        path = stack.pop()
        if path in snap:
            out.append(path)
            if snap[path].kind is EntryKind.DIRECTORY:
                stack.extend(reversed(kids.get(path, [])))
    return out


def conflict_name(path: str, side: Side, stamp: str, taken: set[str]) -> str:
    """``dir/name.conflict-<side>-<stamp>.ext``, made unique against ``taken``."""
    folder, _, name = path.rpartition("/")
    dot = name.rfind(".")
    stem, ext = (name[:dot], name[dot:]) if dot > 0 else (name, "")
    base = f"{stem}.conflict-{side.value}-{stamp}"
    candidate, n = f"{base}{ext}", 1
    while (f"{folder}/{candidate}" if folder else candidate) in taken:
        n += 1
        candidate = f"{base}-{n}{ext}"
    return f"{folder}/{candidate}" if folder else candidate


class _Reconciler:
    def __init__(
        self, base: Snapshot, local: Snapshot, remote: Snapshot, mode: PairMode, stamp: str
    ) -> None:
        self.base, self.local, self.remote, self.mode, self.stamp = (
            base,
            local,
            remote,
            mode,
            stamp,
        )
        everything = base.keys() | local.keys() | remote.keys()
        self.kids = _children(everything)
        self.local_changed = _changed_paths(base, local, untracked_is_absent=True)
        self.remote_changed = _changed_paths(base, remote, untracked_is_absent=True)
        self.sides_differ = _changed_paths(local, remote)
        self.taken = everything
        self.plan = Plan()
        self.creates: list[Action] = []
        self.deletes: list[Action] = []
        self.asides: list[Action] = []

    def snap(self, side: Side) -> Snapshot:
        return self.local if side is Side.LOCAL else self.remote

    def run(self) -> Plan:
        for path in self.kids.get("", []):
            self.node(path)
        self.plan.actions = self.asides + ordered_deletes(self.deletes) + self.creates
        return self.plan

    # -- the walk -------------------------------------------------------------------------------

    def node(self, path: str) -> None:
        if path not in self.sides_differ:
            return  # both sides agree on the whole subtree: the base just catches up
        if self._unsyncable(path):
            return
        local_changed = path in self.local_changed
        remote_changed = path in self.remote_changed
        mode = self.mode
        if mode is PairMode.MIRROR:
            self.propagate(path, Side.LOCAL)
            return
        if not local_changed or not remote_changed:
            source = Side.LOCAL if local_changed else Side.REMOTE
            if mode is PairMode.TWO_WAY or _flows(mode, source):
                self.propagate(path, source)
            return  # push: a remote-only change is left alone (pull: the mirror image)
        loc, rem = self.local.get(path), self.remote.get(path)
        if _is_dir(loc) and _is_dir(rem):
            for child in self.kids.get(path, []):
                self.node(child)
            return
        self.conflict(path, loc, rem)

    def _unsyncable(self, path: str) -> bool:
        """Untracked and problem entries stop the walk here: never propagated, never deleted."""
        for side in Side:
            entry = self.snap(side).get(path)
            if entry is not None and entry.kind not in SYNCABLE:
                if entry.kind is EntryKind.PROBLEM:
                    message = f"{side.value}: {entry.problem}"
                else:
                    message = f"{side.value}: not synced ({entry.problem or 'untracked'})"
                self.plan.problems.append(Problem(path, message))
                return True
        return False

    def conflict(self, path: str, loc: Entry | None, rem: Entry | None) -> None:
        mode = self.mode
        if mode is PairMode.TWO_WAY:
            if loc is None or rem is None:
                # Deleted on one side, modified on the other: the modification wins, nothing lost.
                self.propagate(path, Side.LOCAL if rem is None else Side.REMOTE)
                return
            winner = Side.LOCAL if loc.mtime_ns >= rem.mtime_ns else Side.REMOTE
            copy_sides: tuple[Side, ...] = (Side.LOCAL, Side.REMOTE)
        else:
            winner = Side.LOCAL if mode is PairMode.PUSH else Side.REMOTE
            copy_sides = (winner.other,)
        loser = winner.other
        loser_entry = self.snap(loser).get(path)
        if loser_entry is None:
            # The losing side deleted it: nothing of its own to keep, the winner just lands.
            self.propagate(path, winner)
            return
        copy = ""
        if loser_entry is not None:
            copy = conflict_name(path, loser, self.stamp, self.taken)
            self.taken.add(copy)
            # The loser's version steps aside on its own side (one rename, whole subtree)...
            self.asides.append(Action(path, loser, ActionKind.MOVE_ASIDE, loser_entry, None, copy))
            # ...and, in two-way, is copied under the same name to the winner's side.
            if Side.LOCAL in copy_sides and Side.REMOTE in copy_sides:
                src = self.snap(loser)
                for sub in self._copyable(src, path, loser, copy):
                    target = copy + sub[len(path) :]
                    self.creates.append(
                        Action(target, winner, ActionKind.COPY, None, src[sub], target)
                    )
        # The winner's version lands at the name on the loser's side (now vacated).
        win = self.snap(winner)
        for sub in self._copyable(win, path, winner, path):
            self.creates.append(Action(sub, loser, ActionKind.COPY, None, win[sub]))
        self.plan.conflicts.append(
            Conflict(
                path,
                self._changes(path, self.local),
                self._changes(path, self.remote),
                winner,
                copy,
                copy_sides if copy else (),
            )
        )

    def _copyable(self, src: Snapshot, path: str, side: Side, lands: str) -> list[str]:
        """``path``'s subtree on ``side`` that a conflict copies across; the untracked and
        unreadable entries in it are reported where they stay (under ``lands``, the name the
        subtree has after the conflict), never read: a FIFO's read waits forever, and a link
        leading out of the root must not be made on the other side."""
        out = []
        for sub in _subtree(src, self.kids, path):
            entry = src[sub]
            if entry.kind in SYNCABLE:
                out.append(sub)
            else:
                why = entry.problem or "untracked"
                if entry.kind is not EntryKind.PROBLEM:
                    why = f"not synced ({why})"
                self.plan.problems.append(Problem(lands + sub[len(path) :], f"{side.value}: {why}"))
        return out

    def _changes(self, root: str, snap: Snapshot) -> tuple[Change, ...]:
        paths = set(_subtree(snap, self.kids, root)) | set(_subtree(self.base, self.kids, root))
        return tuple(
            Change(p, self.base.get(p), snap.get(p))
            for p in sorted(paths)
            if not same(self.base.get(p), snap.get(p))
        )

    def propagate(self, path: str, source: Side) -> None:
        """Make the other side's subtree at ``path`` equal to ``source``'s."""
        src, dst_side = self.snap(source), source.other
        dst = self.snap(dst_side)
        s, d = src.get(path), dst.get(path)
        if same(s, d) and not _is_dir(s):
            return
        for entry in (s, d):
            if entry is not None and entry.kind not in SYNCABLE:
                self._unsyncable(path)
                return
        if _is_dir(s) and _is_dir(d):
            for child in self.kids.get(path, []):
                if child in self.sides_differ:
                    self.propagate(child, source)
            return
        if d is not None:
            blocked = [p for p in _subtree(dst, self.kids, path) if dst[p].kind not in SYNCABLE]
            if blocked:
                for p in blocked:
                    self.plan.problems.append(
                        Problem(p, f"{dst_side.value}: not synced; {path} left in place")
                    )
                return
            replace = s is not None and d.kind is s.kind and d.kind is not EntryKind.DIRECTORY
            if not replace:
                for p in _subtree(dst, self.kids, path):
                    self.deletes.append(Action(p, dst_side, ActionKind.DELETE, dst[p]))
        if s is None:
            return
        old = d if d is not None and d.kind is s.kind else None
        self.creates.append(Action(path, dst_side, ActionKind.COPY, old, s))
        if s.kind is EntryKind.DIRECTORY:
            for child in _subtree(src, self.kids, path)[1:]:
                entry = src[child]
                if entry.kind not in SYNCABLE:
                    self.plan.problems.append(Problem(child, f"{source.value}: not synced"))
                    continue
                self.creates.append(Action(child, dst_side, ActionKind.COPY, None, entry))


def _flows(mode: PairMode, source: Side) -> bool:
    return (mode is PairMode.PUSH and source is Side.LOCAL) or (
        mode is PairMode.PULL and source is Side.REMOTE
    )


def _is_dir(entry: Entry | None) -> bool:
    return entry is not None and entry.kind is EntryKind.DIRECTORY


def ordered_deletes(deletes: list[Action]) -> list[Action]:
    """Deepest paths first, so a directory is empty by the time its own delete comes."""
    return sorted(deletes, key=lambda a: (-a.path.count("/"), a.path))


def reconcile(
    base: Snapshot, local: Snapshot, remote: Snapshot, mode: PairMode, *, now: str
) -> Plan:
    """Decide what to do so both sides agree, per ``mode``.

    Args:
        base: the snapshot both sides agreed on after the last successful sync ({} at first).
        local, remote: fresh snapshots of each side.
        mode: the pair's :class:`~tether.config.PairMode`.
        now: the time stamp conflict copies are named with, ``YYYYmmdd-HHMMSS``.

    Returns:
        A :class:`Plan`: move-asides first, then deletes (deepest first), then creations
        (parents first); conflicts and problems as records.
    """
    if not isinstance(mode, PairMode):
        raise TypeError(f"invalid mode {mode!r}")
    return _Reconciler(base, local, remote, mode, now).run()


def next_base(
    base: Snapshot,
    local: Snapshot,
    remote: Snapshot,
    done: list[Action],
    learned: dict[str, str] | None = None,
) -> Snapshot:
    """The base after an apply: what both sides agreed on before, plus what actually landed.

    ``done`` lists the actions that succeeded (in plan order). A path where the scans already
    agreed joins the base; a path whose action failed keeps its old base entry, so the next sync
    sees the same difference again and nothing is forgotten. ``learned`` (source path → digest)
    completes a file the scan left unhashed and the apply read whole: the base keeps only
    hashed files. Pure: neither snapshot is changed.
    """
    new: Snapshot = {}
    file, folder = EntryKind.FILE, EntryKind.DIRECTORY
    for path in base.keys() | local.keys() | remote.keys():
        loc, rem = local.get(path), remote.get(path)
        if loc is not None and rem is not None and loc.kind is rem.kind:
            kind = loc.kind
            if kind is folder or (
                kind is file and loc.digest == rem.digest and not (loc.mode ^ rem.mode) & 0o111
            ):
                new[path] = loc  # the common case, decided without same()
                continue
        if loc is not None and loc.kind in SYNCABLE and same(loc, rem):
            new[path] = loc
        elif path in base and (loc is not None or rem is not None):
            new[path] = base[path]
    after = {Side.LOCAL: dict(local), Side.REMOTE: dict(remote)}
    # A conflict copy's new name -> the name the scan (and so ``learned``) knew it by.
    scanned_as: dict[str, str] = {}
    for action in done:
        side = after[action.side]
        if action.kind is ActionKind.MOVE_ASIDE:
            for p in [p for p in side if is_within(p, action.path)]:
                moved = side.pop(p)
                side[action.source + p[len(action.path) :]] = moved
                scanned_as[action.source + p[len(action.path) :]] = scanned_as.get(p, p)
                new.pop(p, None)
        elif action.kind is ActionKind.DELETE:
            side.pop(action.path, None)
            new.pop(action.path, None)
        elif action.new is not None:
            new_entry = action.new
            read = action.source_path
            digest = (learned or {}).get(read) or (learned or {}).get(scanned_as.get(read, read))
            if new_entry.kind is file and not new_entry.digest and digest:
                # Copied from a file the scan left unhashed: the apply hashed it on the way.
                new_entry = dataclasses.replace(new_entry, digest=digest)
                source = after[action.side.other]
                if source.get(action.source_path) == action.new:
                    source[action.source_path] = new_entry
            side[action.path] = new_entry
    for path in {a.path for a in done} | {a.source for a in done if a.source}:
        loc, rem = after[Side.LOCAL].get(path), after[Side.REMOTE].get(path)
        if loc is not None and loc.kind in SYNCABLE and same(loc, rem):
            new[path] = loc
        elif loc is None and rem is None:
            new.pop(path, None)
    return prune(new)


def scanned_path(asides: list[Action], path: str) -> str:
    """Where the scan saw ``path``, a name on the side the ``asides`` (MOVE_ASIDE actions of
    that side) renamed: a file read from a conflict copy was scanned under the name its folder
    had before, and what is learned about it (its digest) belongs to that scanned entry."""
    for aside in asides:
        if is_within(path, aside.source):
            return aside.path + path[len(aside.source) :]
    return path


def prune(snap: Snapshot) -> Snapshot:
    """Drop entries whose parent is not a directory in ``snap`` (a base must be a tree)."""
    if all(_is_dir(snap.get(parent_of(p))) for p in snap if "/" in p):
        return snap  # already a tree (the common case): no sort by depth
    out: Snapshot = {}
    for path in sorted(snap, key=lambda p: p.count("/")):
        parent = parent_of(path)
        if not parent or _is_dir(out.get(parent)):
            out[path] = snap[path]
    return out
