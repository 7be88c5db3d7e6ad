"""The agent's ``watch`` op: changes under a root in coalesced batches, from inotify (through
ctypes) on Linux, else by polling; the agent's own writes are not reported."""

from __future__ import annotations

import errno
import os
import select
import stat
import struct
import sys
import time

from agent_base import AgentError, Ignore, load_libc, log, root_of
from agent_own import is_own, signature
from tempnames import is_temp

IN_MODIFY = 0x2
IN_ATTRIB = 0x4
IN_CLOSE_WRITE = 0x8
IN_MOVED_FROM = 0x40
IN_MOVED_TO = 0x80
IN_CREATE = 0x100
IN_DELETE = 0x200
IN_DELETE_SELF = 0x400
IN_MOVE_SELF = 0x800
IN_Q_OVERFLOW = 0x4000
IN_IGNORED = 0x8000
IN_ONLYDIR = 0x1000000
IN_DONT_FOLLOW = 0x2000000
IN_ISDIR = 0x40000000
WATCH_MASK = (
    IN_MODIFY
    | IN_ATTRIB
    | IN_CLOSE_WRITE
    | IN_MOVED_FROM
    | IN_MOVED_TO
    | IN_CREATE
    | IN_DELETE
    | IN_DELETE_SELF
    | IN_MOVE_SELF
    | IN_ONLYDIR
    | IN_DONT_FOLLOW
)
_LIBC = []  # type: list


def inotify_lib():
    if not sys.platform.startswith("linux"):
        return None
    if not _LIBC:
        import ctypes

        lib = None
        try:
            lib = load_libc()
            lib.inotify_init1.argtypes = [ctypes.c_int]
            lib.inotify_add_watch.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_uint32]
            lib.inotify_rm_watch.argtypes = [ctypes.c_int, ctypes.c_int]
        except (OSError, AttributeError):
            lib = None
        _LIBC.append(lib)
    return _LIBC[0]


def last_errno():
    import ctypes

    return ctypes.get_errno()


class InotifyWatcher:
    backend = "inotify"

    def __init__(self, root, ignore):
        self.lib = inotify_lib()
        if self.lib is None:
            raise OSError(errno.ENOSYS, "no inotify")
        self.root = root
        self.ignore = ignore
        self.fd = self.lib.inotify_init1(os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
        if self.fd < 0:
            raise OSError(last_errno(), "inotify_init1 failed")
        self.wds = {}
        self.buffer = b""
        try:
            self.add_tree("")
        except BaseException:
            self.close()
            raise

    def add_tree(self, rel):
        full = os.path.join(self.root, rel) if rel else self.root
        wd = self.lib.inotify_add_watch(self.fd, os.fsencode(full), WATCH_MASK)
        if wd < 0:
            err = last_errno()
            if err in (errno.ENOENT, errno.ENOTDIR, errno.ELOOP, errno.EACCES):
                return
            raise OSError(err, "inotify_add_watch failed for %s" % full)
        self.wds[wd] = rel
        try:
            with os.scandir(full) as it:
                subdirs = []
                for d in it:
                    child = rel + "/" + d.name if rel else d.name
                    if d.is_dir(follow_symlinks=False) and not self.ignore(child, True):
                        subdirs.append(child)
        except OSError:
            return
        for child in subdirs:
            self.add_tree(child)

    def drop_tree(self, rel):
        for wd, path in list(self.wds.items()):
            if path == rel or path.startswith(rel + "/"):
                self.lib.inotify_rm_watch(self.fd, wd)
                del self.wds[wd]

    def read(self, timeout):
        """Return ([(path, is_dir)], rescan) for what happened, waiting up to ``timeout``."""
        ready, _, _ = select.select([self.fd], [], [], timeout)
        if not ready:
            return [], False
        try:
            self.buffer += os.read(self.fd, 1 << 16)
        except BlockingIOError:
            return [], False
        changes, rescan = [], False
        buf, pos = self.buffer, 0
        while len(buf) - pos >= 16:
            wd, mask, _cookie, length = struct.unpack_from("iIII", buf, pos)
            if len(buf) - pos < 16 + length:
                break
            name = buf[pos + 16 : pos + 16 + length].rstrip(b"\0")
            pos += 16 + length
            if mask & IN_Q_OVERFLOW:
                rescan = True
                continue
            base = self.wds.get(wd)
            if mask & IN_IGNORED:
                self.wds.pop(wd, None)
                continue
            if base is None:
                continue
            if mask & (IN_DELETE_SELF | IN_MOVE_SELF):
                if base == "":
                    rescan = True
                continue
            if not name:
                continue
            text = os.fsdecode(name)
            if is_temp(text):
                continue  # a staged file: five of the six events of every file a sync writes
            rel = base + "/" + text if base else text
            is_dir = bool(mask & IN_ISDIR)
            if is_dir and mask & IN_MOVED_FROM:
                self.drop_tree(rel)
            if is_dir and mask & (IN_CREATE | IN_MOVED_TO) and not self.ignore(rel, True):
                self.add_tree(rel)
            changes.append((rel, is_dir))
        self.buffer = buf[pos:]
        return changes, rescan

    def close(self):
        if self.fd is not None and self.fd >= 0:
            os.close(self.fd)
        self.fd = None


class PollWatcher:
    backend = "poll"

    def __init__(self, root, ignore, interval_s):
        self.root = root
        self.ignore = ignore
        self.interval_s = interval_s
        self.state = self.snapshot()

    def snapshot(self):
        state = {}
        stack = [("", self.root)]
        while stack:
            rel, full = stack.pop()
            try:
                it = os.scandir(full)
            except OSError:
                continue
            with it:
                for d in it:
                    child = rel + "/" + d.name if rel else d.name
                    try:
                        st = d.stat(follow_symlinks=False)
                    except OSError:
                        continue
                    is_dir = stat.S_ISDIR(st.st_mode)
                    if self.ignore(child, is_dir):
                        continue
                    state[child] = (signature(st), is_dir)
                    if is_dir:
                        stack.append((child, d.path))
        return state

    def read(self, timeout):
        time.sleep(min(timeout, self.interval_s))
        if not os.path.isdir(self.root):
            return [], True
        new = self.snapshot()
        old, self.state = self.state, new
        changes = [(p, v[1]) for p, v in new.items() if old.get(p) != v]
        changes += [(p, v[1]) for p, v in old.items() if p not in new]
        return changes, False

    def close(self):
        pass


def op_watch(req, emit, stop):
    root = root_of(req)
    ignore = Ignore(req.get("ignore"))
    coalesce_s = float(req.get("coalesce_ms", 20)) / 1000.0
    poll_s = float(req.get("poll_ms", 1000)) / 1000.0
    if not os.path.isdir(root):
        raise AgentError("not_found", "%s is not a directory" % root)
    real = os.path.realpath(root)
    watcher = None
    if not req.get("force_poll"):
        try:
            watcher = InotifyWatcher(root, ignore)
        except OSError as exc:
            log("inotify unavailable (%s); polling %s" % (exc, root))
    if watcher is None:
        watcher = PollWatcher(root, ignore, poll_s)
    emit({"event": "ready", "backend": watcher.backend}, None)
    try:
        pending = {}
        rescan = False
        first = last = 0.0
        while not stop.is_set():
            changes, overflow = watcher.read(coalesce_s if (pending or rescan) else 0.2)
            now = time.monotonic()
            if changes or overflow:
                if not pending and not rescan:
                    first = now
                last = now
                rescan = rescan or overflow
                for rel, is_dir in changes:
                    pending[rel] = is_dir
            if not (pending or rescan):
                continue
            if now - last < coalesce_s and now - first < 10 * coalesce_s + 0.2:
                continue
            paths = sorted(
                rel
                for rel, is_dir in pending.items()
                if not is_temp(rel.rpartition("/")[2])
                and not ignore(rel, is_dir)
                and not is_own(real, rel)
            )
            if paths or rescan:
                emit({"event": "changes", "paths": paths, "rescan": rescan}, None)
            pending, rescan = {}, False
    finally:
        watcher.close()
    return {"cancelled": True}
