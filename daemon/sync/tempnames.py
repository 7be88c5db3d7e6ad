"""The one definition of tether's temporary names, and of when a leftover one is stale.

Every file tether writes goes to a temporary name beside its target and is renamed into place.
The local agent, the host agent, the SFTP fallback and every scanner take the name from here, so
a scanner never lists a temporary as a user file and never hides a user file that merely looks
like one: only a name that matches :data:`TEMP_RE` exactly is a temporary.

The name says who writes it: ``.<name>.tether-<machine>-<pid>-<n>.tmp``, ``machine`` being 8 hex
digits of this boot of this machine (boot id and host name), ``pid`` the writing process. So the
next sync of a folder can tell a leftover of a killed writer (this machine, process gone) from a
file being written right now, with no lock and no registry. A pid reused after the writer died
only keeps a leftover longer; it never removes a live one. A temporary of another machine (a home
shared over NFS) or of an older tether (8 or 12 hex digits, no owner) is stale only once nothing
has written it for :data:`STALE_AGE_S`.

Shipped to the host inside the agent's verified bundle: Python >= 3.8, standard library only.
"""

from __future__ import annotations

import hashlib
import itertools
import os
import re
import socket
from collections.abc import Callable

TEMP_RE = re.compile(
    r"^\..+\.tether-(?:(?P<machine>[0-9a-f]{8})-(?P<pid>[1-9][0-9]{0,9})-[0-9a-f]{8}"
    r"|[0-9a-f]{8}|[0-9a-f]{12})\.tmp$"
)
"""A temporary: ours (machine, pid, counter), or an older tether's (8 or 12 hex digits)."""
NAME_BYTES = 120
"""The target's name is cut to this many bytes in its temporary's (file names stop at 255)."""
STALE_AGE_S = 24 * 3600
"""A temporary whose writer cannot be asked is stale after a day without a write."""

_COUNTER = itertools.count(int.from_bytes(os.urandom(4), "big"))
"""Temp-name suffixes: a random start, then one more per file. O_EXCL stands behind them."""
_MACHINE: list[str] = []


def machine_id() -> str:
    """8 hex digits naming this boot of this machine (Linux boot id, else none, and host name).

    The host name tells apart containers that share a kernel (and its boot id) but not pids.
    """
    if not _MACHINE:
        try:
            with open("/proc/sys/kernel/random/boot_id", "rb") as fh:
                boot = fh.read().strip()
        except OSError:
            boot = b""
        seed = boot + b"\0" + socket.gethostname().encode("utf-8", "surrogateescape")
        _MACHINE.append(hashlib.sha256(seed).hexdigest()[:8])
    return _MACHINE[0]


def temp_name(name: str) -> str:
    """The temporary to stage ``name`` under, in the same folder, owned by this process."""
    short = name.encode("utf-8", "surrogateescape")[:NAME_BYTES]
    name = short.decode("utf-8", "surrogateescape")
    return f".{name}.tether-{machine_id()}-{os.getpid()}-{next(_COUNTER) & 0xFFFFFFFF:08x}.tmp"


def is_temp(name: str) -> bool:
    """Whether ``name`` (one path component) is a tether temporary: never a user's file."""
    return name.endswith(".tmp") and TEMP_RE.match(name) is not None


_BARRIER_RE = re.compile(r"^\.flush\.tether-([0-9a-f]{8})\.tmp$")


def barrier_name(token: str) -> str:
    """The flush barrier for ``token`` (8 hex digits), written in a pair's local root so that
    its watcher reports everything saved before it. A temporary's name (the older 8-hex form):
    no scanner lists it, nothing syncs it, and one a killed daemon left is stale after a day."""
    return ".flush.tether-%s.tmp" % token


def barrier_token(name: str) -> str | None:
    """The token of the flush barrier called ``name``; None for any other name."""
    found = _BARRIER_RE.match(name)
    return found.group(1) if found else None


def is_stale(name: str, age_s: float, machine: str, alive: Callable[[int], bool]) -> bool:
    """Whether the temporary ``name``, last written ``age_s`` seconds ago, can go.

    Args:
        name: one path component; anything but an exact temporary is never stale.
        age_s: seconds since its last write (its mtime).
        machine: :func:`machine_id` of the machine asking.
        alive: ``alive(pid)``, whether that process of this machine may still write it.
    """
    match = TEMP_RE.match(name) if name.endswith(".tmp") else None
    if match is None:
        return False
    if match.group("machine") == machine:
        return not alive(int(match.group("pid")))
    return age_s >= STALE_AGE_S


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` exists on this machine and may still write: another user's
    counts; a zombie (killed, not yet reaped by its parent) does not."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError, ValueError):
        return True
    try:
        with open("/proc/%d/stat" % pid, "rb") as fh:
            state = fh.read().rpartition(b")")[2].split()[:1]
    except OSError:
        return True  # no /proc (macOS): it exists
    return state not in ([b"Z"], [b"X"])
