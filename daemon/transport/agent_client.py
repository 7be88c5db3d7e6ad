"""The asyncio client of the remote agent (:mod:`tether.agent.agent`): one channel, many requests.

:meth:`AgentClient.start` opens one SSH exec channel running a tiny bootstrap with the host's
``python3``: it compares the digest of the agent's modules (``agent_boot.BUNDLE``) in
``~/.cache/tether/<version>/`` with ours, takes new copies over the same channel only when they
differ, then runs the agent (:mod:`.agent_boot`); we say hello. Every reply is checked by
:mod:`.host_data` before anything acts on it.
:meth:`AgentClient.spawn_local` runs the same agent as a local subprocess: every sync's writer
on this side (:class:`tether.sync.sides.LocalSide`), the demo and the tests.

Requests are multiplexed by id: callers may ``asyncio.gather`` many writes and they go out
back to back without waiting for each other's replies. Every reply is validated: a malformed
frame, an unsafe path or an impossible entry raises :class:`BadHostData` and closes the client;
a lost channel fails every pending call with :class:`HostUnreachable`. Error replies become
:class:`RemoteOpError` (``changed`` ones :class:`ExpectationFailed`: rescan, never clobber).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import secrets
import shlex
import struct
import sys
from collections import deque
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeAlias

import asyncssh

from .. import __version__
from ..errors import BadHostData, HostUnreachable, RemoteError, TetherError
from ..sync.blocks import RECORD
from ..sync.endpoint import (
    ExpectationFailed,
    Probe,
    Range,
    RemoteOpError,
    ScanResult,
    Seg,
    WriteItem,
)
from ..sync.entry import Entry, EntryKind, is_sha256
from ..sync.paths import check_relpath
from ..sync.wire import CHUNK, MAX_FRAME, PROTOCOL_VERSION, WINDOW
from .agent_boot import PACKAGE_ROOT, bootstrap_argv, bundle_files, cache_folder_of
from .host_data import (
    ReportRoot,
    WatchBatch,
    apply_scan_delta,
    as_text,
    entry_from_wire,
    entry_to_wire,
    is_int,
    probe_from_wire,
    reports_from_wire,
    validate_snapshot,
)

log = logging.getLogger(__name__)

HELLO_TIMEOUT_S = 30.0
Blob: TypeAlias = bytes | Sequence[bytes]
"""A request's bytes after its header: whole, or in parts sent back to back."""
STDERR_TAIL = 20


class NoUsablePython(RemoteError):
    """The host has no python3 >= 3.8 to run the agent (sync can fall back to SFTP)."""


@dataclass
class _Call:
    op: str
    future: asyncio.Future[dict[str, Any]]
    events: asyncio.Queue[dict[str, Any]] | None = None


class AgentClient:
    """A running agent: send requests, get validated replies."""

    def __init__(
        self,
        reader: Any,
        writer: Any,
        *,
        closer: Callable[[], Any],
        waiter: Callable[[], Any],
        killer: Callable[[], Any],
        stderr: Any = None,
        remote_dir: str | None = None,
        where: str = "the host",
    ) -> None:
        self._reader = reader
        self._writer = writer
        self._closer = closer
        self._waiter = waiter
        self._killer = killer
        self._where = where
        self.remote_dir = remote_dir
        """Where the agent lives on the host (its cache folder); None for a local agent."""
        self.info: dict[str, Any] = {}
        """The agent's hello: version, python, platform, home, pid, inotify."""
        self.uploaded = False
        """True when :meth:`start` had to (re)install the agent on the host."""
        self._next_id = 1
        self._pending: dict[int, _Call] = {}
        self._abandoned: set[int] = set()
        self._drain_lock = asyncio.Lock()
        self._failure: TetherError | None = None
        self._stderr_tail: deque[str] = deque(maxlen=STDERR_TAIL)
        self._read_task = asyncio.create_task(self._read_loop(), name="agent-reader")
        self._stderr_task = (
            asyncio.create_task(self._drain_stderr(stderr), name="agent-stderr")
            if stderr is not None
            else None
        )

    @property
    def home(self) -> str | None:
        """The host user's home folder, as the agent's hello said (None before it)."""
        home = self.info.get("home")
        return home if isinstance(home, str) else None

    # ------------------------------------------------------------ starting

    @classmethod
    async def start(
        cls,
        conn: asyncssh.SSHClientConnection,
        *,
        python: str = "python3",
        remote_dir: str | None = None,
    ) -> AgentClient:
        """Install (if needed) and run this version's agent on the host behind ``conn``.

        ``remote_dir`` (default ``~/.cache/tether/<version>``) is where the agent is installed;
        :attr:`uploaded` tells whether this call had to upload it.

        Raises:
            RemoteError: the host has no usable ``python`` (>= 3.8).
            HostUnreachable: the connection failed meanwhile.
        """
        files = await asyncio.get_running_loop().run_in_executor(None, bundle_files)
        folder = remote_dir or "~/.cache/tether/" + __version__
        command = f"{shlex.quote(python)} {shlex.join(bootstrap_argv(folder, files))}"
        try:
            process = await conn.create_process(command, encoding=None)
        except (OSError, asyncssh.Error) as exc:
            raise HostUnreachable(f"cannot start tether's agent on the host: {exc}") from None
        try:
            uploaded, path = await asyncio.wait_for(
                cls._bootstrap(process, python, files), HELLO_TIMEOUT_S
            )
        except asyncio.TimeoutError:  # TimeoutError itself from Python 3.11 on
            process.close()
            raise HostUnreachable(
                f"tether's agent did not start on the host within {HELLO_TIMEOUT_S:.0f} s "
                "(a login script that waits? try: ssh HOST true)"
            ) from None
        except BaseException:
            process.close()
            raise
        client = cls(
            process.stdout,
            process.stdin,
            closer=process.stdin.write_eof,
            waiter=process.wait_closed,
            killer=process.close,
            stderr=process.stderr,
            remote_dir=cache_folder_of(path),
            where="the host",
        )
        client.uploaded = uploaded
        await client._say_hello()
        return client

    @staticmethod
    async def _bootstrap(
        process: Any, python: str, files: Sequence[tuple[str, bytes]]
    ) -> tuple[bool, str]:
        """Follow the bootstrap script: (whether it took a new agent, where the agent is)."""
        uploaded = False
        try:
            line = await process.stdout.readline()
            if line == b"TETHER-SEND\n":
                uploaded = True
                for _, data in files:
                    process.stdin.write(b"%d\n" % len(data) + data)
                await process.stdin.drain()
                line = await process.stdout.readline()
        except (OSError, asyncssh.Error) as exc:
            raise HostUnreachable(f"lost the host while starting the agent: {exc}") from None
        if line.startswith(b"TETHER-RUN /"):
            return uploaded, line[len(b"TETHER-RUN ") :].decode("utf-8", "replace").rstrip("\n")
        if line.startswith(b"TETHER-OLD"):
            raise NoUsablePython(
                f"`{python}` on the host is Python {as_text(line[11:]).strip()}; tether's agent "
                "needs 3.8 or newer",
                "install a newer python3 on the host or set `python` for this host",
            )
        stderr = b""
        with contextlib.suppress(asyncio.TimeoutError, OSError, asyncssh.Error):
            stderr = await asyncio.wait_for(process.stderr.read(2000), 2.0)
        status = process.exit_status
        if status == 127 or b"not found" in stderr or b"No such file" in stderr:
            raise NoUsablePython(
                f"the host has no `{python}` to run tether's agent: {as_text(stderr).strip()}",
                "install python3 (>= 3.8) on the host, or set `python` for this host",
            )
        raise RemoteError(
            f"tether's agent did not start on the host: {as_text(stderr).strip() or as_text(line)}",
            "check free space and permissions of ~/.cache/tether on the host",
        )

    @classmethod
    async def spawn_local(
        cls, python: str = sys.executable, *, wrapper: Sequence[str] = ()
    ) -> AgentClient:
        """Run the agent as a local subprocess (``wrapper``: a command prefix such as setpriv)."""
        files = await asyncio.get_running_loop().run_in_executor(None, bundle_files)
        process = await asyncio.create_subprocess_exec(
            *wrapper,
            python,
            *bootstrap_argv(str(PACKAGE_ROOT), files),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            limit=MAX_FRAME,
        )
        assert process.stdin is not None and process.stdout is not None
        try:
            line = await asyncio.wait_for(process.stdout.readline(), HELLO_TIMEOUT_S)
        except BaseException:
            process.kill()
            raise
        if not line.startswith(b"TETHER-RUN "):  # its own files, read as it ran: never sent
            process.kill()
            await process.wait()
            raise RemoteError(f"the local agent did not start: {as_text(line).strip()!r}")

        def close_stdin() -> None:
            assert process.stdin is not None
            if not process.stdin.is_closing():
                process.stdin.close()

        client = cls(
            process.stdout,
            process.stdin,
            closer=close_stdin,
            waiter=process.wait,
            killer=process.kill,
            stderr=process.stderr,
            where="the local agent",
        )
        await client._say_hello()
        return client

    async def _say_hello(self) -> None:
        try:
            info = await asyncio.wait_for(self.call("hello"), HELLO_TIMEOUT_S)
        except BaseException:
            await self.close()
            raise
        if info.get("version") != PROTOCOL_VERSION:
            await self.close()
            raise BadHostData(f"the agent speaks protocol {info.get('version')!r}, not 1")
        self.info = info

    # ------------------------------------------------------------ framing

    async def _read_frame(self) -> tuple[dict[str, Any], bytes | None]:
        header = await self._reader.readexactly(4)
        (size,) = struct.unpack(">I", header)
        if size > MAX_FRAME:
            raise BadHostData(f"{self._where} sent a frame of {size} bytes")
        body = await self._reader.readexactly(size)
        try:
            message = json.loads(body.decode("utf-8"))
        except (UnicodeDecodeError, ValueError):
            raise BadHostData(
                f"{self._where} sent a frame that is not JSON: {body[:80]!r}"
            ) from None
        if not isinstance(message, dict) or not is_int(message.get("id")):
            raise BadHostData(f"{self._where} sent a message without an id: {body[:80]!r}")
        blob = None
        if "blob" in message:
            length = message["blob"]
            if not is_int(length) or not 0 <= length <= MAX_FRAME:
                raise BadHostData(f"{self._where} sent a bad blob length: {length!r}")
            blob = await self._reader.readexactly(length)
        return message, blob

    async def _read_loop(self) -> None:
        try:
            while True:
                message, blob = await self._read_frame()
                self._dispatch(message, blob)
        except asyncio.CancelledError:
            self._fail(HostUnreachable(f"the connection to {self._where}'s agent was closed"))
            raise
        except (asyncio.IncompleteReadError, ConnectionError, OSError, asyncssh.Error) as exc:
            tail = " | ".join(self._stderr_tail)
            detail = f" ({tail})" if tail else ""
            self._fail(HostUnreachable(f"lost {self._where}'s agent: {exc!r}{detail}"))
        except TetherError as exc:
            self._fail(exc)
            self._abort()

    def _dispatch(self, message: dict[str, Any], blob: bytes | None) -> None:
        rid = message["id"]
        call = self._pending.get(rid)
        if call is None:
            if rid in self._abandoned:
                if "event" not in message:
                    self._abandoned.discard(rid)
                return
            raise BadHostData(f"{self._where} answered request {rid}, which was never sent")
        if blob is not None:
            message["blob"] = blob
        if "event" in message:
            if not isinstance(message["event"], str):
                raise BadHostData(f"{self._where} sent a bad event: {message!r:.200}")
            if call.events is not None:
                call.events.put_nowait(message)
            return
        ok = message.pop("ok", None)
        message.pop("id")
        if ok is True:
            del self._pending[rid]
            if call.events is not None:
                call.events.put_nowait(message)
            else:
                call.future.set_result(message)
            return
        error = message.get("error")
        if ok is not False or not isinstance(error, dict):
            raise BadHostData(f"{self._where} sent a malformed reply: {message!r:.200}")
        etype, text, path = error.get("type"), error.get("message"), error.get("path")
        if not isinstance(etype, str) or not isinstance(text, str):
            raise BadHostData(f"{self._where} sent a malformed error: {error!r:.200}")
        del self._pending[rid]
        kind = ExpectationFailed if etype == "changed" else RemoteOpError
        exc = kind(etype, f"{call.op}: {text}", path if isinstance(path, str) else None)
        if call.events is not None:
            call.events.put_nowait({"error": exc})
        else:
            call.future.set_exception(exc)

    def _fail(self, exc: TetherError) -> None:
        if self._failure is None:
            self._failure = exc
        for call in self._pending.values():
            if call.events is not None:
                call.events.put_nowait({"error": exc})
            elif not call.future.done():
                call.future.set_exception(exc)
        self._pending.clear()

    def _abort(self) -> None:
        with contextlib.suppress(ProcessLookupError, OSError):
            self._killer()

    async def _drain_stderr(self, stream: Any) -> None:
        with contextlib.suppress(OSError, asyncssh.Error, asyncio.IncompleteReadError):
            while True:
                line = await stream.readline()
                if not line:
                    return
                text = as_text(line).rstrip()
                self._stderr_tail.append(text)
                log.debug("agent: %s", text)

    def _send(self, request: dict[str, Any], blob: Blob | None) -> None:
        """Write one frame: header, then the blob's parts back to back, joined once (a
        write_many's files are copied into the frame and nowhere else)."""
        if self._failure is not None:
            raise self._failure
        parts = [blob] if isinstance(blob, bytes) else list(blob or ())
        if blob is not None:
            request["blob"] = sum(len(part) for part in parts)
        data = json.dumps(request, separators=(",", ":")).encode("utf-8")
        try:
            self._writer.write(b"".join([struct.pack(">I", len(data)), data, *parts]))
        except (ConnectionError, OSError, asyncssh.Error) as exc:
            raise HostUnreachable(f"lost {self._where}'s agent: {exc}") from None

    async def _drain(self) -> None:
        try:
            async with self._drain_lock:
                await self._writer.drain()
        except (ConnectionError, OSError, asyncssh.Error) as exc:
            raise self._failure or HostUnreachable(f"lost {self._where}'s agent: {exc}") from None

    def _register(self, op: str, streaming: bool) -> tuple[int, _Call]:
        rid = self._next_id
        self._next_id += 1
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        call = _Call(op, future, asyncio.Queue() if streaming else None)
        self._pending[rid] = call
        return rid, call

    # ------------------------------------------------------------ generic calls

    async def call(self, op: str, blob: Blob | None = None, **args: Any) -> dict[str, Any]:
        """Send one request and return its final reply (``blob``: its bytes, if any, whole or
        as parts sent back to back).

        Raises:
            RemoteOpError: the agent answered with an error (ExpectationFailed for ``changed``).
            BadHostData: the agent sent something malformed.
            HostUnreachable: the channel died.
        """
        if self._failure is not None:
            raise self._failure
        rid, call = self._register(op, False)
        try:
            self._send({"id": rid, "op": op, **args}, blob)
        except Exception:  # nothing went out (unserializable args, a lost channel): forget it
            self._pending.pop(rid, None)
            raise
        try:
            await self._drain()
            reply = await call.future
        except BaseException:
            # Cancelled, or the channel failed (or was closed) after the frame went out: the
            # agent may still answer, and that answer is dropped, not taken for a stray one.
            if self._pending.pop(rid, None) is not None:
                self._abandoned.add(rid)
            raise
        return reply

    async def stream(self, op: str, **args: Any) -> AsyncIterator[dict[str, Any]]:
        """Send a streaming request; yield its events, then its final reply (no ``event`` key).

        Leaving the loop early cancels the stream on the host.
        """
        if self._failure is not None:
            raise self._failure
        rid, call = self._register(op, True)
        assert call.events is not None
        finished = False
        try:
            self._send({"id": rid, "op": op, **args}, None)
            await self._drain()
            while True:
                item = await call.events.get()
                if "error" in item and isinstance(item["error"], BaseException):
                    finished = True
                    raise item["error"]
                if "event" not in item:
                    finished = True
                    yield item
                    return
                yield item
        finally:
            if not finished and self._pending.pop(rid, None) is not None:
                self._abandoned.add(rid)
                if self._failure is None:
                    cancel_id = self._next_id
                    self._next_id += 1
                    self._abandoned.add(cancel_id)
                    with contextlib.suppress(TetherError, OSError):
                        self._send({"id": cancel_id, "op": "cancel", "target": rid}, None)

    # ------------------------------------------------------------ typed helpers

    async def hello(self) -> dict[str, Any]:
        return await self.call("hello")

    def _poison(self, exc: TetherError) -> TetherError:
        """A reply failed validation: this agent is not to be trusted any more."""
        self._fail(exc)
        self._abort()
        return exc

    async def scan(
        self,
        root: str,
        ignore: Sequence[tuple[str, bool]] = (),
        paths: Sequence[str] | None = None,
        *,
        delta: bool = False,
        since: tuple[str, dict[str, Entry]] | None = None,
        **extra: Any,
    ) -> ScanResult:
        """The host's snapshot of ``root`` (only ``paths``' subtrees if given), validated.

        With ``delta``, the host names the snapshot (:attr:`ScanResult.token`); a later scan
        given ``since=(token, that snapshot)`` receives only what changed since, when the host
        still has that token (else everything, as usual). The result is the full snapshot.
        """
        args: dict[str, Any] = {"root": root, "ignore": [[r, bool(i)] for r, i in ignore]}
        if paths is not None:
            args["paths"] = [check_relpath(p, origin="the caller") for p in paths]
        elif delta:
            args["delta"] = True
            if since is not None and since[0]:
                args["since"] = since[0]
        reply = await self.call("scan", **args, **extra)
        exists, is_dir, stats = reply.get("exists"), reply.get("is_dir"), reply.get("stats", {})
        token, sent = reply.get("token", ""), -1
        try:
            if not isinstance(exists, bool) or not isinstance(is_dir, bool):
                raise BadHostData(f"{self._where} sent a malformed scan reply")
            if not isinstance(token, str):
                raise BadHostData(f"{self._where} sent a malformed scan token")
            if "changed" in reply:
                if since is None or reply.get("since") != since[0]:
                    raise BadHostData(f"{self._where} sent a delta against an unknown scan")
                changed, removed = reply.get("changed"), reply.get("removed")
                entries = apply_scan_delta(since[1], changed, removed)
                sent = len(changed) + len(removed)  # type: ignore[arg-type]
            else:
                entries = validate_snapshot(reply.get("entries"))
            if entries and not is_dir:
                raise BadHostData(f"{self._where} listed entries under a root that is no dir")
        except BadHostData as exc:
            raise self._poison(exc) from None
        stats = stats if isinstance(stats, dict) else {}
        return ScanResult(exists, is_dir, entries, stats, token, sent)

    async def read_entry(self, root: str, path: str) -> tuple[bytes, Entry]:
        """The content of the file at ``path`` and the entry it was read as (digest verified)."""
        reply = await self.call("read", root=root, path=check_relpath(path, origin="the caller"))
        data = reply.get("blob", b"")
        raw = ["file", reply.get("size"), reply.get("mtime_ns"), reply.get("mode")]
        entry = entry_from_wire(path, [*raw, reply.get("digest"), "", ""])
        if len(data) != entry.size or hashlib.sha256(data).hexdigest() != entry.digest:
            raise BadHostData(f"{self._where} sent content of {path!r} that fails its digest")
        return data, entry

    async def read(self, root: str, path: str) -> bytes:
        return (await self.read_entry(root, path))[0]

    async def read_range(
        self, root: str, path: str, offset: int, length: int, *, holes: bool = True
    ) -> Range:
        """Up to :data:`CHUNK` bytes of ``path`` from ``offset`` (``holes``: holes left out)."""
        reply = await self.call(
            "read", root=root, path=_rel(path), offset=offset, length=length, holes=holes
        )
        blob, segs = reply.get("blob", b""), reply.get("segs")
        size, mtime_ns, mode = reply.get("size"), reply.get("mtime_ns"), reply.get("mode")
        if not (is_int(size) and is_int(mtime_ns) and is_int(mode) and isinstance(segs, list)):
            raise self._poison(BadHostData(f"{self._where} sent a malformed range of {path!r}"))
        end = max(0, min(offset + min(length, CHUNK), size) - offset)
        pieces: list[bytes | int] = []
        pos = used = 0
        for seg in segs:
            ok = isinstance(seg, list) and len(seg) == 2 and all(is_int(v) for v in seg)
            if not ok or seg[0] < pos or seg[1] <= 0 or seg[0] + seg[1] > end:
                raise self._poison(BadHostData(f"{self._where} sent a bad range of {path!r}"))
            if seg[0] > pos:
                pieces.append(seg[0] - pos)
            pieces.append(blob[used : used + seg[1]])
            used += seg[1]
            pos = seg[0] + seg[1]
        if used != len(blob):
            raise self._poison(BadHostData(f"{self._where} sent a bad range of {path!r}"))
        if pos < end:
            pieces.append(end - pos)
        return Range(size, mtime_ns, mode, pieces)

    async def signature(self, root: str, path: str, block: int) -> tuple[bytes, int]:
        """The delta signature of ``path`` (see daemon/sync/delta.py) and the size of the file
        it was made of."""
        reply = await self.call("signature", root=root, path=_rel(path), block=block)
        blob, size = reply.get("blob", b""), reply.get("size")
        if (
            reply.get("block") != block
            or not isinstance(blob, bytes)
            or not is_int(size)
            or size < 0
            or len(blob) != size // block * RECORD.size  # one record per full block
        ):
            raise self._poison(BadHostData(f"{self._where} sent a malformed signature"))
        return blob, size

    async def digest_prefix(self, root: str, path: str, length: int) -> tuple[str, int]:
        """The sha256 of the first ``length`` bytes of ``path`` and the file's size."""
        reply = await self.call("digest", root=root, path=_rel(path), length=length)
        digest, size = reply.get("digest"), reply.get("size")
        if not is_sha256(digest) or not is_int(size):
            raise self._poison(BadHostData(f"{self._where} sent a malformed digest"))
        return str(digest), size

    async def write_stream(
        self,
        root: str,
        path: str,
        frames: AsyncIterator[list[Seg]],
        *,
        mode: int,
        mtime_ns: int,
        expect: Entry | None,
        digest: Callable[[], str],
        base: bool = False,
        fsync: bool = False,
    ) -> Entry:
        """Write a file that arrives as ``frames`` (each at most about :data:`CHUNK` bytes of
        data), with :data:`WINDOW` of them in flight, then land it as :meth:`write` does.

        ``digest()`` is asked once the frames are exhausted (a stream hashes as it goes).
        ``base``: copies in the frames come from the target as it is now (a delta). A failure
        anywhere, the source's included, drops the staged file on the host.
        """
        _rel(path)
        transfer = secrets.token_hex(8)
        common: dict[str, Any] = {"root": root, "path": path, "transfer": transfer}
        pending: deque[asyncio.Future[dict[str, Any]]] = deque()
        offset = 0
        try:
            async for frame in frames:
                segs: list[list[int]] = []
                parts: list[bytes] = []
                start = offset
                for seg in frame:
                    if isinstance(seg, int):
                        segs.append([-2, seg])
                        offset += seg
                    elif isinstance(seg, tuple):
                        segs.append([seg[0], seg[1]])
                        offset += seg[1]
                    elif seg:
                        segs.append([-1, len(seg)])
                        parts.append(seg)
                        offset += len(seg)
                if not segs:
                    continue
                args = dict(common, offset=start, final=False, segs=segs)
                if start == 0 and base:
                    args["base"] = True
                pending.append(asyncio.ensure_future(self.call("write", parts, **args)))
                while len(pending) >= WINDOW or (pending and pending[0].done()):
                    await pending.popleft()
            while pending:
                await pending.popleft()
            final = {
                "mode": mode,
                "mtime_ns": mtime_ns,
                "digest": digest(),
                "expect": entry_to_wire(expect),
                "fsync": fsync,
            }
            args = dict(common, offset=offset, final=True, segs=[], **final)
            if offset == 0 and base:
                args["base"] = True
            reply = await self.call("write", [], **args)
        except BaseException:
            for task in pending:
                task.cancel()
            with contextlib.suppress(Exception):
                await asyncio.gather(*pending, return_exceptions=True)
            if self._failure is None:
                drop = self.call("write", None, **common, final=False, abort=True)
                with contextlib.suppress(Exception):
                    await asyncio.shield(drop)
            raise
        entry = entry_from_wire(path, reply.get("entry"))
        if entry.kind is not EntryKind.FILE or entry.digest != final["digest"]:
            raise BadHostData(f"{self._where} reported a different file after writing {path!r}")
        return entry

    async def write(
        self,
        root: str,
        path: str,
        data: bytes,
        *,
        mode: int,
        mtime_ns: int,
        expect: Entry | None,
        fsync: bool = False,
        digest: str = "",
    ) -> Entry:
        """Write ``data`` at ``path`` atomically if ``expect`` still describes what is there.

        Big files go in pipelined chunks of :data:`CHUNK` bytes. ``digest``: the SHA-256 of
        ``data`` when the caller has it (the agent checks the bytes it got against it).

        Raises:
            ExpectationFailed: the path changed since it was scanned; nothing was written.
            RemoteOpError: no_space, read_only, permission, ... (the temp file is removed).
        """
        check_relpath(path, origin="the caller")
        digest = digest or hashlib.sha256(data).hexdigest()
        final = {
            "root": root,
            "path": path,
            "mode": mode,
            "mtime_ns": mtime_ns,
            "digest": digest,
            "expect": entry_to_wire(expect),
            "fsync": fsync,
        }
        if len(data) <= CHUNK:
            reply = await self.call("write", data, **final)
        else:
            transfer = secrets.token_hex(8)
            view = memoryview(data)
            calls = []
            for offset in range(0, len(data), CHUNK):
                piece = bytes(view[offset : offset + CHUNK])
                last = offset + CHUNK >= len(data)
                args: dict[str, Any] = dict(final) if last else {"root": root, "path": path}
                args.update(transfer=transfer, offset=offset, final=last)
                calls.append(asyncio.ensure_future(self.call("write", piece, **args)))
            results = await asyncio.gather(*calls, return_exceptions=True)
            for result in results:
                if isinstance(result, BaseException):
                    raise result
            reply = results[-1]  # type: ignore[assignment]
        entry = entry_from_wire(path, reply.get("entry"))
        if entry.kind is not EntryKind.FILE or entry.digest != digest:
            raise BadHostData(f"{self._where} reported a different file after writing {path!r}")
        return entry

    async def write_many(
        self, root: str, files: Sequence[WriteItem], *, fsync: bool = False
    ) -> list[Entry | RemoteOpError]:
        """Write many small files in one request (one frame, one SSH write, one reply).

        Each file lands exactly as with :meth:`write` (temp + expect check + rename), or fails
        on its own: the list holds, per file in order, its new entry or its error.
        """
        meta = []
        for item in files:
            check_relpath(item.path, origin="the caller")
            meta.append(
                {
                    "path": item.path,
                    "size": len(item.data),
                    "mode": item.mode,
                    "mtime_ns": item.mtime_ns,
                    "digest": item.digest or hashlib.sha256(item.data).hexdigest(),
                    "expect": entry_to_wire(item.expect),
                    "fsync": fsync,
                }
            )
        blob = [item.data for item in files]
        reply = await self.call("write_many", blob, root=root, files=meta)
        results = reply.get("results")
        if not isinstance(results, list) or len(results) != len(files):
            raise self._poison(BadHostData(f"{self._where} answered write_many wrongly"))
        out: list[Entry | RemoteOpError] = []
        for item, sent, result in zip(files, meta, results, strict=True):
            error = result.get("error") if isinstance(result, dict) else None
            if isinstance(error, dict):
                etype, text = error.get("type"), error.get("message")
                if not isinstance(etype, str) or not isinstance(text, str):
                    raise self._poison(BadHostData(f"{self._where} sent a malformed error"))
                kind = ExpectationFailed if etype == "changed" else RemoteOpError
                out.append(kind(etype, f"write: {text}", item.path))
                continue
            try:
                entry = entry_from_wire(item.path, result.get("entry") if result else None)
            except BadHostData as exc:
                raise self._poison(exc) from None
            if entry.kind is not EntryKind.FILE or entry.digest != sent["digest"]:
                raise self._poison(
                    BadHostData(f"{self._where} reported a different file after writing")
                )
            out.append(entry)
        return out

    async def mkdir(
        self, root: str, path: str, *, mode: int | None = None, expect: Entry | None = None
    ) -> Entry:
        reply = await self.call(
            "mkdir", root=root, path=_rel(path), mode=mode, expect=entry_to_wire(expect)
        )
        return entry_from_wire(path, reply.get("entry"))

    async def symlink(self, root: str, path: str, target: str, *, expect: Entry | None) -> Entry:
        reply = await self.call(
            "symlink", root=root, path=_rel(path), target=target, expect=entry_to_wire(expect)
        )
        return entry_from_wire(path, reply.get("entry"))

    async def delete(self, root: str, path: str, *, expect: Entry) -> None:
        await self.call("delete", root=root, path=_rel(path), expect=entry_to_wire(expect))

    async def rename(self, root: str, src: str, dst: str, *, expect: Entry) -> Entry:
        reply = await self.call(
            "rename", root=root, src=_rel(src), dst=_rel(dst), expect=entry_to_wire(expect)
        )
        return entry_from_wire(dst, reply.get("entry"))

    async def chmod(self, root: str, path: str, mode: int, *, expect: Entry) -> Entry:
        reply = await self.call(
            "chmod", root=root, path=_rel(path), mode=mode, expect=entry_to_wire(expect)
        )
        return entry_from_wire(path, reply.get("entry"))

    async def probe(self, path: str, *, create: bool = False) -> Probe:
        """Does the remote folder exist (or could it be created), is it writable, how much room?"""
        reply = await self.call("probe", path=path, create=create)
        try:
            return probe_from_wire(reply)
        except BadHostData as exc:
            raise self._poison(exc) from None

    async def reports(self, roots: Sequence[tuple[str, str, Sequence[str]]]) -> list[ReportRoot]:
        """The report folders under each ``(kind, path, markers)`` root, in one round trip."""
        wire = [{"kind": k, "path": p, "markers": list(m)} for k, p, m in roots]
        reply = await self.call("reports", roots=wire)
        try:
            return reports_from_wire([(k, p) for k, p, _ in roots], reply)
        except BadHostData as exc:
            raise self._poison(exc) from None

    async def tcp_check(self, host: str, port: int, *, timeout: float = 3.0) -> dict[str, Any]:
        """Can the host open a TCP connection to ``host:port``? {reachable, reason}."""
        return await self.call("tcp_check", host=host, port=port, timeout=timeout)

    async def exec(
        self,
        cmd: str | Sequence[str],
        *,
        cwd: str | None = None,
        env: dict[str, str | None] | None = None,
        venv: str | None = None,
        run_id: str | None = None,
        pythonpath: str | None = None,
        orphan_s: float | None = None,
    ) -> dict[str, Any]:
        """Start a run on the host (a string goes through /bin/sh -c); {run_id, pid, pgid}.

        ``pythonpath``: put first on the run's ``PYTHONPATH`` (default: nothing, so a run sees the
        user's packages exactly as the user's Python would). ``orphan_s``: the host
        stops the run once nobody has been attached to it that long (None: the agent's default).
        """
        args: dict[str, Any] = {"cwd": cwd, "env": env or {}, "venv": venv, "run_id": run_id}
        if orphan_s is not None:
            args["orphan_s"] = orphan_s
        if isinstance(cmd, str):
            args["cmd"] = cmd
        else:
            args["argv"] = list(cmd)
        if pythonpath:
            args["pythonpath"] = pythonpath
        return await self.call("exec", **args)

    async def attach(
        self,
        run_id: str,
        *,
        offset: int = 0,
        on_output: Callable[[bytes], Any] | None = None,
    ) -> dict[str, Any]:
        """Follow a run's output from ``offset`` until it ends; returns its final status.

        Returns ``{exit_code, signal, duration_s, reason, offset, lost, error}``.
        """
        async for item in self.stream("attach", run_id=run_id, offset=offset):
            if item.get("event") == "output" and on_output is not None:
                result = on_output(item.get("blob", b""))
                if asyncio.iscoroutine(result):
                    await result
            elif "event" not in item:
                return item
        raise BadHostData(f"{self._where} ended attach without a status")

    async def kill(
        self, run_id: str, *, signal: str = "TERM", grace_s: float = 5.0
    ) -> dict[str, Any]:
        """Signal the run's whole process group; SIGKILL what is left after ``grace_s``."""
        return await self.call("kill", run_id=run_id, signal=signal, grace_s=grace_s)

    async def runs(self) -> list[dict[str, Any]]:
        reply = await self.call("runs")
        return list(reply.get("runs", []))

    async def watch(
        self,
        root: str,
        ignore: Sequence[tuple[str, bool]] = (),
        *,
        coalesce_ms: int = 20,
        force_poll: bool = False,
        poll_ms: int = 1000,
    ) -> AsyncIterator[WatchBatch]:
        """Yield batches of changed paths under ``root`` until the caller stops iterating.

        The first batch is empty (``WatchBatch(())``): the host is watching from then on.
        """
        async for item in self.stream(
            "watch",
            root=root,
            ignore=[[r, bool(i)] for r, i in ignore],
            coalesce_ms=coalesce_ms,
            force_poll=force_poll,
            poll_ms=poll_ms,
        ):
            event = item.get("event")
            if event == "ready":
                yield WatchBatch(())
            elif event == "changes":
                paths = item.get("paths")
                if not isinstance(paths, list):
                    raise BadHostData(f"{self._where} sent a malformed change batch")
                yield WatchBatch(
                    tuple(check_relpath(p, foreign_ok=True) for p in paths),
                    bool(item.get("rescan")),
                )
            elif event is None:
                return

    async def close(self) -> None:
        """Stop the agent (runs it started keep going) and the reader; idempotent."""
        if self._failure is None:
            self._failure = HostUnreachable(f"the agent on {self._where} was closed")
        with contextlib.suppress(OSError, asyncssh.Error, RuntimeError):
            self._closer()
        try:
            await asyncio.wait_for(self._waiter(), 5.0)
        except (asyncio.TimeoutError, OSError, asyncssh.Error):
            self._abort()
        tasks = [t for t in (self._read_task, self._stderr_task) if t is not None]
        for task in tasks:
            task.cancel()
        await asyncio.wait(tasks)
        self._fail(self._failure)

    async def __aenter__(self) -> AgentClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


def _rel(path: str) -> str:
    return check_relpath(path, origin="the caller")
