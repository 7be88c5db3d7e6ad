"""The one value type every sync layer speaks: an :class:`Entry` per path of a snapshot.

A snapshot is a flat ``dict[str, Entry]`` keyed by POSIX paths relative to the pair's root (the
root itself is not a key). Absence is ``None``: "nothing here". Entries are frozen; change one with
``dataclasses.replace``. The module is pure (no I/O) so reconcile and its tests can use it freely.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import Enum
from typing import TypeAlias


class EntryKind(str, Enum):
    """What a path is. The values are the wire names the remote agent uses."""

    FILE = "file"
    """A regular file; ``digest`` is the SHA-256 of its content."""
    DIRECTORY = "dir"
    """A directory; its children are separate entries."""
    SYMLINK = "symlink"
    """A symbolic link whose ``target`` stays inside the root."""
    UNTRACKED = "untracked"
    """Something tether does not sync (a socket, a device, a link escaping the root)."""
    PROBLEM = "problem"
    """A path that could not be read; ``problem`` says why. Never propagated, never deleted."""


EXECUTABLE_BITS = 0o111
_HEX64 = re.compile(r"[0-9a-f]{64}")


def is_sha256(text: object) -> bool:
    """Is ``text`` a sha256 as tether spells it (64 lowercase hex digits)?"""
    return isinstance(text, str) and len(text) == 64 and _HEX64.fullmatch(text) is not None


class InvalidEntry(ValueError):
    """An entry breaks a rule of its kind; the message names the path and the rule."""


@dataclass(frozen=True, slots=True)
class Entry:
    """One path on one side: its kind and the facts sync decisions are made from."""

    kind: EntryKind
    size: int = 0
    mtime_ns: int = 0
    mode: int = 0
    """Permission bits (``st_mode & 0o7777``); only the executable bits are synced."""
    digest: str = ""
    target: str = ""
    problem: str = ""

    @property
    def executable(self) -> bool:
        return bool(self.mode & EXECUTABLE_BITS)

    def same_content(self, other: Entry | None) -> bool:
        """True when syncing ``self`` over ``other`` would change nothing a user can see.

        Timestamps are ignored: two sides that hold the same bytes agree, whoever wrote them.
        Untracked entries agree when they say the same (an escaping link names its text): two
        different links there are a difference the sync must report, not hide.
        """
        if other is None or other.kind is not self.kind:
            return False
        if self.kind is EntryKind.FILE:
            return self.digest == other.digest and self.executable == other.executable
        if self.kind is EntryKind.SYMLINK:
            return self.target == other.target
        if self.kind is EntryKind.UNTRACKED:
            return self.problem == other.problem
        return self.kind is not EntryKind.PROBLEM

    def check_valid(self, path: str) -> None:
        """Raise :class:`InvalidEntry` if this entry cannot be what it claims to be."""
        if self.size < 0 or self.mtime_ns < 0:
            raise InvalidEntry(f"{path!r}: negative size or mtime")
        if self.kind is EntryKind.FILE:
            if not is_sha256(self.digest):
                raise InvalidEntry(f"{path!r}: a file needs a sha256 hex digest")
        elif self.digest:
            raise InvalidEntry(f"{path!r}: only files carry a digest")
        if self.kind is EntryKind.SYMLINK:
            if not self.target:
                raise InvalidEntry(f"{path!r}: a symlink needs a target")
        elif self.target:
            raise InvalidEntry(f"{path!r}: only symlinks carry a target")
        if self.kind is EntryKind.PROBLEM and not self.problem:
            raise InvalidEntry(f"{path!r}: a problem entry needs a message")


Snapshot: TypeAlias = dict[str, Entry]
