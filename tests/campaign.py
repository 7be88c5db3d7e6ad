"""The fault campaign's oracle: a model of every version a user wrote, and the checks run on both
trees after each sync settles.

The model is pure (it sees trees only as the :class:`Tree` values :func:`read_tree` makes), so
its rules can be read, and tested, without a host:

- A *version* is the content of one user write, named by its SHA-256 (the campaign makes every
  write's bytes unique, so a digest names one write).
- A version stops being owed when the user on some side deliberately replaces or deletes it:
  overwriting, deleting, or renaming over the path that holds it on that side, while no other
  path on either side holds it (a rename or a conflict copy elsewhere keeps it owed: someone
  still means to keep it). The last writer on a side supersedes what that side showed; a
  concurrent write on the other side is not superseded and must survive, at its path or in a
  conflict copy.
- Retargeting the pair's remote folder leaves behind what lived only in the old folder (the user
  walked away from it, it is still on disk there); the new folder's own files become owed.

After a sync: every owed version is at some path on some side (conflict copies included); no
link the sync made or changed resolves outside its root (a link there before is the user's);
nothing appeared in the folder the escaping links point to; no temporary file is visible; and,
when the sync finished, both sides hold the same files and links outside the paths it reported
as problems.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

SIDES = ("local", "remote")
CONFLICT_TAG = re.compile(r"\.conflict-(?:local|remote)-\d{8}-\d{6}(?:-\d+)?")
"""What a conflict copy adds to the name it steps aside from (``stem<tag>.ext``)."""
TEMP_NAME = re.compile(r"^\..*\.tether-[0-9a-f]{8,12}\.tmp$")
"""tether's staged files (the agent's 8 hex digits, the SFTP endpoint's 12)."""


@dataclass(frozen=True)
class Tree:
    """One side as the oracle sees it (paths relative to the root, never followed into links)."""

    files: dict[str, str]
    """path -> sha256 of the content."""
    links: dict[str, str]
    """path -> the link's text."""
    dirs: frozenset[str]
    escaping: dict[str, str]
    """link path -> where its whole chain resolves, for links that resolve outside the root."""
    temps: tuple[str, ...]
    """Visible names that match tether's temporary-file pattern."""

    def holders(self, digest: str) -> list[str]:
        return [p for p, d in self.files.items() if d == digest]

    def subtree(self, path: str) -> list[str]:
        """Files under (or at) ``path``."""
        return [p for p in self.files if p == path or p.startswith(path + "/")]


def _other(side: str) -> str:
    return SIDES[1] if side == SIDES[0] else SIDES[0]


def digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def read_tree(root: Path) -> Tree:
    """Walk ``root`` without following links (the host is local in tests, so both sides are)."""
    files: dict[str, str] = {}
    links: dict[str, str] = {}
    dirs: set[str] = set()
    escaping: dict[str, str] = {}
    temps: list[str] = []
    if not root.is_dir():
        return Tree(files, links, frozenset(), escaping, ())
    real_root = os.path.realpath(root)
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            full = os.path.join(dirpath, name)
            rel = os.path.relpath(full, root).replace(os.sep, "/")
            if TEMP_NAME.match(name):
                temps.append(rel)
            if os.path.islink(full):
                links[rel] = os.readlink(full)
                resolved = os.path.realpath(full)
                if resolved != real_root and not resolved.startswith(real_root + os.sep):
                    escaping[rel] = resolved
            elif os.path.isdir(full):
                dirs.add(rel)
            else:
                try:
                    files[rel] = digest(Path(full).read_bytes())
                except OSError:
                    continue  # gone between the listing and the read
    return Tree(files, links, frozenset(dirs), escaping, tuple(sorted(temps)))


@dataclass(frozen=True)
class Version:
    """One user write: where and when it was made."""

    side: str
    path: str
    step: int


@dataclass
class Model:
    """Every version still owed, and how many were written."""

    owed: dict[str, Version] = field(default_factory=dict)
    written: Counter[str] = field(default_factory=Counter)
    """Versions written, by side (the campaign's figure)."""
    agreed: set[tuple[str, str]] = field(default_factory=set)
    """(path, version) pairs both sides held when the last sync finished."""

    def settled(self, local: Tree, remote: Tree) -> None:
        """A sync finished: what both sides hold alike is the pair's agreed state."""
        self.agreed = {(p, d) for p, d in local.files.items() if remote.files.get(p) == d}

    def wrote(self, side: str, path: str, new: str, step: int) -> None:
        """A user on ``side`` wrote content ``new`` at ``path`` (call :meth:`replaced` first)."""
        self.owed[new] = Version(side, path, step)
        self.written[side] += 1

    def replaced(self, side: str, path: str, trees: dict[str, Tree]) -> None:
        """The user on ``side`` overwrites, deletes or renames over ``path`` (with its subtree):
        what it held there is superseded unless another path on either side holds it too."""
        tree = trees[side]
        doomed = tree.subtree(path)
        for p in doomed:
            d = tree.files[p]
            # Another holder keeps it owed; this side's doomed paths do not, nor does the other
            # side's copy at the same path (the sync overwrites it with the new content), nor a
            # replica on either side at a path where both sides agreed on it and the opposite
            # side has since changed or moved it away (the sync replaces or deletes it there).
            kept = any(
                not (
                    (s == side and q in doomed)
                    or (s != side and q == p)
                    or ((q, d) in self.agreed and trees[_other(s)].files.get(q) != d)
                )
                for s in SIDES
                for q in trees[s].holders(d)
            )
            if not kept:
                self.owed.pop(d, None)

    def retargeted(self, local: Tree, new_remote: Tree, step: int) -> None:
        """The pair now points at another remote folder: versions only the old folder held are
        left there; the new folder's files are the user's own."""
        for d in [d for d in self.owed if d not in local.files.values()]:
            del self.owed[d]
        self.agreed = set()  # a first sync with the new folder
        for path, d in new_remote.files.items():
            self.owed.setdefault(d, Version("remote", path, step))


def check(
    model: Model,
    before: dict[str, Tree],
    trees: dict[str, Tree],
    *,
    outside_expected: frozenset[str],
    outside_now: frozenset[str],
    settled: bool,
    problems: frozenset[str] = frozenset(),
) -> list[str]:
    """Every invariant the campaign holds tether to, as one line per violation (empty: all hold).

    Args:
        model: the versions still owed.
        before, trees: both sides as the sync found them (after the users' edits) and as it
            left them. An escaping link that was there before is the user's own doing.
        outside_expected, outside_now: what the folder escaping links point at should hold,
            and holds (tether must never write through a link).
        settled: the sync finished (not halted): both sides must then agree.
        problems: paths the sync reported it could not sync (left out of the agreement check).
    """
    out: list[str] = []
    everywhere = set(trees["local"].files.values()) | set(trees["remote"].files.values())
    for d, v in sorted(model.owed.items(), key=lambda kv: kv[1].step):
        if d not in everywhere:
            out.append(
                f"lost: the version written on {v.side} at {v.path} (step {v.step}) is on "
                "neither side, not even in a conflict copy"
            )
    for side in SIDES:
        for path, resolved in sorted(trees[side].escaping.items()):
            target = trees[side].links[path]
            if before[side].links.get(path) != target and not _moved_aside(
                before[side], path, target, resolved
            ):
                out.append(
                    f"escape: the sync left {side} link {path} -> {target}, which resolves "
                    f"outside the root ({resolved})"
                )
        out.extend(f"temp: {side} shows tether's temporary file {t}" for t in trees[side].temps)
    for name in sorted(outside_now - outside_expected):
        out.append(f"escape: tether wrote {name} into the folder outside both roots")
    if settled:
        out.extend(_disagreements(trees["local"], trees["remote"], problems))
    return out


def _moved_aside(before: Tree, path: str, target: str, resolved: str) -> bool:
    """The user's own escaping link, which a conflict moved aside with its folder (or alone):
    the same text stood at the name the copy had before, escaping to the same place. A rename
    within one folder keeps every ``..`` of the link's chain where it was, so it still points
    where the user pointed it; the sync made no escape (it never copies such a link across)."""
    origin = "/".join(CONFLICT_TAG.sub("", part) for part in path.split("/"))
    return (
        origin != path
        and before.links.get(origin) == target
        and before.escaping.get(origin) == resolved
    )


def _disagreements(local: Tree, remote: Tree, problems: frozenset[str]) -> list[str]:
    """Paths whose file or link differs between the sides, beyond the reported problems."""

    def excused(path: str) -> bool:
        return any(path == p or path.startswith(p + "/") for p in problems)

    out = []
    for kind, a, b in (("file", local.files, remote.files), ("link", local.links, remote.links)):
        for path in sorted(a.keys() | b.keys()):
            if a.get(path) != b.get(path) and not excused(path):
                out.append(
                    f"diverged: {kind} {path} differs after a finished sync "
                    f"(local {_short(a.get(path))}, remote {_short(b.get(path))})"
                )
    return out


def _short(value: str | None) -> str:
    if value is None:
        return "absent"
    return value[:12] if len(value) == 64 else repr(value)
