"""What a pair *is*: its host and both roots, resolved. Its agreed state (the base) belongs to this.

A base records what both sides held after the last sync. Read against two other folders (the
``remote`` edited to point elsewhere, another host, the project moved), every file the new
folder lacks would look deleted there, and would be deleted here. So the state is stamped with
the identity it was agreed for, and a sync whose identity differs starts over as a first sync,
which never deletes.

Resolution stops where the network starts: the host is the destination as ``~/.ssh/config``
resolves it (``user@hostname:port``, plus the jump host), read from local files only, so the
identity of a pair is known even while its host is down; the remote root is expanded against the
home folder the host reports (``~``, relative paths), but symlinks there are not followed.
"""

from __future__ import annotations

import posixpath
from dataclasses import dataclass


@dataclass(frozen=True)
class PairIdentity:
    """The host and both roots of a pair, as resolved when it syncs."""

    host: str
    """``user@hostname:port`` (`` via JUMP`` when a ProxyJump is used)."""
    local: str
    """The local root, absolute, symlinks resolved."""
    remote: str
    """The remote root, absolute (``~`` expanded), normalized."""

    def key(self) -> str:
        """The identity as one string (what the state database stores)."""
        return f"{self.host}\n{self.local}\n{self.remote}"

    def describe(self) -> str:
        return f"{self.local} <-> {self.host}:{self.remote}"


def remote_root(remote: str, home: str | None) -> str:
    """``remote`` as the host resolves it: ``~`` and relative paths are under ``home`` (left as
    written when the home folder is unknown), then normalized (``a/./b/`` is ``a/b``)."""
    if home:
        if remote == "~" or remote.startswith("~/"):
            remote = home + remote[1:]
        elif not remote.startswith(("/", "~")):
            remote = posixpath.join(home, remote)
    return posixpath.normpath(remote)
