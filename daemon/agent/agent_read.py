"""The agent's reads of one file: ``read`` (whole, or a range with its holes left out),
``signature`` (the delta's block records) and ``digest`` (of the file's first bytes)."""

from __future__ import annotations

import errno
import hashlib
import os
import stat

import blocks
import sparse
from agent_base import CHUNK, O_NOFOLLOW, AgentError, check_rel, open_parent, root_of


def read_full(fd, n):
    parts = []
    while n > 0:
        data = os.read(fd, n)
        if not data:
            break
        parts.append(data)
        n -= len(data)
    return b"".join(parts)


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
