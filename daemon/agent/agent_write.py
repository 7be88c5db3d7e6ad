"""The agent's changes to a tree: ``write`` (whole, in chunks, or a delta), ``write_many``,
``mkdir``, ``symlink``, ``delete``, ``rename``, ``chmod``; each checks its ``expect`` against what
is there first and goes through its parent's dir fd."""

from __future__ import annotations

import contextlib
import hashlib
import os
import threading

import sparse
from agent_base import (
    CHUNK,
    O_NOFOLLOW,
    AgentError,
    check_rel,
    entry_of,
    error_reply,
    kind_of,
    lstat_at,
    open_parent,
    root_of,
)
from agent_digests import digest_at, remember_landed
from agent_own import note_created, note_own
from tempnames import temp_name


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
