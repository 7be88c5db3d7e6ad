"""tether's remote agent: one stdlib-only program that tether uploads to a host and drives over
one SSH exec channel (stdin/stdout). Runs on the host's ``python3`` >= 3.8; imports nothing from
tether. The client is :mod:`tether.transport.agent_client`. This module reads the requests and
dispatches them; the ops live in the bundle's ``agent_*`` modules beside it, one job each.

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
import json
import struct
import sys
import threading

# The bundle's other modules, registered under these bare names by the bootstrap from the
# source it verified (BUNDLE in tether.transport.agent_boot says which, in load order).
from agent_base import MAX_FRAME, AgentError, error_reply, log
from agent_checks import op_hello, op_probe, op_tcp_check
from agent_digests import DIGEST_CACHES
from agent_read import op_digest, op_read, op_signature
from agent_reports import op_reports
from agent_runs import op_attach, op_exec, op_kill, op_runs
from agent_scan import op_scan
from agent_watch import op_watch
from agent_write import (
    UPLOADS,
    op_chmod,
    op_delete,
    op_mkdir,
    op_rename,
    op_symlink,
    op_write,
    op_write_many,
)

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
