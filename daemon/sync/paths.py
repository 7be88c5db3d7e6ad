"""Relative paths as the sync engine accepts them: validated, never trusted.

Every path that crosses from the host (or from a snapshot on disk) passes :func:`check_relpath`
before anything uses it. Pure: no filesystem access.

Names are bytes on Linux. In memory and on the wire a path is ``str`` as Python's ``os`` module
gives it (``os.fsdecode``: each byte that is not part of valid UTF-8 becomes a lone surrogate
U+DC80..U+DCFF, "surrogateescape"), so ``os`` calls hand the same bytes back; JSON carries those
surrogates as ``\\udcXX`` escapes. Where text must be valid UTF-8 (SQLite, a terminal) the path goes
through :func:`to_stored` / :func:`shown`.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable

from ..errors import BadHostData


def check_relpath(path: object, *, origin: str = "the host", foreign_ok: bool = False) -> str:
    """Return ``path`` if it is a safe POSIX path relative to a root, else raise BadHostData.

    Refused: non-strings, empty, absolute, ``.``/``..`` components, empty components (``a//b``,
    trailing ``/``), NUL, backslashes (a Windows separator on the other side; ``foreign_ok``
    lets one through for an entry that is only reported, never synced), text that is not the
    ``os.fsdecode`` of any bytes (a surrogate no byte maps to, or an escaped byte that is part
    of valid UTF-8: two spellings of one name).
    """
    if not isinstance(path, str) or not path:
        raise BadHostData(f"{origin} sent an empty or non-text path: {path!r}")
    if "\x00" in path:
        raise BadHostData(f"{origin} sent a path containing NUL: {path!r}")
    if path.startswith("/"):
        raise BadHostData(f"{origin} sent an absolute path: {path!r}")
    if "\\" in path and not foreign_ok:
        raise BadHostData(f"{origin} sent a path with a backslash: {path!r}")
    if not is_fs_name(path):
        raise BadHostData(f"{origin} sent a path that names no bytes: {path!r}")
    for part in path.split("/"):
        if part in ("", ".", ".."):
            raise BadHostData(f"{origin} sent an unsafe path: {path!r}")
    return path


def is_fs_name(path: str) -> bool:
    """Is ``path`` exactly what ``os.fsdecode`` makes of some bytes (on a UTF-8 system)?"""
    if path.isascii():
        return True
    try:
        raw = path.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        return False
    return raw.decode("utf-8", "surrogateescape") == path


def shown(text: str) -> str:
    """``text`` fit for a terminal or a log: bytes that were not UTF-8 appear as ``\\xNN``."""
    if text.isascii():
        return text
    try:
        return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    except UnicodeEncodeError:
        return text.encode("utf-8", "backslashreplace").decode("utf-8")


def to_stored(path: str) -> str:
    """``path`` as valid UTF-8 text for SQLite: a backslash doubled, an escaped byte as
    ``\\xNN``; any other path is stored as it is. The code is prefix-free and character by
    character, so ``a/`` is a prefix of a path exactly when ``to_stored(a) + "/"`` is a prefix
    of its stored form (the subtree range queries rely on it)."""
    if path.isascii() and "\\" not in path:
        return path
    out = []
    for ch in path:
        if ch == "\\":
            out.append("\\\\")
        elif "\udc80" <= ch <= "\udcff":
            out.append(f"\\x{ord(ch) - 0xDC00:02x}")
        else:
            out.append(ch)
    return "".join(out)


def from_stored(text: str) -> str:
    """The inverse of :func:`to_stored` (a backslash starting neither escape, as a row stored
    before escaping may hold, stays itself)."""
    if "\\" not in text:
        return text
    return _STORED_ESCAPE.sub(_unescape, text)


_STORED_ESCAPE = re.compile(r"\\\\|\\x([89a-f][0-9a-f])")


def _unescape(m: re.Match[str]) -> str:
    return "\\" if m.group(1) is None else chr(0xDC00 + int(m.group(1), 16))


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


ESCAPING_LINK = "symlink escapes the root"


def escaping_link_problem(target: str) -> str:
    """Why a link whose text leads out of the root is untracked, naming that text: both sides
    say it alike, so two such links at one path agree only when their texts do, and a chain
    through it knows it leads out (see :func:`is_escaping_link`)."""
    return f"{ESCAPING_LINK} ({target})"


def is_escaping_link(problem: str) -> bool:
    """Whether an untracked entry's ``problem`` says it is a link leading out of the root."""
    return problem.startswith(ESCAPING_LINK + " (")


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
