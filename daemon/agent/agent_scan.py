"""The agent's ``scan`` op: a root's entries (hashes from the digest cache where it holds them),
or what changed since the client's last snapshot of it; stale temporaries of ours are removed."""

from __future__ import annotations

import hashlib
import json
import os
import stat
import time

import tempnames
import wire
from agent_base import (
    O_NOFOLLOW,
    RACY_NS,
    AgentError,
    Ignore,
    cache_dir,
    check_rel,
    entry_of,
    kind_of,
    log,
    random_hex,
    root_of,
)
from agent_digests import DigestCache, hash_fd, mark_used
from tempnames import is_temp, temp_name


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


FOREIGN = wire.FOREIGN_REASON


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
