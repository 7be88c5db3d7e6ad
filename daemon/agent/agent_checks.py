"""The agent's host checks: ``hello``, ``probe`` (a folder: there, writable, free space) and
``tcp_check`` (can the host reach a port)."""

from __future__ import annotations

import os
import sys

import wire
from agent_base import AgentError
from tempnames import temp_name

VERSION = wire.PROTOCOL_VERSION


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
