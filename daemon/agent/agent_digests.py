"""The agent's digest cache: the sha256 of every file a scan hashed, per root, kept in memory
and in ~/.cache/tether/digests/ and keyed by size, mtime_ns, ino and ctime_ns, so that neither a
rescan nor the check before an overwrite reads an unchanged file again."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import stat
import time

from agent_base import CHUNK, O_NOFOLLOW, RACY_NS, cache_dir, log, lstat_at, real_root
from tempnames import temp_name


def hash_fd(fd):
    h = hashlib.sha256()
    while True:
        data = os.read(fd, CHUNK)
        if not data:
            return h.hexdigest()
        h.update(data)


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
