"""The agent's own writes: what it just wrote, created, renamed or deleted, remembered for
OWN_TTL_S so that its watcher does not report them back as changes."""

from __future__ import annotations

import os
import threading
import time

from agent_base import kind_of, lstat_at, open_parent, real_root

OWN_TTL_S = 10.0


OWN = {}  # type: dict
OWN_LOCK = threading.Lock()


def signature(st):
    if st is None:
        return None
    kind = kind_of(st)
    if kind == "dir":
        return (kind, st.st_ino, st.st_mode & 0o7777)
    return (kind, st.st_ino, st.st_size, st.st_mtime_ns, st.st_mode & 0o7777)


def note_own(root, rel, dfd, name, st=None):
    """Remember that we just wrote ``rel`` (as ``st`` shows it, else as it is now), so the
    watcher does not report our own write back as a change."""
    real = real_root(root)
    sig = signature(st if st is not None else lstat_at(dfd, name))
    with OWN_LOCK:
        OWN[(real, rel)] = (time.monotonic() + OWN_TTL_S, sig)
        if len(OWN) > 50000:
            now = time.monotonic()
            for key in [k for k, v in OWN.items() if v[0] < now]:
                del OWN[key]


def is_own(real_root, rel):
    with OWN_LOCK:
        rec = OWN.get((real_root, rel))
    if rec is None or rec[0] < time.monotonic():
        return False
    try:
        st = os.lstat(os.path.join(real_root, rel))
    except FileNotFoundError:
        st = None
    except OSError:
        return False
    return signature(st) == rec[1]


def note_created(root, created):
    for rel in created:
        dfd, name, _ = open_parent(root, rel, False)
        try:
            note_own(root, rel, dfd, name)
        finally:
            os.close(dfd)
