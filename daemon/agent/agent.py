"""tether's remote agent: one stdlib-only program that tether uploads to a host and drives over
one SSH exec channel (stdin/stdout). Runs on the host's ``python3`` >= 3.8; imports nothing from
tether. The client is :mod:`tether.transport.agent_client`.

Wire format
    Every frame, both ways: a 4-byte big-endian length N, then N bytes of UTF-8 JSON (an object).
    If the object has ``"blob": B`` (an int), B raw bytes follow at once.
    Request: ``{"id": int, "op": str, ...args}``. Final reply: ``{"id", "ok": true, ...}`` or
    ``{"id", "ok": false, "error": {"type", "message", "path"}}``. Streaming ops send
    ``{"id", "event": str, ...}`` frames before their final reply.
    Plain ops run one after another on the main thread, in the order they arrive (the client may
    pipeline). ``watch``, ``attach``, ``kill`` and ``tcp_check`` run in threads, and so do up to
    two ``write_many`` at once: their replies may pass later requests' (a client that needs a
    batch landed before its next op waits for its reply). stdout is locked.
    stdin EOF ends the agent; runs it started keep going (their supervisor is detached) for as
    long as the client that started them said they may go on with no one attached (see exec).

Error types
    ``not_found`` ``permission`` ``no_space`` ``read_only`` ``exists`` ``not_empty``
    ``changed`` (the ``expect`` given does not describe what is there now: rescan, never clobber),
    ``corrupt`` (received content does not match its digest), ``invalid`` (bad argument, unsafe
    path, a symlink in a parent component), ``os`` (any other OSError), ``internal`` (a bug).

Entries
    ``[kind, size, mtime_ns, mode, digest, target, problem]``; kind is one of ``file`` ``dir``
    ``symlink`` ``untracked`` ``problem``; mode = st_mode & 0o7777; digest = sha256 hex for files;
    target = link text for symlinks. Dirs report size 0. Paths are POSIX, relative to the root.
    ``expect`` arguments are an entry (what the client believes is there) or null (absent):
    kind must match; files: size and executable bits must match and the content is hashed
    and compared (whatever the mtime says); symlinks: target must match.

Ops (``root`` may start with ``~``; every relative path is validated: no absolute, ``..``,
``.``, empty part, NUL or backslash; nothing is followed through a symlink in a parent component:
parents are opened one by one with O_NOFOLLOW and every change goes through that dir fd)
    hello {}                        -> {version, python, platform, home, pid}
    scan {root, ignore, paths?, racy_ms?} -> {exists, is_dir, entries: {path: entry}, stats}
        ignore: [[regex, ignored], ...], last match wins; dirs tested as "path/" (an ignored dir
        is pruned), other kinds as "path". paths: only these subtrees (their ancestor dirs are
        included too, so every entry's parent is present). Our own temp files are never listed.
        stats: {files, hashed, hashed_bytes}: hashed counts files actually read
        (the digest cache, ~/.cache/tether/digests/<sha256 of realpath(root)>.json, keyed by
        size, mtime_ns, ino and ctime_ns, spares the rest; entries changed within RACY_NS of the
        scan, or within racy_ms when given, are not cached; caches and last scans no agent used
        for 30 days are removed). Names are bytes: one that is not valid UTF-8 is sent as
        os.fsdecode gives it (each odd byte a lone surrogate, JSON's \\udcXX); paths sent to the
        agent are read the same way. A name with a backslash is listed as ``untracked``.
        delta (full scans only): the reply also carries ``token``, naming
        this snapshot (kept in ~/.cache/tether/scans/); with ``since`` equal to the token kept
        there (same rules), the reply has ``since``, ``changed: {path: entry}`` and
        ``removed: [path]`` instead of ``entries``.
    read {root, path}               -> files <= CHUNK: one reply {size, mtime_ns, mode, digest} with
        the content as its blob (larger ones: ``invalid``, read them in ranges). The digest is of
        the bytes sent.
    read {root, path, offset, length, holes?} -> {size, mtime_ns, mode, segs}: at most CHUNK bytes
        of the file from offset; segs: [[start, n], ...] where the data lies in that range
        (relative to offset, back to back in the blob); the rest of the range is zeros. With
        holes, holes (SEEK_DATA/SEEK_HOLE) are left out of the blob; otherwise segs is one run.
        Reading a big file is the client's loop over ranges: it keeps a fixed window of them in
        flight and hashes what it gets, so neither end holds more than that window.
    signature {root, path, block}   -> {size, mtime_ns, mode, block, count}, blob: per full block,
        the first 16 bytes of its sha256 and its first 16 bytes (the delta signature; the short
        last block is not signed). See daemon/sync/blocks.py.
    digest {root, path, length}   -> {size, mtime_ns, digest}: the sha256 of the file's first
        ``length`` bytes (is the host's file the old one with bytes appended?).
    write {root, path, mode, mtime_ns, digest, expect, blob, fsync?}  -> {entry}
        Content goes to a temporary (:mod:`tempnames`) beside the target, its sha256 is checked
        against digest, expect is checked, mode and mtime are set, then os.replace. Missing parent
        dirs are created (never the root itself: a missing root is ``not_found``). Big files:
        several writes with ``transfer`` (an id of the client's),
        ``offset`` and ``final: false``, then the last one with ``final: true`` (default) and the
        metadata. A failed chunk removes the temp; later chunks of it fail ``invalid``;
        ``abort: true`` drops a transfer. A chunk's ``segs`` say what it holds:
        [[-1, n]] n bytes of the blob, [[-2, n]] a hole of n zero bytes (seeked over: a sparse
        file stays sparse), [[offset, n]] n bytes copied from the target as it was when the
        transfer began (``base: true`` on its first chunk; a delta). Default: the blob. Offsets
        count the file's bytes so far, holes and copies included; the digest covers them all.
    write_many {root, files: [{path, size, mode, mtime_ns, digest, expect, fsync?}], blob}
        -> {results: [{entry} | {error}]}: many whole files in one frame, their bodies back to back
        in the blob (sizes must add up to it); each is staged, checked and renamed as ``write``
        does, and fails alone. Parent dir fds are opened once per batch.
    mkdir {root, path, mode?, expect}    -> {entry}   (expect a dir: no-op)
    symlink {root, path, target, expect} -> {entry}   (temp link + os.replace)
    delete {root, path, expect}          -> {}        (a dir only when empty: else not_empty)
    rename {root, src, dst, expect}      -> {entry}   (expect is about src; an existing dst: exists)
    chmod {root, path, mode, expect}     -> {entry}
    probe {path, create}            -> {exists, created, is_dir, writable, free_bytes}
    tcp_check {host, port, timeout} -> {reachable, reason}
    exec {cmd | argv, cwd?, env?, venv?, pythonpath?, run_id?, orphan_s?} -> {run_id, pid, pgid}
        The command (cmd through /bin/sh -c) runs in its own session, stdout+stderr to
        ~/.cache/tether/runs/<run_id>/output.log, under a detached supervisor (a child
        forked off the agent, then re-parented) that writes status.json when it ends, so the
        outcome survives the agent. venv: <venv>/bin goes first on PATH and VIRTUAL_ENV is set.
        pythonpath (else $TETHER_PYTHONPATH) goes first on PYTHONPATH.
        No run is orphaned: an ``attach`` holds a shared lock on the run's ``attached`` file for
        as long as it streams, and the kernel drops it when that agent ends (its client killed,
        the link gone). Once nobody has held it for orphan_s seconds (default ORPHAN_S), the
        supervisor stops the process group (SIGTERM, SIGKILL after STOP_GRACE_S) and the run
        ends with reason "orphaned". A client that reattaches within orphan_s keeps it alive.
    attach {run_id, offset}         -> ``event: "output"`` frames (blob: log bytes from offset on),
        then {exit_code, signal, duration_s, reason, offset, lost} once the run has ended
        (signal is a name such as "SIGTERM"; reason: "exited", "stopped" (a kill asked for it)
        or "orphaned"; lost: the supervisor vanished without writing a status).
    kill {run_id, signal, grace_s}  -> {signalled, escalated, gone}: the whole process group gets
        the signal (TERM, INT, HUP or KILL); if it is still there after grace_s, SIGKILL.
    runs {}                         -> {runs: [{run_id, pid, pgid, started_ns, running, reason,
        ...}]}: running while no status was written and the supervisor or the group is alive.
    watch {root, ignore, coalesce_ms?, poll_ms?} -> ``event: "ready" {backend}`` once watching,
        then ``event: "changes" {paths, rescan}`` batches (rescan: the watcher lost track, rescan
        everything). A new directory is reported as itself: rescan its subtree. inotify (via
        ctypes) on Linux, polling elsewhere (or with force_poll). Own writes are suppressed:
        a path the agent itself wrote, created, renamed or deleted in the last OWN_TTL_S seconds
        is not reported while it still holds exactly what the agent left there.
    cancel {target}  (alias: unwatch {watch_id}) -> {}: ends a watch or attach, whose final
        reply is then {cancelled: true}.
    reports {roots: [{kind, path, markers}]} -> {roots: [{kind, path, exists, error, reports}]}:
        the report folders under each root, in one reply. With markers, a folder holding one of
        those files (a regular file) is a report, searched down to REPORT_DEPTH levels, not
        inside a report; without, every direct child folder is one. Each report: {folder
        (relative to its root), name (``report_name`` from its config.json, else ""),
        mtime_ns (newest file), size, files}; tether temporaries and symlinks are not counted
        and nothing is followed through a symlink. A root that is missing or unreadable has
        ``error: {type, message}`` and no reports; the other roots are still listed.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import os
import re
import select
import signal
import stat
import struct
import sys
import threading
import time

# The bundle's other modules, registered under these bare names by the bootstrap from the
# source it verified: block signatures and holes found and hashed as tether finds them,
# temporary names, wire numbers.
import blocks  # daemon/sync/blocks.py
import sparse  # daemon/sync/sparse.py
import tempnames  # daemon/sync/tempnames.py
import wire  # daemon/sync/wire.py

VERSION = wire.PROTOCOL_VERSION
CHUNK = wire.CHUNK
MAX_FRAME = wire.MAX_FRAME
RACY_NS = 2 * 10**9
OWN_TTL_S = 10.0
RUN_ID_RE = re.compile(r"^[A-Za-z0-9._-]{1,80}$")
ORPHAN_S = 120.0
STOP_GRACE_S = 5.0
SUPERVISE_POLL_S = 0.2
SIGNALS = {"TERM": signal.SIGTERM, "KILL": signal.SIGKILL, "INT": signal.SIGINT}
if hasattr(signal, "SIGHUP"):
    SIGNALS["HUP"] = signal.SIGHUP
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


# ---------------------------------------------------------------- paths


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


temp_name = tempnames.temp_name
is_temp = tempnames.is_temp


def drop_if_stale(full, name, st):
    """Remove ``full``, a temporary of ours, if its writer is gone (:mod:`tempnames` says how
    that is known): a transfer killed midway leaves nothing behind past the next scan."""
    age_s = time.time() - st.st_mtime
    if stat.S_ISDIR(st.st_mode) or not tempnames.is_stale(
        name, age_s, tempnames.machine_id(), tempnames.pid_alive
    ):
        return
    try:
        os.unlink(full)
    except OSError as exc:
        log("cannot remove the stale temporary %s: %s" % (full, exc.strerror))


def random_hex(nbytes):
    return os.urandom(nbytes).hex()


def hash_fd(fd):
    h = hashlib.sha256()
    while True:
        data = os.read(fd, CHUNK)
        if not data:
            return h.hexdigest()
        h.update(data)


def read_full(fd, n):
    parts = []
    while n > 0:
        data = os.read(fd, n)
        if not data:
            break
        parts.append(data)
        n -= len(data)
    return b"".join(parts)


def entry_of(st, digest="", target=""):
    kind = kind_of(st)
    mode = st.st_mode & 0o7777
    if kind == "file":
        return ["file", st.st_size, st.st_mtime_ns, mode, digest, "", ""]
    if kind == "symlink":
        return ["symlink", st.st_size, st.st_mtime_ns, mode, "", target, ""]
    return [kind, 0, st.st_mtime_ns, mode, "", "", ""]


def entry_at(dfd, name, digest=None):
    st = os.stat(name, dir_fd=dfd, follow_symlinks=False)
    kind = kind_of(st)
    if kind == "file" and digest is None:
        digest = digest_at(dfd, name, None, "")
    target = os.readlink(name, dir_fd=dfd) if kind == "symlink" else ""
    return entry_of(st, digest or "", target)


def check_expect(dfd, name, expect, path, root=None):
    """Raise ``changed`` unless ``expect`` describes what is at ``name``; returns a known digest.

    ``root``: where ``path`` lives, to take a file's digest from the root's digest cache when
    the cache holds it for exactly this file as it stands (see :func:`cached_digest`)."""
    st = lstat_at(dfd, name)
    if expect is None:
        if st is not None:
            raise AgentError("changed", "%s exists (expected absent)" % path, path)
        return None
    if not isinstance(expect, list) or len(expect) != 7:
        raise AgentError("invalid", "expect must be an entry or null", path)
    if st is None:
        raise AgentError("changed", "%s is gone (expected a %s)" % (path, expect[0]), path)
    kind = kind_of(st)
    if kind != expect[0]:
        raise AgentError("changed", "%s is a %s, not a %s" % (path, kind, expect[0]), path)
    if kind == "file":
        if st.st_size != expect[1] or (st.st_mode & 0o111) != (int(expect[3]) & 0o111):
            raise AgentError("changed", "%s changed since it was scanned" % path, path)
        # Hashed even when the mtime matches: a same-size rewrite with its old mtime put back
        # (``touch -r``, some editors and tools) looks unchanged to size and mtime alone; a
        # rewrite changes the ctime, which the cache's key holds.
        digest = digest_at(dfd, name, root, path)
        if digest != expect[4]:
            raise AgentError("changed", "%s changed since it was scanned" % path, path)
        return digest
    if kind == "symlink" and os.readlink(name, dir_fd=dfd) != expect[5]:
        raise AgentError("changed", "%s points elsewhere now" % path, path)
    return None


# ---------------------------------------------------------------- own writes

LANDED_CACHE_MIN = 1 << 20
"""Files at least this big that the agent lands go into the digest cache at once."""


def remember_landed(root, rel, dfd, name, st, digest):
    """Put a big file this agent just renamed into place (``st``: its stat before the rename)
    into the root's digest cache, so the next scan does not read all of it again.

    The scan keeps a file it hashes out of the cache while its mtime or ctime is recent (the
    racy rule: a write in the same clock tick as the hash would leave the stat as it was). Here
    the content is known without a hash, and the mtime is not the landing's but the one tether
    set, the source's: it is taken only when that is older than the rename by the racy window.
    Any later write sets the mtime to its own time, a move or a copy brings another inode, and
    a rewrite in place that also puts this mtime back within the tick of the rename is what a
    second copy of the same source would do; a kernel with fine-grained ctimes on queried
    inodes (Linux 6.13+) tells even that apart, since the stat below queries it.
    """
    if st.st_size < LANDED_CACHE_MIN:
        return
    now = lstat_at(dfd, name)  # after the rename, which set the ctime
    if (
        now is None
        or not stat.S_ISREG(now.st_mode)
        or (now.st_ino, now.st_size, now.st_mtime_ns) != (st.st_ino, st.st_size, st.st_mtime_ns)
        or now.st_ctime_ns - now.st_mtime_ns < RACY_NS
    ):
        return
    cache = DigestCache.for_root(real_root(root))
    cache.data[rel] = [now.st_size, now.st_mtime_ns, now.st_ino, now.st_ctime_ns, digest]
    cache.dirty = True


# ---------------------------------------------------------------- own writes (for watch)

OWN = {}  # type: dict
OWN_LOCK = threading.Lock()


def signature(st):
    if st is None:
        return None
    kind = kind_of(st)
    if kind == "dir":
        return (kind, st.st_ino, st.st_mode & 0o7777)
    return (kind, st.st_ino, st.st_size, st.st_mtime_ns, st.st_mode & 0o7777)


REALPATHS = {}  # type: dict


def digest_at(dfd, name, root, rel):
    """The sha256 of the file at ``name``: the one the scan cached for ``rel`` when the open
    file is exactly the one it hashed, else read now. (The stat is taken on the open file, not
    the path: on NFS an open revalidates what a path's stat may serve from a cache.)"""
    fd = os.open(name, os.O_RDONLY | O_NOFOLLOW | getattr(os, "O_NONBLOCK", 0), dir_fd=dfd)
    try:
        return cached_digest(root, rel, os.fstat(fd)) or hash_fd(fd)
    finally:
        os.close(fd)


def cached_digest(root, rel, st):
    """The digest the scan cached for ``rel`` if ``st`` is exactly the file it hashed, or None.

    As safe as the scan's own use of the cache: an entry is kept only when the file's mtime and
    ctime were older than the racy window when it was hashed, so any write since then has
    moved the ctime (or size, or inode) in ``st``. Only a cache this process already loaded is
    asked (a scan of the root ran first); nothing is read from disk for it.
    """
    cache = DIGEST_CACHES.get(real_root(root)) if root is not None else None
    got = cache.data.get(rel) if cache is not None else None
    key = [st.st_size, st.st_mtime_ns, st.st_ino, st.st_ctime_ns]
    if isinstance(got, list) and len(got) == 5 and got[:4] == key and isinstance(got[4], str):
        return got[4] or None
    return None


def real_root(root):
    """realpath(root), memoized (a batch of writes asks for it once per file)."""
    real = REALPATHS.get(root)
    if real is None:
        real = REALPATHS[root] = os.path.realpath(root)
    return real


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


# ---------------------------------------------------------------- ignore rules and scan


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


FOREIGN = wire.FOREIGN_REASON


DIGEST_CACHES = {}  # type: dict
CACHE_SAVE_EVERY_S = 30.0
CACHE_KEEP_S = 30 * 86400
"""A root's digest cache and last scan that no agent used for this long are removed: a root
deleted or moved on the host leaves them behind (~10 MB each at 100,000 files). Losing one costs
a full hash of that root once, nothing more."""
caches_pruned = False


def mark_used(path):
    """A cache file's mtime says when it was last used, read or written (see prune_caches)."""
    with contextlib.suppress(OSError):
        os.utime(path)


def prune_caches(keep):
    """Once per agent: remove digest caches and last scans unused for CACHE_KEEP_S, except the
    root ``keep`` (a key) whose scan asked: its last scan is read only after the prune."""
    global caches_pruned
    if caches_pruned:
        return
    caches_pruned = True
    now = time.time()
    for sub in ("digests", "scans"):
        folder = os.path.join(cache_dir(), sub)
        try:
            names = os.listdir(folder)
        except OSError:
            continue
        for name in names:
            path = os.path.join(folder, name)
            with contextlib.suppress(OSError):
                if name != keep + ".json" and now - os.lstat(path).st_mtime > CACHE_KEEP_S:
                    os.unlink(path)


class DigestCache:
    """path -> [size, mtime_ns, ino, ctime_ns, digest], one JSON file per root, kept in memory."""

    def __init__(self, real_root):
        self.key = hashlib.sha256(real_root.encode("utf-8", "surrogateescape")).hexdigest()
        self.file = os.path.join(cache_dir(), "digests", self.key + ".json")
        self.data = {}
        self.dirty = False
        self.saved_at = 0.0

    @classmethod
    def for_root(cls, real_root):
        cache = DIGEST_CACHES.get(real_root)
        if cache is None:
            cache = cls(real_root)
            try:
                with open(cache.file, "rb") as fh:
                    data = json.loads(fh.read().decode("utf-8"))
                if isinstance(data, dict):
                    cache.data = data
                mark_used(cache.file)
            except (OSError, ValueError):
                pass
            DIGEST_CACHES[real_root] = cache
            prune_caches(cache.key)
        return cache

    def save(self, force=False):
        """Write the cache file, at most every CACHE_SAVE_EVERY_S unless forced (on exit).

        A long-lived agent (the daemon's) scans after nearly every save; rewriting the whole
        file each time (megabytes at 100k files, and a rename ext4 turns into writeback) would
        put disk latency on every sync. Losing the unsaved tail costs a rehash, nothing more.
        """
        if not self.dirty or (not force and time.monotonic() - self.saved_at < CACHE_SAVE_EVERY_S):
            return
        self.saved_at = time.monotonic()
        folder = os.path.dirname(self.file)
        try:
            os.makedirs(folder, 0o700, exist_ok=True)
            tmp = os.path.join(folder, temp_name(self.key + ".json"))
            with open(tmp, "wb") as fh:
                fh.write(json.dumps(self.data, separators=(",", ":")).encode("utf-8"))
            os.replace(tmp, self.file)
            self.dirty = False
        except OSError as exc:
            log("cannot save the digest cache: %s" % exc)


class Scanner:
    def __init__(self, root, ignore, cache, racy_ns):
        self.root = root
        self.ignore = ignore
        self.cache = cache
        self.entries = {}
        self.seen = set()
        self.stats = {"files": 0, "hashed": 0, "hashed_bytes": 0}
        self.horizon = time.time_ns() - racy_ns

    def add(self, rel, full, st):
        kind = kind_of(st)
        if kind == "file":
            self.stats["files"] += 1
            self.entries[rel] = self.file_entry(rel, full, st)
        elif kind == "symlink":
            try:
                target = os.readlink(full)
            except OSError as exc:
                self.entries[rel] = problem(st, "cannot read link: %s" % exc.strerror)
                return
            if not target:
                self.entries[rel] = [
                    "untracked",
                    0,
                    st.st_mtime_ns,
                    st.st_mode & 0o7777,
                    "",
                    "",
                    "",
                ]
                return
            self.entries[rel] = entry_of(st, target=target)
        else:
            self.entries[rel] = entry_of(st)

    def file_entry(self, rel, full, st):
        key = [st.st_size, st.st_mtime_ns, st.st_ino, st.st_ctime_ns]
        cached = self.cache.data.get(rel)
        self.seen.add(rel)
        if isinstance(cached, list) and len(cached) == 5 and cached[:4] == key:
            return entry_of(st, digest=cached[4])
        try:
            fd = os.open(full, os.O_RDONLY | O_NOFOLLOW | getattr(os, "O_NONBLOCK", 0))
        except OSError as exc:
            return problem(st, "cannot read: %s" % exc.strerror)
        try:
            before = os.fstat(fd)
            if not stat.S_ISREG(before.st_mode):
                return problem(st, "changed while scanned")
            digest = hash_fd(fd)
            after = os.fstat(fd)
        except OSError as exc:
            return problem(st, "cannot read: %s" % exc.strerror)
        finally:
            os.close(fd)
        self.stats["hashed"] += 1
        self.stats["hashed_bytes"] += after.st_size
        key = [after.st_size, after.st_mtime_ns, after.st_ino, after.st_ctime_ns]
        stable = key == [before.st_size, before.st_mtime_ns, before.st_ino, before.st_ctime_ns]
        if stable and max(after.st_mtime_ns, after.st_ctime_ns) < self.horizon:
            self.cache.data[rel] = [*key, digest]
            self.cache.dirty = True
        elif rel in self.cache.data:
            del self.cache.data[rel]
            self.cache.dirty = True
        return entry_of(after, digest=digest)

    def walk(self, rel, full):
        try:
            it = os.scandir(full)
        except OSError as exc:
            if rel:
                try:
                    st = os.lstat(full)
                    self.entries[rel] = problem(st, "cannot list: %s" % exc.strerror)
                except OSError:
                    self.entries.pop(rel, None)
            return
        subdirs = []
        with it:
            for d in it:
                name = d.name
                child = rel + "/" + name if rel else name
                try:
                    st = d.stat(follow_symlinks=False)
                except OSError:
                    continue
                if is_temp(name):
                    drop_if_stale(d.path, name, st)
                    continue
                is_dir = stat.S_ISDIR(st.st_mode)
                if self.ignore(child, is_dir):
                    continue
                if wire.foreign_name(name) is not None:
                    self.entries[child] = ["untracked", 0, st.st_mtime_ns, 0, "", "", FOREIGN]
                    continue
                self.add(child, d.path, st)
                if is_dir:
                    subdirs.append((child, d.path))
        for child, path in subdirs:
            self.walk(child, path)

    def subtree(self, rel):
        parts = rel.split("/")
        full = self.root
        for i, part in enumerate(parts):
            here = "/".join(parts[: i + 1])
            full = os.path.join(full, part)
            if is_temp(part):
                return
            try:
                st = os.lstat(full)
            except OSError:
                return
            is_dir = stat.S_ISDIR(st.st_mode)
            if self.ignore(here, is_dir):
                return
            last = i == len(parts) - 1
            if not last and not is_dir:
                return
            if here not in self.entries:
                self.add(here, full, st)
            if last and is_dir:
                self.walk(here, full)

    def forget_missing(self, prefixes):
        for rel in list(self.cache.data):
            if rel in self.seen:
                continue
            if prefixes is None or any(rel == p or rel.startswith(p + "/") for p in prefixes):
                del self.cache.data[rel]
                self.cache.dirty = True


def problem(st, message):
    return ["problem", 0, st.st_mtime_ns, st.st_mode & 0o7777, "", "", message]


def op_scan(req):
    root = root_of(req)
    ignore = Ignore(req.get("ignore"))
    paths = req.get("paths")
    if paths is not None:
        if not isinstance(paths, list):
            raise AgentError("invalid", "paths must be a list")
        paths = [check_rel(p) for p in paths]
    try:
        st = os.stat(root)
    except FileNotFoundError:
        return {"exists": False, "is_dir": False, "entries": {}}
    if not stat.S_ISDIR(st.st_mode):
        return {"exists": True, "is_dir": False, "entries": {}}
    racy_ns = int(req.get("racy_ms", RACY_NS // 10**6)) * 10**6
    cache = DigestCache.for_root(os.path.realpath(root))
    scanner = Scanner(root, ignore, cache, racy_ns)
    if paths is None:
        scanner.walk("", root)
    else:
        for rel in paths:
            scanner.subtree(rel)
    scanner.forget_missing(paths)
    cache.save()
    reply = {"exists": True, "is_dir": True, "stats": scanner.stats}
    if paths is not None or not req.get("delta"):
        reply["entries"] = scanner.entries
        return reply
    reply.update(LastScan(cache.key, req.get("ignore")).answer(scanner.entries, req.get("since")))
    return reply


class LastScan:
    """The snapshot this host last reported for a root (and rules), kept on disk with a token.

    A client that still holds the snapshot of token T asks ``since: T`` and gets only what
    differs from it; any other client, or a lost file, gets everything (and a new token).
    """

    def __init__(self, key, rules):
        rules_text = json.dumps(rules, separators=(",", ":"), sort_keys=True)
        self.rules = hashlib.sha256(rules_text.encode("utf-8")).hexdigest()
        self.file = os.path.join(cache_dir(), "scans", key + ".json")

    def load(self):
        try:
            with open(self.file, "rb") as fh:
                data = json.loads(fh.read().decode("utf-8"))
        except (OSError, ValueError):
            return None
        if not isinstance(data, dict) or not isinstance(data.get("entries"), dict):
            return None
        mark_used(self.file)
        return data

    def answer(self, entries, since):
        last = self.load() if isinstance(since, str) and since else None
        if last is not None and (last.get("token") != since or last.get("rules") != self.rules):
            last = None
        if last is None:
            return {"token": self.save(entries), "entries": entries}
        before = last["entries"]
        changed = {p: e for p, e in entries.items() if before.get(p) != e}
        removed = [p for p in before if p not in entries]
        token = since if not changed and not removed else self.save(entries)
        return {"token": token, "since": since, "changed": changed, "removed": removed}

    def save(self, entries):
        token = random_hex(8)
        folder = os.path.dirname(self.file)
        data = {"token": token, "rules": self.rules, "entries": entries}
        try:
            os.makedirs(folder, 0o700, exist_ok=True)
            tmp = os.path.join(folder, temp_name(os.path.basename(self.file)))
            with open(tmp, "wb") as fh:
                fh.write(json.dumps(data, separators=(",", ":")).encode("utf-8"))
            os.replace(tmp, self.file)
        except OSError as exc:
            log("cannot save the last scan: %s" % exc)
            return ""
        return token


# ---------------------------------------------------------------- read and write


def open_file(req):
    """The regular file a request names, opened for reading without following a symlink
    anywhere below its root: (fd, its stat, its relative path). The caller closes the fd."""
    root = root_of(req)
    rel = check_rel(req.get("path"))
    dfd, name, _ = open_parent(root, rel, False)
    try:
        fd = os.open(name, os.O_RDONLY | O_NOFOLLOW | getattr(os, "O_NONBLOCK", 0), dir_fd=dfd)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise AgentError("invalid", "%s is a symlink, not a file" % rel, rel) from None
        raise
    finally:
        os.close(dfd)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise AgentError("invalid", "%s is not a regular file" % rel, rel)
    except BaseException:
        os.close(fd)
        raise
    return fd, st, rel


def op_read(req):
    fd, st, rel = open_file(req)
    try:
        reply = {"mtime_ns": st.st_mtime_ns, "mode": st.st_mode & 0o7777}
        if "offset" not in req:
            data = read_full(fd, CHUNK + 1)
            if len(data) > CHUNK:
                raise AgentError("invalid", "%s is too big for one read: read ranges" % rel, rel)
            reply.update({"size": len(data), "digest": hashlib.sha256(data).hexdigest()})
            return reply, data
        offset, length = int(req["offset"]), min(int(req.get("length", CHUNK)), CHUNK)
        if offset < 0 or length < 0:
            raise AgentError("invalid", "bad range %d+%d" % (offset, length), rel)
        end = min(offset + length, st.st_size)
        runs = sparse.data_extents(fd, offset, end) if req.get("holes") else [(offset, end)]
        segs, parts = [], []
        for start, stop in runs:
            data = pread_full(fd, stop - start, start)
            if data:
                segs.append([start - offset, len(data)])
                parts.append(data)
        reply.update({"size": st.st_size, "segs": segs})
        return reply, b"".join(parts)
    finally:
        os.close(fd)


def pread_full(fd, n, offset):
    parts = []
    while n > 0:
        data = os.pread(fd, n, offset)
        if not data:
            break
        parts.append(data)
        n -= len(data)
        offset += len(data)
    return b"".join(parts)


def op_signature(req):
    """The delta signature of a file: a record per full block (daemon/sync/blocks.py)."""
    block = int(req.get("block", 0))
    if not blocks.SIG_MIN <= block <= blocks.SIG_MAX:
        raise AgentError("invalid", "bad block size %r" % (block,))
    fd, st, _ = open_file(req)
    try:
        raw, _ = blocks.sign_fd(fd, block)
        reply = {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "mode": st.st_mode & 0o7777}
        reply.update({"block": block, "count": len(raw) // blocks.RECORD.size})
        return reply, raw
    finally:
        os.close(fd)


def op_digest(req):
    """The sha256 of the first ``length`` bytes of a file (all of it if shorter), and its size."""
    length = int(req.get("length", -1))
    if length < 0:
        raise AgentError("invalid", "bad length %r" % (req.get("length"),))
    fd, st, _ = open_file(req)
    try:
        h = hashlib.sha256()
        while length > 0:
            data = os.read(fd, min(length, CHUNK))
            if not data:
                break
            h.update(data)
            length -= len(data)
        return {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "digest": h.hexdigest()}
    finally:
        os.close(fd)


class Upload:
    def __init__(self, root, rel, parent=None, base=False):
        self.root = root
        self.rel = rel
        self.owns_dfd = parent is None
        if parent is None:
            self.dfd, self.name, self.created = open_parent(root, rel, True)
        else:
            self.dfd, self.name, self.created = parent
        self.tmp = temp_name(self.name)
        self.fd = None
        self.base = None
        self.hash = hashlib.sha256()
        self.size = 0
        try:
            if base:  # what a delta's copies come from: the target as it is now
                self.base = os.open(self.name, os.O_RDONLY | O_NOFOLLOW, dir_fd=self.dfd)
            flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | O_NOFOLLOW
            self.fd = os.open(self.tmp, flags, 0o600, dir_fd=self.dfd)
        except BaseException:
            self.close()
            raise

    def append(self, data):
        view = memoryview(data)
        while view:
            n = os.write(self.fd, view)
            view = view[n:]
        self.hash.update(data)
        self.size += len(data)

    def apply(self, segs, blob):
        """Write one chunk: its blob's bytes, holes (seeked over), copies from the base."""
        view = memoryview(blob or b"")
        if segs is None:
            segs = [[-1, len(view)]]
        used = 0
        for what, n in segs:
            if not isinstance(n, int) or n < 0:
                raise AgentError("invalid", "bad segment length %r" % (n,), self.rel)
            if what == -1:
                if used + n > len(view):
                    raise AgentError("invalid", "segments overrun the blob", self.rel)
                self.append(view[used : used + n])
                used += n
            elif what == -2:
                self.hole(n)
            elif isinstance(what, int) and what >= 0 and self.base is not None:
                self.copy(what, n)
            else:
                raise AgentError("invalid", "bad segment %r" % (what,), self.rel)
        if used != len(view):
            raise AgentError("invalid", "segments do not cover the blob", self.rel)

    def hole(self, n):
        """``n`` zero bytes, not written but seeked over: they stay a hole."""
        sparse.hash_zeros(self.hash, n)
        self.size += n
        os.lseek(self.fd, self.size, os.SEEK_SET)

    def copy(self, start, n):
        """``n`` bytes of the base from ``start``: its data copied, its holes kept holes (a
        delta of a sparse file leaves it as sparse as it was)."""
        end = start + n
        if os.fstat(self.base).st_size < end:
            raise AgentError("changed", "%s shrank under a delta" % self.rel, self.rel)
        pos = start
        for lo, hi in sparse.data_extents(self.base, start, end):
            if lo > pos:
                self.hole(lo - pos)
            while lo < hi:
                data = os.pread(self.base, min(hi - lo, CHUNK), lo)
                if not data:
                    raise AgentError("changed", "%s shrank under a delta" % self.rel, self.rel)
                self.append(data)
                lo += len(data)
            pos = hi
        if pos < end:
            self.hole(end - pos)

    def finish(self, req):
        digest = req.get("digest")
        if self.hash.hexdigest() != digest:
            raise AgentError("corrupt", "%s: received content does not match its digest" % self.rel)
        mode = int(req.get("mode", 0o644)) & 0o7777
        mtime_ns = int(req.get("mtime_ns"))
        if os.fstat(self.fd).st_size != self.size:  # it ends in a hole
            os.ftruncate(self.fd, self.size)
        os.fchmod(self.fd, mode)
        os.utime(self.fd, ns=(mtime_ns, mtime_ns))
        if req.get("fsync"):
            os.fsync(self.fd)
        st = os.fstat(self.fd)  # what lands: the rename keeps the inode
        os.close(self.fd)
        self.fd = None
        check_expect(self.dfd, self.name, req.get("expect"), self.rel, self.root)
        os.replace(self.tmp, self.name, src_dir_fd=self.dfd, dst_dir_fd=self.dfd)
        self.tmp = None
        note_created(self.root, self.created)
        note_own(self.root, self.rel, self.dfd, self.name, st)
        remember_landed(self.root, self.rel, self.dfd, self.name, st, digest)
        if self.base is not None:  # the replaced file: freed by this close, off the reply
            close_in_background(self.base)
            self.base = None
        self.close()
        return {"entry": entry_of(st, digest)}

    def abort(self):
        if self.base is not None:
            os.close(self.base)
            self.base = None
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None
        if self.tmp is not None:
            with contextlib.suppress(OSError):
                os.unlink(self.tmp, dir_fd=self.dfd)
            self.tmp = None
        self.close()

    def close(self):
        if self.base is not None:
            os.close(self.base)
            self.base = None
        if self.dfd is not None and self.owns_dfd:
            os.close(self.dfd)
        self.dfd = None


def close_in_background(fd):
    """Close ``fd``, the last reference to a file just replaced, on a thread of its own.

    The filesystem frees the old version's blocks on that close: seconds for a GiB where it
    discards them as it frees them (ext4 mounted with ``discard``, common on cloud disks), time
    the sync need not wait for. (Closes still pending when the agent exits happen at its exit.)
    """
    threading.Thread(target=os.close, args=(fd,), daemon=True).start()


UPLOADS = {}  # type: dict


def op_write(req, blob):
    root = root_of(req)
    rel = check_rel(req.get("path"))
    transfer = req.get("transfer")
    final = req.get("final", True)
    if final and "expect" not in req:
        raise AgentError("invalid", "write needs expect (an entry, or null for absent)", rel)
    if transfer is None:
        upload = Upload(root, rel)
    else:
        key = str(transfer)
        upload = UPLOADS.pop(key, None)
        if req.get("abort"):
            if upload is not None:
                upload.abort()
            return {}
        if upload is None:
            if req.get("offset", 0) != 0:
                raise AgentError("invalid", "unknown or failed transfer %s" % key, rel)
            upload = Upload(root, rel, base=bool(req.get("base")))
        elif upload.rel != rel or req.get("offset") != upload.size:
            upload.abort()
            raise AgentError("invalid", "transfer %s: wrong path or offset" % key, rel)
    try:
        upload.apply(req.get("segs"), blob)
        if not final:
            UPLOADS[str(transfer)] = upload
            return {"received": upload.size}
        return upload.finish(req)
    except BaseException:
        upload.abort()
        raise


MANY_MAX = 4096
PARENTS_OPEN = 64
"""write_many keeps at most this many parent dir fds open at once."""


def op_write_many(req, blob):
    """Many whole-file writes in one frame (their bodies back to back in the blob).

    Each file is staged, checked against its own ``expect`` and renamed exactly as ``write``
    does; one failing file does not stop the others. Parent dirs are opened once per batch.
    """
    root = root_of(req)
    files = req.get("files")
    if not isinstance(files, list) or len(files) > MANY_MAX:
        raise AgentError("invalid", "write_many needs a list of at most %d files" % MANY_MAX)
    data = memoryview(blob or b"")
    sizes = [item.get("size") if isinstance(item, dict) else None for item in files]
    if any(not isinstance(n, int) or isinstance(n, bool) or n < 0 for n in sizes) or sum(
        sizes
    ) != len(data):
        raise AgentError("invalid", "write_many: file sizes do not add up to the blob")
    parents = {}
    results = []
    offset = 0
    try:
        for item, size in zip(files, sizes):  # noqa: B905  (python 3.8 has no strict=)
            piece = data[offset : offset + size]
            offset += size
            try:
                results.append(write_one(root, item, piece, parents))
            except Exception as exc:  # one file's failure is its own answer
                results.append({"error": error_reply(None, exc)["error"]})
    finally:
        for dfd, _created in parents.values():
            os.close(dfd)
    return {"results": results}


def write_one(root, item, piece, parents):
    rel = check_rel(item.get("path"))
    if "expect" not in item:
        raise AgentError("invalid", "write needs expect (an entry, or null for absent)", rel)
    folder, _, name = rel.rpartition("/")
    held = parents.get(folder)
    if held is None:
        if len(parents) >= PARENTS_OPEN:
            for dfd, _created in parents.values():
                os.close(dfd)
            parents.clear()
        dfd, name, created = open_parent(root, rel, True)
        parents[folder] = (dfd, created)
    else:
        dfd, created = held[0], []
    upload = Upload(root, rel, (dfd, name, created))
    try:
        upload.append(piece)
        return upload.finish(item)
    except BaseException:
        upload.abort()
        raise


def op_mkdir(req):
    root = root_of(req)
    rel = check_rel(req.get("path"))
    expect = req.get("expect")
    dfd, name, created = open_parent(root, rel, True)
    try:
        check_expect(dfd, name, expect, rel)
        if expect is None:
            os.mkdir(name, 0o777, dir_fd=dfd)
            if req.get("mode") is not None:
                os.chmod(name, int(req["mode"]) & 0o7777, dir_fd=dfd)
            note_own(root, rel, dfd, name)
        note_created(root, created)
        return {"entry": entry_at(dfd, name)}
    finally:
        os.close(dfd)


def op_symlink(req):
    root = root_of(req)
    rel = check_rel(req.get("path"))
    target = req.get("target")
    if not isinstance(target, str) or not target or "\x00" in target:
        raise AgentError("invalid", "bad symlink target %r" % (target,), rel)
    dfd, name, created = open_parent(root, rel, True)
    tmp = temp_name(name)
    try:
        os.symlink(target, tmp, dir_fd=dfd)
        try:
            check_expect(dfd, name, req.get("expect"), rel)
            os.replace(tmp, name, src_dir_fd=dfd, dst_dir_fd=dfd)
        except BaseException:
            os.unlink(tmp, dir_fd=dfd)
            raise
        note_created(root, created)
        note_own(root, rel, dfd, name)
        return {"entry": entry_at(dfd, name)}
    finally:
        os.close(dfd)


def op_delete(req):
    root = root_of(req)
    rel = check_rel(req.get("path"))
    expect = req.get("expect")
    if expect is None:
        raise AgentError("invalid", "delete needs the entry expected at %s" % rel, rel)
    dfd, name, _ = open_parent(root, rel, False)
    try:
        check_expect(dfd, name, expect, rel, root)
        if expect[0] == "dir":
            os.rmdir(name, dir_fd=dfd)
        else:
            os.unlink(name, dir_fd=dfd)
        note_own(root, rel, dfd, name)
        return {}
    finally:
        os.close(dfd)


def op_rename(req):
    root = root_of(req)
    src = check_rel(req.get("src"))
    dst = check_rel(req.get("dst"))
    expect = req.get("expect")
    if expect is None:
        raise AgentError("invalid", "rename needs the entry expected at %s" % src, src)
    sfd, sname, _ = open_parent(root, src, False)
    try:
        dfd, dname, created = open_parent(root, dst, True)
        try:
            digest = check_expect(sfd, sname, expect, src, root)
            if lstat_at(dfd, dname) is not None:
                raise AgentError("exists", "%s already exists" % dst, dst)
            os.rename(sname, dname, src_dir_fd=sfd, dst_dir_fd=dfd)
            note_created(root, created)
            note_own(root, src, sfd, sname)
            note_own(root, dst, dfd, dname)
            return {"entry": entry_at(dfd, dname, digest)}
        finally:
            os.close(dfd)
    finally:
        os.close(sfd)


def op_chmod(req):
    root = root_of(req)
    rel = check_rel(req.get("path"))
    expect = req.get("expect")
    dfd, name, _ = open_parent(root, rel, False)
    try:
        digest = check_expect(dfd, name, expect, rel, root)
        if expect is None or expect[0] == "symlink":
            raise AgentError("invalid", "chmod needs a file or dir at %s" % rel, rel)
        os.chmod(name, int(req["mode"]) & 0o7777, dir_fd=dfd)
        note_own(root, rel, dfd, name)
        return {"entry": entry_at(dfd, name, digest)}
    finally:
        os.close(dfd)


# ---------------------------------------------------------------- report folders

REPORT_DEPTH = 8
REPORTS_MAX = 20000
CONFIG_JSON_MAX = 1 << 20


def report_summary(path):
    """(newest file mtime_ns, bytes, files) of the tree at ``path``; symlinks not followed."""
    newest = size = files = 0
    stack = [path]
    while stack:
        try:
            with os.scandir(stack.pop()) as it:
                for entry in it:
                    if entry.is_dir(follow_symlinks=False):
                        stack.append(entry.path)
                    elif entry.is_file(follow_symlinks=False) and not tempnames.is_temp(entry.name):
                        st = entry.stat(follow_symlinks=False)
                        newest = max(newest, st.st_mtime_ns)
                        size += st.st_size
                        files += 1
        except (FileNotFoundError, NotADirectoryError, PermissionError):
            continue  # gone or closed while listed: the next listing sees it as it is then
    return newest, size, files


def report_name(path):
    """TT-NN's display name: ``report_name`` in the report's config.json, else ""."""
    try:
        fd = os.open(os.path.join(path, "config.json"), os.O_RDONLY | O_NOFOLLOW)
    except OSError:
        return ""
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return ""
        data = json.loads(os.read(fd, CONFIG_JSON_MAX).decode("utf-8"))
    except (OSError, ValueError):
        return ""
    finally:
        os.close(fd)
    name = data.get("report_name") if isinstance(data, dict) else None
    return name if isinstance(name, str) else ""


def report_folders(root, markers):
    """Relative paths of the report folders under ``root`` (see the ``reports`` op)."""
    found = []
    stack = [("", 0)]
    while stack and len(found) < REPORTS_MAX:
        rel, depth = stack.pop()
        here = os.path.join(root, rel) if rel else root
        try:
            with os.scandir(here) as it:
                entries = list(it)
        except (FileNotFoundError, NotADirectoryError, PermissionError):
            if not rel:
                raise
            continue
        names = {e.name for e in entries if e.is_file(follow_symlinks=False)}
        if rel and (not markers or names.intersection(markers)):
            found.append(rel)
            continue
        if (markers and depth >= REPORT_DEPTH) or (not markers and rel):
            continue
        for e in entries:
            if e.is_dir(follow_symlinks=False) and fs_name(e.name) and "\\" not in e.name:
                stack.append((rel + "/" + e.name if rel else e.name, depth + 1))
    return found


def op_reports(req):
    out = []
    for spec in req["roots"]:
        kind, raw = spec["kind"], spec["path"]
        markers = [m for m in spec.get("markers") or [] if isinstance(m, str)]
        root = root_of({"root": raw})
        item = {"kind": kind, "path": raw, "exists": os.path.isdir(root), "error": None}
        try:
            folders = report_folders(root, markers)
        except OSError as exc:
            kind_of_error = ERRNO_TYPES.get(exc.errno, "os")
            message = "not a folder" if isinstance(exc, NotADirectoryError) else exc.strerror
            item["error"] = {"type": kind_of_error, "message": message or str(exc)}
            out.append(item)
            continue
        reports = []
        for rel in folders:
            full = os.path.join(root, rel)
            newest, size, files = report_summary(full)
            reports.append(
                {
                    "folder": rel,
                    "name": report_name(full),
                    "mtime_ns": newest,
                    "size": size,
                    "files": files,
                }
            )
        item["reports"] = reports
        out.append(item)
    return {"roots": out}


# ---------------------------------------------------------------- host checks


def op_hello(req):
    return {
        "version": VERSION,
        "python": "%d.%d.%d" % sys.version_info[:3],
        "platform": sys.platform,
        "home": os.path.expanduser("~"),
        "pid": os.getpid(),
    }


def op_probe(req):
    path = req.get("path")
    if not isinstance(path, str) or not path or "\x00" in path:
        raise AgentError("invalid", "bad path %r" % (path,))
    path = os.path.expanduser(path)
    exists = os.path.exists(path)
    created = False
    if not exists and req.get("create"):
        os.makedirs(path, 0o777)
        exists = created = True
    is_dir = os.path.isdir(path)
    writable = False
    if is_dir:
        tmp = os.path.join(path, temp_name("probe"))
        try:
            os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
            os.unlink(tmp)
            writable = True
        except OSError:
            writable = False
    where = path
    while not os.path.exists(where) and os.path.dirname(where) != where:
        where = os.path.dirname(where)
    try:
        vfs = os.statvfs(where)
        free = vfs.f_bavail * vfs.f_frsize
    except OSError:
        free = None
    return {
        "exists": exists,
        "created": created,
        "is_dir": is_dir,
        "writable": writable,
        "free_bytes": free,
    }


def op_tcp_check(req):
    host = req.get("host")
    port = req.get("port")
    if not isinstance(host, str) or not isinstance(port, int):
        raise AgentError("invalid", "tcp_check needs host and port")
    import socket  # here, not at the top: like ctypes and traceback, off the start's path

    try:
        with socket.create_connection((host, port), timeout=float(req.get("timeout", 3.0))):
            return {"reachable": True, "reason": None}
    except OSError as exc:
        return {"reachable": False, "reason": str(exc.strerror or exc)}


# ---------------------------------------------------------------- runs


def runs_dir():
    return os.path.join(cache_dir(), "runs")


def run_dir(run_id):
    if not isinstance(run_id, str) or not RUN_ID_RE.match(run_id) or run_id in (".", ".."):
        raise AgentError("invalid", "bad run id %r" % (run_id,))
    return os.path.join(runs_dir(), run_id)


def read_json(path):
    try:
        with open(path, "rb") as fh:
            return json.loads(fh.read().decode("utf-8"))
    except (OSError, ValueError):
        return None


def write_json(path, data):
    tmp = path + ".tmp"
    with open(tmp, "wb") as fh:
        fh.write(json.dumps(data).encode("utf-8"))
    os.replace(tmp, path)


def op_exec(req):
    cmd, argv = req.get("cmd"), req.get("argv")
    if isinstance(cmd, str) and cmd:
        argv = ["/bin/sh", "-c", cmd]
    elif not (isinstance(argv, list) and argv and all(isinstance(a, str) for a in argv)):
        raise AgentError("invalid", "exec needs cmd (a string) or argv (a list of strings)")
    run_id = req.get("run_id") or "%d-%s" % (time.time_ns(), random_hex(3))
    folder = run_dir(run_id)
    env = dict(os.environ)
    for key, value in (req.get("env") or {}).items():
        if value is None:
            env.pop(str(key), None)
        else:
            env[str(key)] = str(value)
    venv = req.get("venv")
    if venv:
        venv = os.path.expanduser(venv)
        if not os.path.isdir(os.path.join(venv, "bin")):  # else the run silently used no venv
            raise AgentError("no_venv", "the venv %s does not exist on the host" % venv, venv)
        env["VIRTUAL_ENV"] = venv
        env["PATH"] = os.path.join(venv, "bin") + os.pathsep + env.get("PATH", os.defpath)
        env.pop("PYTHONHOME", None)
    pythonpath = req.get("pythonpath") or os.environ.get("TETHER_PYTHONPATH")
    if pythonpath:
        pythonpath = os.path.expanduser(pythonpath)
        old = env.get("PYTHONPATH")
        env["PYTHONPATH"] = pythonpath + (os.pathsep + old if old else "")
    cwd = os.path.expanduser(req.get("cwd") or "~")
    os.makedirs(runs_dir(), 0o700, exist_ok=True)
    try:
        os.mkdir(folder, 0o700)
    except FileExistsError:
        raise AgentError("exists", "run %s already exists" % run_id) from None
    orphan_s = float(req.get("orphan_s") or ORPHAN_S)
    spec = {"argv": argv, "cwd": cwd, "env": env, "orphan_s": orphan_s}
    write_json(os.path.join(folder, "spec.json"), spec)
    line = start_supervisor(folder)
    info = None
    with contextlib.suppress(ValueError):
        info = json.loads(line.decode("utf-8"))
    if not isinstance(info, dict):
        raise AgentError("os", "the run supervisor failed to start (see %s)" % folder)
    if info.get("error"):
        raise AgentError(info.get("type", "os"), info["error"])
    return {"run_id": run_id, "pid": info["pid"], "pgid": info["pgid"]}


def start_supervisor(folder):
    """Fork the run's supervisor off this agent and return its first line (pid or error).

    A fresh interpreter would cost ~100 ms before the run could start; a fork costs ~1 ms. The
    intermediate child first leaves everything of the agent's behind (its session, the SSH
    channel on fds 0-1, every other descriptor), then :func:`supervise` forks the supervisor
    proper, which is re-parented away from us. Whatever happens in the children, they end in
    ``os._exit``: no copy of the agent ever returns into its request loop.

    What the children need is imported here, before the fork: a forked child must import
    nothing, since a module lock another thread held at that instant (a watch's thread importing
    ctypes, say) stays held in the child for ever, and the run would never start.
    """
    import ctypes.util  # noqa: F401 - for set_subreaper (load_libc) in the child
    import subprocess  # noqa: F401 - for supervise in the child

    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.close(read_end)
            os.setsid()
            null = os.open(os.devnull, os.O_RDWR)
            log = os.open(
                os.path.join(folder, "supervisor.log"),
                os.O_WRONLY | os.O_CREAT | os.O_APPEND,
                0o600,
            )
            os.dup2(null, 0)
            os.dup2(write_end, 1)
            os.dup2(log, 2)
            os.closerange(3, max_fd())
            supervise(folder)
        finally:
            os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as fh:
        line = fh.readline()
    os.waitpid(pid, 0)
    return line


def max_fd():
    try:
        return min(os.sysconf("SC_OPEN_MAX"), 1 << 16)
    except (ValueError, OSError):
        return 1024


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


def set_subreaper():
    if not sys.platform.startswith("linux"):
        return
    try:
        libc = load_libc()
        libc.prctl(36, 1, 0, 0, 0)  # PR_SET_CHILD_SUBREAPER: orphans of the run come to us
    except (OSError, AttributeError):
        pass


def supervise(folder):
    """In a child forked by :func:`start_supervisor`: run the spec, record how it ended."""
    import subprocess  # imported by start_supervisor before the fork: only looked up here

    if os.fork() > 0:
        os._exit(0)
    set_subreaper()
    spec = read_json(os.path.join(folder, "spec.json"))
    out = os.fdopen(1, "wb")
    log_fd = os.open(os.path.join(folder, "output.log"), os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    started = time.time_ns()
    try:
        child = subprocess.Popen(
            spec["argv"],
            cwd=spec["cwd"],
            env=spec["env"],
            stdin=subprocess.DEVNULL,
            stdout=log_fd,
            stderr=log_fd,
            start_new_session=True,
            close_fds=True,
        )
    except OSError as exc:
        kind = ERRNO_TYPES.get(exc.errno, "os")
        message = "cannot start %s: %s" % (spec["argv"][0], exc.strerror or exc)
        if exc.filename == spec["cwd"]:
            message = "cannot enter %s: %s" % (spec["cwd"], exc.strerror or exc)
        status = {"exit_code": 127, "signal": None, "duration_s": 0.0, "error": message}
        write_json(os.path.join(folder, "status.json"), status)
        out.write((json.dumps({"error": message, "type": kind}) + "\n").encode("utf-8"))
        out.close()
        os._exit(0)
    os.close(log_fd)
    info = {"pid": child.pid, "pgid": child.pid, "supervisor": os.getpid(), "started_ns": started}
    write_json(os.path.join(folder, "proc.json"), info)
    out.write((json.dumps(info) + "\n").encode("utf-8"))
    out.close()
    devnull = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(devnull, fd)
    watch = Attendance(folder, float(spec.get("orphan_s") or ORPHAN_S), child.pid)
    main_done = False
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            break
        except InterruptedError:
            continue
        if pid == 0:
            watch.check()
            time.sleep(SUPERVISE_POLL_S)
            continue
        if pid == child.pid and not main_done:
            main_done = True
            code = os.WEXITSTATUS(status) if os.WIFEXITED(status) else None
            sig = None
            if os.WIFSIGNALED(status):
                num = os.WTERMSIG(status)
                try:
                    sig = signal.Signals(num).name
                except ValueError:
                    sig = str(num)
            ended = time.time_ns()
            result = {"exit_code": code, "signal": sig, "duration_s": (ended - started) / 1e9}
            result.update({"started_ns": started, "ended_ns": ended, "reason": watch.reason()})
            write_json(os.path.join(folder, "status.json"), result)
    os._exit(0)


class Attendance:
    """The supervisor's side of the orphan rule (see exec): is any agent attached to the run?

    Asked of the kernel, not guessed: every attach holds a shared flock on the run's
    ``attached`` file, and a lock dies with the process that held it, so a client killed with
    SIGKILL or a link lost for good frees it at once. Nobody attached for ``orphan_s``: the
    process group gets SIGTERM, then SIGKILL after STOP_GRACE_S.
    """

    def __init__(self, folder, orphan_s, pgid):
        self.folder, self.orphan_s, self.pgid = folder, orphan_s, pgid
        self.fd = os.open(attached_path(folder), os.O_RDONLY | os.O_CREAT, 0o600)
        self.last_seen = time.monotonic()
        self.kill_at = None
        self.orphaned = False

    def attended(self):
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:  # EWOULDBLOCK: an attach holds it
            return True
        fcntl.flock(self.fd, fcntl.LOCK_UN)
        return False

    def check(self):
        now = time.monotonic()
        if not self.orphaned and self.attended():
            self.last_seen = now
        elif not self.orphaned and now - self.last_seen >= self.orphan_s:
            self.orphaned = True
            self.kill_at = now + STOP_GRACE_S
            self.signal(signal.SIGTERM)
        elif self.kill_at is not None and now >= self.kill_at:
            self.kill_at = None
            self.signal(signal.SIGKILL)

    def signal(self, num):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pgid, num)

    def reason(self):
        if os.path.exists(os.path.join(self.folder, "stop.json")):
            return "stopped"
        return "orphaned" if self.orphaned else "exited"


def attached_path(folder):
    return os.path.join(folder, "attached")


def alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def group_alive(pgid):
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def op_kill(req):
    folder = run_dir(req.get("run_id"))
    info = read_json(os.path.join(folder, "proc.json"))
    if not isinstance(info, dict):
        raise AgentError("not_found", "no such run: %s" % req.get("run_id"))
    name = str(req.get("signal", "TERM")).upper().replace("SIG", "")
    if name not in SIGNALS:
        raise AgentError("invalid", "unknown signal %r" % name)
    grace_s = float(req.get("grace_s", 5.0))
    pgid = int(info["pgid"])
    write_json(os.path.join(folder, "stop.json"), {"signal": name})  # the run's end says why
    sent = []
    try:
        os.killpg(pgid, SIGNALS[name])
        sent.append(name)
    except ProcessLookupError:
        return {"signalled": [], "escalated": False, "gone": True}
    deadline = time.monotonic() + (grace_s if name != "KILL" else 2.0)
    while group_alive(pgid) and time.monotonic() < deadline:
        time.sleep(0.02)
    escalated = False
    if name != "KILL" and group_alive(pgid):
        escalated = True
        try:
            os.killpg(pgid, signal.SIGKILL)
            sent.append("KILL")
        except ProcessLookupError:
            pass
        deadline = time.monotonic() + 2.0
        while group_alive(pgid) and time.monotonic() < deadline:
            time.sleep(0.02)
    return {"signalled": sent, "escalated": escalated, "gone": not group_alive(pgid)}


def run_summary(run_id):
    folder = os.path.join(runs_dir(), run_id)
    info = read_json(os.path.join(folder, "proc.json")) or {}
    status = read_json(os.path.join(folder, "status.json"))
    summary = {"run_id": run_id, "pid": info.get("pid"), "pgid": info.get("pgid")}
    summary["started_ns"] = info.get("started_ns")
    supervisor = info.get("supervisor")
    supervised = bool(supervisor) and alive(int(supervisor))
    grouped = bool(info.get("pgid")) and group_alive(int(info["pgid"]))
    summary["running"] = status is None and (supervised or grouped)
    if status:
        summary.update(status)
    return summary


def op_runs(req):
    try:
        names = sorted(n for n in os.listdir(runs_dir()) if RUN_ID_RE.match(n))
    except FileNotFoundError:
        names = []
    return {"runs": [run_summary(n) for n in names]}


def op_attach(req, emit, stop):
    folder = run_dir(req.get("run_id"))
    if not os.path.isdir(folder):
        raise AgentError("not_found", "no such run: %s" % req.get("run_id"))
    offset = int(req.get("offset", 0))
    flags = os.O_RDONLY | os.O_CREAT | getattr(os, "O_CLOEXEC", 0)
    lock = os.open(attached_path(folder), flags, 0o600)
    try:
        fcntl.flock(lock, fcntl.LOCK_SH)  # held while attached: the run is not an orphan
        return follow_run(folder, offset, emit, stop)
    finally:
        os.close(lock)


def follow_run(folder, offset, emit, stop):
    logfile = os.path.join(folder, "output.log")
    while True:
        status = read_json(os.path.join(folder, "status.json"))
        lost = False
        if status is None:
            info = read_json(os.path.join(folder, "proc.json"))
            sup = info.get("supervisor") if isinstance(info, dict) else None
            if sup and not alive(int(sup)):
                status = read_json(os.path.join(folder, "status.json"))
                lost = status is None
        try:
            with open(logfile, "rb") as fh:
                fh.seek(offset)
                while True:
                    data = fh.read(CHUNK)
                    if not data:
                        break
                    offset += len(data)
                    emit({"event": "output", "offset": offset}, data)
        except FileNotFoundError:
            pass
        if status is not None or lost:
            status = status or {}
            return {
                "exit_code": status.get("exit_code"),
                "signal": status.get("signal"),
                "duration_s": status.get("duration_s"),
                "reason": status.get("reason"),
                "error": status.get("error"),
                "offset": offset,
                "lost": lost,
            }
        if stop.wait(0.05):
            return {"cancelled": True, "offset": offset}


# ---------------------------------------------------------------- watch

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


# ---------------------------------------------------------------- the loop

OUT_LOCK = threading.Lock()
STREAMS = {}  # type: dict
PLAIN = {
    "hello": op_hello,
    "scan": op_scan,
    "mkdir": op_mkdir,
    "symlink": op_symlink,
    "delete": op_delete,
    "rename": op_rename,
    "chmod": op_chmod,
    "probe": op_probe,
    "exec": op_exec,
    "runs": op_runs,
}
THREADED = {"kill": op_kill, "tcp_check": op_tcp_check, "reports": op_reports}
STREAMING = {"watch": op_watch, "attach": op_attach}


def log(message):
    try:
        sys.stderr.write("tether-agent: %s\n" % message)
        sys.stderr.flush()
    except (OSError, ValueError):
        pass


class Channel:
    def __init__(self, infile, outfile):
        self.infile = infile
        self.outfile = outfile

    def send(self, obj, blob=None):
        if blob is not None:
            obj["blob"] = len(blob)
        try:
            data = json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
        except UnicodeEncodeError:  # a name that is not UTF-8: its surrogates go as \udcXX
            data = json.dumps(obj, separators=(",", ":")).encode("ascii")
        with OUT_LOCK:
            self.outfile.write(struct.pack(">I", len(data)) + data)
            if blob:
                self.outfile.write(blob)
            self.outfile.flush()

    def read_exact(self, n):
        data = self.infile.read(n)
        if data is None or len(data) < n:
            return None
        return data

    def receive(self):
        header = self.read_exact(4)
        if header is None:
            return None, None
        (n,) = struct.unpack(">I", header)
        if n > MAX_FRAME:
            raise ValueError("frame of %d bytes is too large" % n)
        body = self.read_exact(n)
        if body is None:
            return None, None
        req = json.loads(body.decode("utf-8"))
        if not isinstance(req, dict):
            raise ValueError("a frame must hold a JSON object")
        blob = None
        if "blob" in req:
            size = req["blob"]
            if not isinstance(size, int) or size < 0 or size > MAX_FRAME:
                raise ValueError("bad blob size %r" % (size,))
            blob = self.read_exact(size) if size else b""
            if blob is None:
                return None, None
        return req, blob


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


def finish(chan, rid, result, blob=None):
    reply = dict(result)
    reply.update({"id": rid, "ok": True})
    chan.send(reply, blob)


def run_threaded(chan, rid, func, req):
    def body():
        try:
            finish(chan, rid, func(req))
        except Exception as exc:  # a request handler's boundary: answer, keep serving
            chan.send(error_reply(rid, exc))

    threading.Thread(target=body, daemon=True).start()


def run_streaming(chan, rid, func, req):
    stop = threading.Event()
    STREAMS[rid] = stop

    def emit(event, blob):
        event["id"] = rid
        chan.send(event, blob)

    def body():
        try:
            finish(chan, rid, func(req, emit, stop))
        except Exception as exc:  # a request handler's boundary: answer, keep serving
            with contextlib.suppress(OSError, ValueError):
                chan.send(error_reply(rid, exc))
        finally:
            STREAMS.pop(rid, None)

    threading.Thread(target=body, daemon=True).start()


WRITERS_AT_ONCE = 2
WRITERS = threading.BoundedSemaphore(WRITERS_AT_ONCE)
"""write_many batches land in threads of their own, at most this many at once: the next batch
is read off the channel while one is written, and where creating a file waits on the disk (a
network home directory, a busy ext4) two batches wait together. A further one waits for a free
writer before the loop reads on. Two, not the client's four in flight: with four, a first sync
into tmpfs through the daemon took 10 % longer (threads contending for two cores); with two,
as long as with one writer there, and 12-20 % less than with one on a slow disk."""


def run_write_many(chan, rid, req, blob):
    WRITERS.acquire()

    def body():
        try:
            with contextlib.suppress(OSError, ValueError):  # the channel is gone: nobody to tell
                try:
                    finish(chan, rid, op_write_many(req, blob))
                except Exception as exc:  # a request handler's boundary: answer, keep serving
                    chan.send(error_reply(rid, exc))
        finally:
            WRITERS.release()

    threading.Thread(target=body, daemon=True).start()


def wait_for_writers():
    """Let the write_many batches under way land (or fail and remove their staged files)."""
    for _ in range(WRITERS_AT_ONCE):
        WRITERS.acquire()
    for _ in range(WRITERS_AT_ONCE):
        WRITERS.release()


def handle(chan, req, blob):
    rid = req.get("id")
    op = req.get("op")
    if not isinstance(rid, int):
        raise ValueError("request without an integer id")
    try:
        if op in PLAIN:
            finish(chan, rid, PLAIN[op](req))
        elif op == "write":
            finish(chan, rid, op_write(req, blob))
        elif op == "write_many":
            run_write_many(chan, rid, req, blob)
        elif op == "read":
            result, data = op_read(req)
            finish(chan, rid, result, data)
        elif op == "signature":
            result, data = op_signature(req)
            finish(chan, rid, result, data)
        elif op == "digest":
            finish(chan, rid, op_digest(req))
        elif op in THREADED:
            run_threaded(chan, rid, THREADED[op], req)
        elif op in STREAMING:
            run_streaming(chan, rid, STREAMING[op], req)
        elif op in ("cancel", "unwatch"):
            target = req.get("target", req.get("watch_id"))
            stop = STREAMS.get(target)
            if stop is not None:
                stop.set()
            finish(chan, rid, {"found": stop is not None})
        else:
            raise AgentError("invalid", "unknown op %r" % (op,))
    except Exception as exc:  # a request handler's boundary: answer, keep serving
        chan.send(error_reply(rid, exc))


def main(argv):
    infile = open(sys.stdin.fileno(), "rb", buffering=1 << 16, closefd=False)  # noqa: SIM115
    outfile = open(sys.stdout.fileno(), "wb", buffering=1 << 16, closefd=False)  # noqa: SIM115
    sys.stdout = sys.stderr  # a stray print must never corrupt the protocol
    chan = Channel(infile, outfile)
    try:
        while True:
            try:
                req, blob = chan.receive()
            except (ValueError, UnicodeDecodeError) as exc:
                log("malformed frame, stopping: %s" % exc)
                return 2
            if req is None:
                return 0
            handle(chan, req, blob)
    except (BrokenPipeError, KeyboardInterrupt):
        return 0
    finally:
        wait_for_writers()
        for upload in list(UPLOADS.values()):
            upload.abort()
        UPLOADS.clear()
        for cache in DIGEST_CACHES.values():
            cache.save(force=True)


if __name__ == "__main__":
    sys.exit(main(sys.argv))
