"""What every part of tether's remote agent shares: its error, safe relative paths, parent
directories opened without following a symlink, entries, ignore rules, its log. Stdlib only (the
agent runs on the host's ``python3`` >= 3.8); the op list is in :mod:`agent` (``agent.py``)."""

from __future__ import annotations

import errno
import os
import stat
import sys

import wire  # daemon/sync/wire.py, registered under this bare name by the bootstrap

CHUNK = wire.CHUNK
MAX_FRAME = wire.MAX_FRAME
RACY_NS = 2 * 10**9
O_DIR = os.O_RDONLY | os.O_DIRECTORY | getattr(os, "O_CLOEXEC", 0)
O_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)


class AgentError(Exception):
    def __init__(self, type_, message, path=None):
        Exception.__init__(self, message)
        self.type = type_
        self.message = message
        self.path = path


ERRNO_TYPES = {
    errno.ENOENT: "not_found",
    errno.EACCES: "permission",
    errno.EPERM: "permission",
    errno.ENOSPC: "no_space",
    errno.EDQUOT: "no_space",
    errno.EROFS: "read_only",
    errno.EEXIST: "exists",
    errno.ENOTEMPTY: "not_empty",
    errno.ENOTDIR: "exists",
    errno.EISDIR: "exists",
    errno.ELOOP: "invalid",
}


def cache_dir():
    return os.path.join(os.path.expanduser("~"), ".cache", "tether")


def check_rel(path):
    if not isinstance(path, str) or not path:
        raise AgentError("invalid", "empty or non-text path: %r" % (path,))
    if "\x00" in path or path.startswith("/") or "\\" in path or not fs_name(path):
        raise AgentError("invalid", "unsafe path: %r" % (path,), path)
    for part in path.split("/"):
        if part in ("", ".", ".."):
            raise AgentError("invalid", "unsafe path: %r" % (path,), path)
    return path


def root_of(req):
    root = req.get("root")
    if not isinstance(root, str) or not root or "\x00" in root:
        raise AgentError("invalid", "bad root: %r" % (root,))
    return os.path.expanduser(root)


def open_parent(root, rel, create):
    """Open the dir holding ``rel`` without following any symlink below ``root``.

    Returns (dir fd, last name, [relpaths of dirs created]). The caller closes the fd.
    """
    parts = rel.split("/")
    created = []
    fd = os.open(root, O_DIR)
    try:
        for i, part in enumerate(parts[:-1]):
            here = "/".join(parts[: i + 1])
            try:
                nfd = os.open(part, O_DIR | O_NOFOLLOW, dir_fd=fd)
            except FileNotFoundError:
                if not create:
                    raise
                try:
                    os.mkdir(part, 0o777, dir_fd=fd)
                    created.append(here)
                except FileExistsError:
                    pass
                nfd = os.open(part, O_DIR | O_NOFOLLOW, dir_fd=fd)
            except OSError as exc:
                if exc.errno == errno.ELOOP or (exc.errno == errno.ENOTDIR and is_link(fd, part)):
                    raise AgentError(
                        "invalid", "%s is a symlink; refusing to go through it" % here, here
                    ) from None
                if exc.errno == errno.ENOTDIR:
                    raise AgentError("exists", "%s is not a directory" % here, here) from None
                raise
            os.close(fd)
            fd = nfd
    except BaseException:
        os.close(fd)
        raise
    return fd, parts[-1], created


def is_link(dfd, name):
    try:
        return stat.S_ISLNK(os.stat(name, dir_fd=dfd, follow_symlinks=False).st_mode)
    except OSError:
        return False


def lstat_at(dfd, name):
    try:
        return os.stat(name, dir_fd=dfd, follow_symlinks=False)
    except FileNotFoundError:
        return None


def kind_of(st):
    m = st.st_mode
    if stat.S_ISREG(m):
        return "file"
    if stat.S_ISDIR(m):
        return "dir"
    if stat.S_ISLNK(m):
        return "symlink"
    return "untracked"


def random_hex(nbytes):
    return os.urandom(nbytes).hex()


def entry_of(st, digest="", target=""):
    kind = kind_of(st)
    mode = st.st_mode & 0o7777
    if kind == "file":
        return ["file", st.st_size, st.st_mtime_ns, mode, digest, "", ""]
    if kind == "symlink":
        return ["symlink", st.st_size, st.st_mtime_ns, mode, "", target, ""]
    return [kind, 0, st.st_mtime_ns, mode, "", "", ""]


REALPATHS = {}  # type: dict


def real_root(root):
    """realpath(root), memoized (a batch of writes asks for it once per file)."""
    real = REALPATHS.get(root)
    if real is None:
        real = REALPATHS[root] = os.path.realpath(root)
    return real


def Ignore(rules):
    """The request's ignore rules, matched as :class:`wire.WireRules` says."""
    try:
        return wire.WireRules(rules)
    except ValueError as exc:
        raise AgentError("invalid", str(exc)) from None


def fs_name(text):
    """Is ``text`` what os.fsdecode makes of some bytes? (Names are bytes: one that is not UTF-8
    travels with its odd bytes as lone surrogates, U+DC80..U+DCFF, and only so.)"""
    try:
        return text.encode("utf-8", "surrogateescape").decode("utf-8", "surrogateescape") == text
    except UnicodeEncodeError:
        return False


def load_libc():
    """The C library, without ctypes.util.find_library (it spawns ldconfig: slow)."""
    import ctypes  # only runs and watches need it: every start would pay for it at the top

    try:
        lib = ctypes.CDLL(None, use_errno=True)
        lib.inotify_init1  # noqa: B018 - probe that the symbols are reachable this way
        return lib
    except (OSError, AttributeError):
        from ctypes.util import find_library  # not at the top: ~40 ms of every start

        return ctypes.CDLL(find_library("c") or "libc.so.6", use_errno=True)


def log(message):
    try:
        sys.stderr.write("tether-agent: %s\n" % message)
        sys.stderr.flush()
    except (OSError, ValueError):
        pass


def error_reply(rid, exc):
    if isinstance(exc, AgentError):
        err = {"type": exc.type, "message": exc.message, "path": exc.path}
    elif isinstance(exc, OSError):
        message = exc.strerror or str(exc)
        if exc.filename:
            message = "%s: %s" % (exc.filename, message)
        err = {"type": ERRNO_TYPES.get(exc.errno, "os"), "message": message, "path": None}
    elif isinstance(exc, (KeyError, ValueError, TypeError)):
        err = {"type": "invalid", "message": "bad request: %r" % (exc,), "path": None}
    else:
        import traceback  # a bug's report only

        err = {"type": "internal", "message": traceback.format_exc(limit=5), "path": None}
    return {"id": rid, "ok": False, "error": err}
