"""Relative paths as the sync engine accepts them: validated, never trusted.

Every path that crosses from the host (or from a snapshot on disk) passes :func:`check_relpath`
before anything uses it. Pure: no filesystem access.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Iterable

from ..errors import BadHostData


def check_relpath(path: object, *, origin: str = "the host") -> str:
    """Return ``path`` if it is a safe POSIX path relative to a root, else raise BadHostData.

    Refused: non-strings, empty, absolute, ``.``/``..`` components, empty components (``a//b``,
    trailing ``/``), NUL, backslashes (a Windows separator on the other side).
    """
    if not isinstance(path, str) or not path:
        raise BadHostData(f"{origin} sent an empty or non-text path: {path!r}")
    if "\x00" in path:
        raise BadHostData(f"{origin} sent a path containing NUL: {path!r}")
    if path.startswith("/"):
        raise BadHostData(f"{origin} sent an absolute path: {path!r}")
    if "\\" in path:
        raise BadHostData(f"{origin} sent a path with a backslash: {path!r}")
    for part in path.split("/"):
        if part in ("", ".", ".."):
            raise BadHostData(f"{origin} sent an unsafe path: {path!r}")
    return path


def parent_of(path: str) -> str:
    """``a/b/c`` → ``a/b``; a top-level path's parent is the root, ``""``."""
    return path.rpartition("/")[0]


def is_within(path: str, root: str) -> bool:
    """True when ``path`` is ``root`` or lies below it (``root == ""`` is the pair's root)."""
    return not root or path == root or path.startswith(root + "/")


def fold(path: str) -> str:
    """The key under which a case-insensitive, normalizing filesystem (macOS) sees ``path``."""
    return unicodedata.normalize("NFC", path).casefold()


def case_collisions(paths: Iterable[str]) -> list[tuple[str, str]]:
    """Pairs of distinct paths that would land on the same name on a case-insensitive side."""
    seen: dict[str, str] = {}
    clashes: list[tuple[str, str]] = []
    for path in sorted(paths):
        key = fold(path)
        if key in seen and seen[key] != path:
            clashes.append((seen[key], path))
        else:
            seen[key] = path
    return clashes


def symlink_stays_inside(link_path: str, target: str) -> bool:
    """True when a relative link at ``link_path`` pointing to ``target`` resolves inside the root.

    Absolute targets always escape (the other side's absolute layout differs).
    """
    if not target or target.startswith("/") or "\x00" in target:
        return False
    depth = len(parent_of(link_path).split("/")) if parent_of(link_path) else 0
    for part in target.split("/"):
        if part == "..":
            depth -= 1
            if depth < 0:
                return False
        elif part not in ("", "."):
            depth += 1
    return True
