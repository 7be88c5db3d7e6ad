"""The local scanner: one pass over the root, gitignore rules, and a digest cache.

A file whose (size, mtime_ns, inode, ctime_ns) match the cache is never re-read (ctime: a same-size
rewrite with its old mtime put back still moves it; a digest is only cached once the file has been
still for longer than a timestamp tick, see :data:`RACY_NS`); the others are hashed on a
small thread pool (hashlib releases the GIL), or, with ``defer_hashing``, only where a digest is
needed to compare: a file new on this side is hashed as it is read to be sent, once. Unreadable
paths become ``PROBLEM`` entries and symlinks that leave the root (or anything that is not a
file, folder or link) ``UNTRACKED`` ones, so one bad path never fails the scan. ``.gitignore``
files are read as the walk meets them and their rules apply below their folder; the rules found
are returned so the remote scan uses the same ones.
"""

from __future__ import annotations

import hashlib
import os
import stat
import time
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from .entry import Entry, EntryKind, Snapshot
from .ignore import GITIGNORE, IgnoreRules
from .paths import escaping_link_problem, symlink_stays_inside
from .tempnames import is_stale, is_temp, machine_id, pid_alive
from .wire import foreign_name

_Stat = tuple[int, int, int, int, int]
"""(size, mtime_ns, ino, st_mode, ctime_ns) of a file to hash."""
DigestCache = dict[str, tuple[int, int, int, int, str]]
"""path → (size, mtime_ns, ino, ctime_ns, sha256 hex)."""

HASH_CHUNK = 1 << 20
HASH_THREADS = 4
HASH_BATCH = 512
"""Files handed to the hashing pool at a time: a future per file for 100,000 files at once
cost ~150 MB (a Future carries a Condition and its lock)."""
RACY_NS = 2 * 10**9
"""A file modified this close to the scan may change again within the same mtime tick: hash it,
but do not cache the digest."""


@dataclass
class LocalScan:
    """What a scan of the local root found."""

    exists: bool
    is_dir: bool
    entries: Snapshot = field(default_factory=dict)
    rules: IgnoreRules | None = None
    cache: DigestCache = field(default_factory=dict)
    hashed: int = 0
    """Files actually read this time (the rest came from the cache)."""
    hashed_bytes: int = 0
    rules_seen: set[tuple[str, bool]] | None = None
    """Partial scans: every ignore rule in force somewhere in the scanned subtrees (the root's and
    ancestors' ``.gitignore`` included), to check against the rules the host was last sent."""
    unhashed: dict[str, _Stat] = field(default_factory=dict)
    """Files listed without a digest yet (``defer_hashing``), with what they looked like."""
    top: str = ""
    horizon: int = 0
    """Files changed after this (ns) are too fresh to cache: they may change within one tick."""

    def hash(self, paths: Sequence[str]) -> None:
        """Hash these unhashed files now (blocking; on a small thread pool past a few files)."""
        items = [(p, self.unhashed.pop(p)) for p in paths if p in self.unhashed]

        def digest(item: tuple[str, _Stat]) -> tuple[str, _Stat, str | OSError]:
            path, st = item
            try:
                return path, st, hash_file(os.path.join(self.top, path))
            except OSError as exc:
                return path, st, exc

        def take(results: Iterable[tuple[str, _Stat, str | OSError]]) -> None:
            for path, st, result in results:
                if isinstance(result, OSError):
                    self.entries[path] = Entry(EntryKind.PROBLEM, problem=_reason(result))
                else:
                    self._record(path, st, result)

        if len(items) > 8:
            with ThreadPoolExecutor(HASH_THREADS) as pool:
                for start in range(0, len(items), HASH_BATCH):
                    take(pool.map(digest, items[start : start + HASH_BATCH]))
        else:
            take(digest(item) for item in items)

    def cache_with(self, learned: Mapping[str, str]) -> DigestCache:
        """The digest cache with what an apply learned: ``learned`` maps scanned paths of files
        the scan left unhashed to the sha256 of the bytes the apply read whole to send (their
        size and mtime checked against the scan's as they were read). Pure: the scan is
        unchanged; a file too fresh to trust (see :data:`RACY_NS`) gets no row."""
        rows = {
            path: (st[0], st[1], st[2], st[4], digest)
            for path, digest in learned.items()
            if (st := self.unhashed.get(path)) is not None and max(st[1], st[4]) < self.horizon
        }
        return {**self.cache, **rows} if rows else self.cache

    def _record(self, path: str, st: _Stat, digest: str) -> None:
        size, mtime_ns, ino, mode, ctime_ns = st
        if max(mtime_ns, ctime_ns) < self.horizon:
            self.cache[path] = (size, mtime_ns, ino, ctime_ns, digest)
        self.hashed += 1
        self.hashed_bytes += size
        self.entries[path] = Entry(EntryKind.FILE, size, mtime_ns, mode & 0o7777, digest)


def hash_file(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(HASH_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def scan_local(
    root: Path,
    rules: IgnoreRules,
    cache: DigestCache | None = None,
    *,
    paths: Sequence[str] | None = None,
    defer_hashing: bool = False,
) -> LocalScan:
    """Scan ``root`` (blocking; run it in a thread from async code).

    Args:
        root: the pair's local folder.
        rules: the defaults and the pair's rules; ``.gitignore`` files found are added.
        cache: the digest cache from the previous scan.
        paths: rescan only these subtrees (root-relative); entries elsewhere are not returned,
            except their ancestor folders (so every entry's parent is listed, as the agent does).
            The ``.gitignore`` files of the root and those ancestors apply, as in a full walk.
        defer_hashing: leave files the cache does not know unhashed (entries without a digest,
            listed in ``unhashed``): the caller hashes those it must compare
            (:meth:`LocalScan.hash`) and learns the rest as it reads them to send
            (:meth:`LocalScan.cache_with`), so a new file is read once, not twice.
    """
    cache = cache or {}
    try:
        st = os.stat(root)
    except FileNotFoundError:
        return LocalScan(False, False, rules=rules)
    except OSError:
        return LocalScan(True, False, rules=rules)
    if not stat.S_ISDIR(st.st_mode):
        return LocalScan(True, False, rules=rules)
    entries: Snapshot = {}
    new_cache: DigestCache = {}
    to_hash: list[tuple[str, _Stat]] = []
    top = str(root)
    horizon = time.time_ns() - RACY_NS

    def classify(path: str, full: str, st: os.stat_result) -> None:
        mode = st.st_mode
        if stat.S_ISREG(mode):
            hit = cache.get(path)
            if hit and hit[:4] == (st.st_size, st.st_mtime_ns, st.st_ino, st.st_ctime_ns):
                new_cache[path] = hit
                entries[path] = Entry(
                    EntryKind.FILE, st.st_size, st.st_mtime_ns, mode & 0o7777, hit[4]
                )
            else:  # the five fields hashing needs, not the whole stat_result (~4x the size)
                to_hash.append(
                    (path, (st.st_size, st.st_mtime_ns, st.st_ino, mode, st.st_ctime_ns))
                )
        elif stat.S_ISLNK(mode):
            try:
                target = os.readlink(full)
            except OSError as exc:
                entries[path] = Entry(EntryKind.PROBLEM, problem=_reason(exc))
                return
            if symlink_stays_inside(path, target):
                entries[path] = Entry(EntryKind.SYMLINK, 0, st.st_mtime_ns, 0, target=target)
            else:
                entries[path] = Entry(EntryKind.UNTRACKED, problem=escaping_link_problem(target))
        else:
            entries[path] = Entry(EntryKind.UNTRACKED, problem="not a file, folder or link")

    def visit(rel: str, rules: IgnoreRules) -> IgnoreRules:
        full = os.path.join(top, rel) if rel else top
        try:
            with os.scandir(full) as it:
                items = sorted(it, key=lambda d: d.name)
        except OSError as exc:
            if rel:
                entries[rel] = Entry(EntryKind.PROBLEM, problem=_reason(exc))
            return rules
        if any(d.name == GITIGNORE for d in items):
            try:
                with open(os.path.join(full, GITIGNORE), encoding="utf-8", errors="replace") as fh:
                    rules = rules.with_gitignore(rel, fh.read())
            except OSError:
                pass
        for d in items:
            if is_temp(d.name):  # staged by a writer (ours, or the agent's): never listed
                drop_if_stale(d)
                continue
            path = f"{rel}/{d.name}" if rel else d.name
            try:
                st = d.stat(follow_symlinks=False)
            except OSError as exc:
                entries[path] = Entry(EntryKind.PROBLEM, problem=_reason(exc))
                continue
            mode = st.st_mode
            if rules(path, stat.S_ISDIR(mode)):
                continue
            foreign = foreign_name(d.name)
            if foreign is not None:
                entries[path] = Entry(EntryKind.UNTRACKED, problem=foreign)
                continue
            if stat.S_ISDIR(mode):
                entries[path] = Entry(EntryKind.DIRECTORY, 0, st.st_mtime_ns, mode & 0o7777)
                rules = visit(path, rules)
                continue
            classify(path, os.path.join(full, d.name), st)
        return rules

    if paths is None:
        rules = visit("", rules)
    else:
        seen_wire = set(rules.to_wire())
        folder_rules: dict[str, IgnoreRules] = {}

        def rules_at(folder: str) -> IgnoreRules:
            """The rules in force inside ``folder``: the root's and every ancestor's
            ``.gitignore`` applied, as the full walk would have by the time it got there."""
            got = folder_rules.get(folder)
            if got is None:
                outer = rules if not folder else rules_at(folder.rpartition("/")[0])
                got = outer
                try:
                    name = os.path.join(top, folder, GITIGNORE) if folder else None
                    with open(name or os.path.join(top, GITIGNORE), encoding="utf-8",
                              errors="replace") as fh:  # fmt: skip
                        got = outer.with_gitignore(folder, fh.read())
                except OSError:
                    pass
                folder_rules[folder] = got
            return got

        for sub in sorted(set(paths)):
            parts = sub.split("/")
            for i in range(1, len(parts) + 1):
                here = "/".join(parts[:i])
                full = os.path.join(top, here)
                here_rules = rules_at("/".join(parts[: i - 1]))
                if is_temp(parts[i - 1]):
                    break
                try:
                    st = os.lstat(full)
                except FileNotFoundError:
                    break
                except OSError as exc:
                    entries[here] = Entry(EntryKind.PROBLEM, problem=_reason(exc))
                    break
                is_dir = stat.S_ISDIR(st.st_mode)
                if here_rules(here, is_dir):
                    break
                if i < len(parts):  # an ancestor of the subtree: listed, so every parent is
                    if not is_dir:
                        break
                    entries.setdefault(
                        here, Entry(EntryKind.DIRECTORY, 0, st.st_mtime_ns, st.st_mode & 0o7777)
                    )
                    continue
                if is_dir:
                    entries[here] = Entry(
                        EntryKind.DIRECTORY, 0, st.st_mtime_ns, st.st_mode & 0o7777
                    )
                    seen_wire.update(visit(here, here_rules).to_wire())
                else:
                    classify(here, full, st)
        for got in folder_rules.values():
            seen_wire.update(got.to_wire())
    if paths is not None:  # keep cache rows of paths outside the rescanned subtrees
        for path, row in cache.items():
            if not any(path == p or path.startswith(p + "/") for p in paths):
                new_cache.setdefault(path, row)
    scanned = LocalScan(
        True,
        True,
        entries,
        rules,
        new_cache,
        rules_seen=seen_wire if paths is not None else None,
        top=top,
        horizon=horizon,
    )
    for path, seen in to_hash:  # a placeholder until hashed: a file entry with no digest yet
        entries[path] = Entry(EntryKind.FILE, seen[0], seen[1], seen[3] & 0o7777)
        scanned.unhashed[path] = seen
    if not defer_hashing:
        scanned.hash(list(scanned.unhashed))
    return scanned


def drop_if_stale(d: os.DirEntry[str]) -> None:
    """Remove ``d``, a temporary, if its writer is gone (see :mod:`.tempnames`): a transfer
    killed midway leaves nothing behind past the next scan of its folder."""
    try:
        st = d.stat(follow_symlinks=False)
        if not stat.S_ISDIR(st.st_mode) and is_stale(
            d.name, time.time() - st.st_mtime, machine_id(), pid_alive
        ):
            os.unlink(d.path)
    except OSError:
        pass  # gone already, or not ours to remove: the next scan looks again


def _reason(exc: OSError) -> str:
    return exc.strerror or str(exc)
