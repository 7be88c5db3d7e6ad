"""The control API's server: HTTP + JSON over a Unix socket only this user can reach.

The daemon serves an object implementing :class:`DaemonAPI`; the tray and `tether logs -f` talk
to it with :class:`~.control_client.ControlClient`, the CLI's one-request verbs with the stdlib
client in :mod:`.control_lite` (same routes, same error classes; :mod:`.control_protocol` holds
what both ends agree on). Routes, all JSON in and out:

====== ================ =========================================== ==============================
method path             body / query                                answer
====== ================ =========================================== ==============================
GET    /v1/status                                                   ``api.status()``
POST   /v1/projects     ``{"config_path"}``                         ``api.register(...)``
DELETE /v1/projects     ``{"config_path"}``                         ``api.unregister(...)``
POST   /v1/pause        ``{"project"?, "pair"?}``                   ``api.pause(...)``
POST   /v1/resume       ``{"project"?, "pair"?}``                   ``api.resume(...)``
POST   /v1/flush        ``{"project"?, "timeout_s"?}``              ``api.flush(...)``
POST   /v1/sync         ``{"project", "pairs"?, "timeout_s"?}``     ``api.sync(...)``
GET    /v1/runs         ``?project=&limit=``                        ``api.runs(...)``
POST   /v1/run          ``{"project", "pair"?, "argv", "sync"?,     NDJSON: ``api.run(...)``'s
                        "fetch"?}``                                 events (output base64-coded)
POST   /v1/run/stop     ``{"run_id"}``                              ``api.stop_run(...)``
POST   /v1/trigger      ``{"project", "trigger"}``                  ``api.run_trigger(...)``
POST   /v1/reconnect    ``{"project"?}``                            ``api.reconnect(...)``
GET    /v1/logs         ``?limit=``                                 ``{"events": [...]}``
GET    /v1/events                                                   NDJSON, one event per line
POST   /v1/shutdown     ``{"stop_services"?}``                      ``{"ok": true}``, then
                                                                    ``api.shutdown(...)``
====== ================ =========================================== ==============================

Errors: a :class:`~tether.errors.TetherError` raised by the API is answered as
``{"error": {"message", "hint", "exit_code", "types"}}`` with a 4xx/5xx status chosen from its exit
code; the client raises it again as the same class (the first of ``types``, its class and bases,
known to the client), so the CLI prints one line and exits with the daemon's code. An unknown
route, a body that is not a JSON object (or nested too deeply), a field of the wrong type, a string
with a NUL byte or a number out of range is a 400 (``UsageError``, exit 2); a project, pair or run
not known here is a 404 (:class:`~tether.errors.NotFound`). Anything else raised while handling
a request is logged with its traceback and answered 500 (exit 70, ``EX_SOFTWARE``).

The event stream sends each event as one JSON line. Lines with a ``"_control"`` key are the
stream's own: ``heartbeat`` every ``heartbeat_s`` while no event flows (so a client notices a daemon
that died or hangs) and ``closing`` when the server shuts down; the client hides them.

The socket (``control.sock`` in :func:`tether.dirs.runtime_dir`, or ``$TETHER_RUNTIME_DIR``) is
bound under umask 0o177 and chmod-ed 0600, inside a folder checked to be 0700 and the user's own.
One daemon per folder: the server holds an ``flock`` on ``control.lock`` beside the socket for its
whole life, and also refuses when something answers on the socket; a socket file nobody answers on
is stale and replaced.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import json
import logging
import math
import os
import socket
import stat
import time
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any, Protocol

from aiohttp import web

from ..dirs import RUNTIME_ENV, ensure_private_dir
from ..errors import (
    TetherError,
    UsageError,
)
from . import control_lite
from .control_lite import (
    default_socket_path,
)
from .control_protocol import EX_SOFTWARE, HEARTBEAT_S, dumps, error_body, http_status

log = logging.getLogger(__name__)

SOCKET_NAME = control_lite.SOCKET_NAME
SHUTDOWN_GRACE_S = 2.0
"""How long closing the server waits for requests in flight before cancelling them."""
MAX_LIMIT = 10_000
"""The most runs or events one request lists (SQLite takes no integer past 2**63)."""
MAX_TIMEOUT_S = 86_400.0
"""The longest a request may ask to wait (asyncio's timers take no infinite or huge delay)."""
_MAX_SOCKET_PATH = 104  # sun_path is 108 bytes on Linux, 104 on macOS (NUL included)


class DaemonAPI(Protocol):
    """What the control server serves; the daemon implements it. Answers must be JSON-able
    (:func:`to_json` also takes enums, paths, dataclasses, datetimes, sets and tuples)."""

    async def status(self) -> dict[str, Any]: ...

    async def register(self, config_path: str) -> dict[str, Any]: ...

    async def unregister(self, config_path: str) -> dict[str, Any]: ...

    async def pause(self, project: str | None, pair: str | None) -> dict[str, Any]: ...

    async def resume(self, project: str | None, pair: str | None) -> dict[str, Any]: ...

    async def flush(self, project: str | None, timeout_s: float) -> dict[str, Any]:
        """May raise a TetherError (e.g. HostUnreachable → exit 69 at the CLI)."""
        ...

    async def sync(
        self,
        project: str,
        pairs: list[str] | None,
        timeout_s: float,
        accept_deletes: bool = False,
    ) -> dict[str, Any]:
        """Flush ``pairs`` of ``project`` now; ``{"registered", "pairs": [SyncReport JSON]}``.
        With ``accept_deletes`` a halted pair first goes ahead with the plan it showed."""

    async def runs(self, project: str | None, limit: int) -> dict[str, Any]: ...

    def run(
        self, project: str, pair: str | None, argv: list[str], sync: bool, fetch: list[str]
    ) -> AsyncGenerator[dict[str, Any], None]:
        """A run on the project's host over the daemon's link: events until ``exit``."""
        ...

    async def stop_run(self, run_id: str) -> dict[str, Any]: ...

    async def run_trigger(self, project: str, trigger: str) -> dict[str, Any]:
        """Fire a trigger now, as if its paths had changed."""
        ...

    async def reconnect(self, project: str | None) -> dict[str, Any]:
        """Make the links (of one project, or all) connect again now."""
        ...

    def events(self) -> AsyncGenerator[dict[str, Any], None]:
        """A live event stream, one per subscriber: ``{"ts", "level", "project", "kind",
        "message", ...}``. Closed (``aclose``) when its client goes away."""
        ...

    def recent_events(self, limit: int) -> list[dict[str, Any]]: ...

    async def shutdown(self, stop_services: bool = False) -> None:
        """Stop the daemon; called after the /v1/shutdown answer is sent, in a task of its own,
        so it may close the control server itself. ``stop_services``: also stop the
        ``keep_running`` services on their hosts (else a daemon started again adopts them)."""
        ...


class DaemonAlreadyRunning(TetherError):
    """Another daemon already serves this runtime folder (exit 1)."""

    exit_code = 1


# -- server --------------------------------------------------------------------------------------


def _json_response(data: Any, status: int = 200) -> web.Response:
    return web.Response(text=dumps(data), status=status, content_type="application/json")


def _line(data: Any) -> bytes:
    return (dumps(data) + "\n").encode()


async def _body(request: web.Request) -> dict[str, Any]:
    if not request.can_read_body:
        return {}
    raw = await request.read()
    if not raw.strip():
        return {}
    try:
        body = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise UsageError(f"request body is not JSON: {exc}") from None
    except RecursionError:  # the parser recurses per nesting level
        raise UsageError("request body is nested too deeply") from None
    if not isinstance(body, dict):
        raise UsageError("request body must be a JSON object")
    return body


def _no_nul(value: str, key: str) -> str:
    """``value``, refused when it holds a NUL: no path or name has one, and the OS calls made
    with it would fail deep inside the daemon instead of at the door."""
    if "\0" in value:
        raise UsageError(f"{key!r} contains a NUL byte")
    return value


def _opt_str(body: Mapping[str, Any], key: str) -> str | None:
    value = body.get(key)
    if value is None:
        return value
    if isinstance(value, str):
        return _no_nul(value, key)
    raise UsageError(f"{key!r} must be a string or null, not {type(value).__name__}")


def _str_list(value: Any, key: str, what: str) -> list[str]:
    """A JSON list of strings without NULs (``what`` names it in the error)."""
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise UsageError(f"{key} must be {what}")
    return [_no_nul(v, key) for v in value]


def _req_str(body: Mapping[str, Any], key: str) -> str:
    value = _opt_str(body, key)
    if not value:
        raise UsageError(f"{key!r} is required")
    return value


def _number(value: Any, key: str, default: float, maximum: float, *, integer: bool = False) -> Any:
    """A non-negative finite number up to ``maximum`` (``default`` when absent)."""
    if value is None or value == "":
        return default
    if isinstance(value, bool):
        raise UsageError(f"{key!r} must be a number, not {value!r}")
    try:
        number = int(value) if integer else float(value)
    except (TypeError, ValueError, OverflowError):
        kind = "an integer" if integer else "a number"
        raise UsageError(f"{key!r} must be {kind}, not {value!r}") from None
    if not (math.isfinite(number) and 0 <= number <= maximum):
        raise UsageError(f"{key!r} must be between 0 and {maximum:g}, not {value!r}")
    return number


_END = object()


async def _next_or_end(iterator: AsyncIterator[Any]) -> Any:
    try:
        return await iterator.__anext__()
    except StopAsyncIteration:
        return _END


class ControlServer:
    """The control API's server: ``close()`` + ``await wait_closed()``, or ``async with``."""

    def __init__(
        self, api: DaemonAPI, socket_path: Path | None = None, *, heartbeat_s: float = HEARTBEAT_S
    ) -> None:
        self.api = api
        self.path = Path(socket_path) if socket_path is not None else default_socket_path()
        self.heartbeat_s = heartbeat_s
        self._runner: web.AppRunner | None = None
        self._lock_fd: int | None = None
        self._inode: tuple[int, int] | None = None
        self._closing = asyncio.Event()
        self._closed = asyncio.Event()
        self._close_task: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[Any]] = set()

    # -- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        """Claim the socket and start answering.

        Raises:
            InsecureFolder: the runtime folder is not private.
            DaemonAlreadyRunning: another server holds the lock or answers on the socket.
            TetherError: the socket path is too long, or is taken by something not a socket.
        """
        if self._runner is not None:
            return
        ensure_private_dir(self.path.parent)
        if len(os.fsencode(self.path)) >= _MAX_SOCKET_PATH:
            raise TetherError(
                f"control socket path {self.path} is too long for a Unix socket "
                f"({len(os.fsencode(self.path))} bytes, at most {_MAX_SOCKET_PATH - 1})",
                f"set {RUNTIME_ENV} to a shorter folder",
            )
        self._lock()
        sock: socket.socket | None = None
        try:
            await self._clear_stale_socket()
            sock = self._bind()
            app = web.Application(middlewares=[self._errors], client_max_size=1 << 20)
            self._routes(app)
            runner = web.AppRunner(
                app, handle_signals=False, access_log=None, shutdown_timeout=SHUTDOWN_GRACE_S
            )
            await runner.setup()
            try:
                await web.SockSite(runner, sock).start()
            except BaseException:
                await runner.cleanup()
                raise
            self._runner = runner
        except BaseException:  # clean up whatever was claimed, then re-raise
            if sock is not None:
                sock.close()
                self._unlink_socket()
            self._unlock()
            raise
        log.info("control API listening on %s", self.path)

    def _lock(self) -> None:
        lock_path = self.path.with_suffix(".lock")  # control.sock → control.lock
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            holder = os.read(fd, 32).decode(errors="replace").strip()
            os.close(fd)
            if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise
            raise DaemonAlreadyRunning(
                f"a tether daemon is already running"
                f"{f' (pid {holder})' if holder.isdigit() else ''} on {self.path}",
                "use it (`tether status`), or stop it first with `tether stop`",
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        self._lock_fd = fd

    def _unlock(self) -> None:
        fd, self._lock_fd = self._lock_fd, None
        if fd is not None:
            os.close(fd)  # closing the descriptor releases the flock

    async def _clear_stale_socket(self) -> None:
        try:
            st = os.lstat(self.path)
        except FileNotFoundError:
            return
        if not stat.S_ISSOCK(st.st_mode):
            raise TetherError(
                f"{self.path} exists and is not a socket", f"remove it, or set {RUNTIME_ENV}"
            )
        try:
            _, writer = await asyncio.wait_for(asyncio.open_unix_connection(self.path), 2.0)
        except (ConnectionRefusedError, FileNotFoundError, asyncio.TimeoutError):
            log.info("removing stale control socket %s", self.path)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path)
            return
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
        raise DaemonAlreadyRunning(
            f"something already answers on {self.path}",
            "use it (`tether status`), or stop it first with `tether stop`",
        )

    def _bind(self) -> socket.socket:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            old_umask = os.umask(0o177)  # born 0600: no window where others could connect
            try:
                sock.bind(os.fspath(self.path))
            finally:
                os.umask(old_umask)
            os.chmod(self.path, 0o600)
            st = os.stat(self.path)
            self._inode = (st.st_dev, st.st_ino)
            sock.setblocking(False)
        except BaseException:
            sock.close()
            raise
        return sock

    def _unlink_socket(self) -> None:
        """Remove the socket file if it is still the one this server bound."""
        try:
            st = os.lstat(self.path)
        except FileNotFoundError:
            return
        if self._inode == (st.st_dev, st.st_ino):
            os.unlink(self.path)

    def close(self) -> None:
        """Begin closing: event streams say goodbye, requests in flight get
        :data:`SHUTDOWN_GRACE_S`, then the socket is removed and the lock released."""
        self._closing.set()
        if self._close_task is None:
            self._close_task = asyncio.ensure_future(self._cleanup())

    async def _cleanup(self) -> None:
        try:
            if self._runner is not None:
                await self._runner.cleanup()
        finally:
            self._unlink_socket()
            self._unlock()
            self._closed.set()
            log.info("control API on %s closed", self.path)

    async def wait_closed(self) -> None:
        """Wait until the server is closed (by :meth:`close`, e.g. from ``api.shutdown``)."""
        await self._closed.wait()
        if self._close_task is not None and self._close_task is not asyncio.current_task():
            await self._close_task

    async def __aenter__(self) -> ControlServer:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        self.close()
        await self.wait_closed()

    # -- request handling --------------------------------------------------------------------

    def _routes(self, app: web.Application) -> None:
        app.router.add_get("/v1/status", self._status)
        app.router.add_post("/v1/projects", self._register)
        app.router.add_delete("/v1/projects", self._unregister)
        app.router.add_post("/v1/pause", self._pause)
        app.router.add_post("/v1/resume", self._resume)
        app.router.add_post("/v1/flush", self._flush)
        app.router.add_post("/v1/sync", self._sync)
        app.router.add_post("/v1/run", self._run)
        app.router.add_post("/v1/run/stop", self._stop_run)
        app.router.add_post("/v1/trigger", self._run_trigger)
        app.router.add_post("/v1/reconnect", self._reconnect)
        app.router.add_get("/v1/runs", self._runs)
        app.router.add_get("/v1/logs", self._logs)
        app.router.add_get("/v1/events", self._events)
        app.router.add_post("/v1/shutdown", self._shutdown)

    @web.middleware
    async def _errors(
        self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        """The request-handler boundary: every failure becomes an error answer."""
        try:
            return await handler(request)
        except TetherError as exc:
            return _json_response(error_body(exc), http_status(exc))
        except web.HTTPException as exc:
            if exc.status in (404, 405):
                message = f"no such route: {request.method} {request.path}"
                hint = "an older daemon? restart it (`tether stop`, `tether start`)"
            else:
                message, hint = f"bad request: {exc.reason}", ""
            return _json_response(error_body(UsageError(message, hint)), 400)
        except Exception as exc:  # the boundary: log it, answer 500, keep serving
            log.exception("control API: %s %s failed", request.method, request.path)
            error = TetherError(
                f"internal error in the tether daemon ({type(exc).__name__}: {exc})",
                "this is a bug; the daemon's log has the traceback",
                exit_code=EX_SOFTWARE,
            )
            return _json_response(error_body(error), 500)

    async def _status(self, request: web.Request) -> web.Response:
        return _json_response(await self.api.status())

    async def _register(self, request: web.Request) -> web.Response:
        body = await _body(request)
        return _json_response(await self.api.register(_req_str(body, "config_path")))

    async def _unregister(self, request: web.Request) -> web.Response:
        body = await _body(request)
        return _json_response(await self.api.unregister(_req_str(body, "config_path")))

    async def _pause(self, request: web.Request) -> web.Response:
        body = await _body(request)
        return _json_response(
            await self.api.pause(_opt_str(body, "project"), _opt_str(body, "pair"))
        )

    async def _resume(self, request: web.Request) -> web.Response:
        body = await _body(request)
        return _json_response(
            await self.api.resume(_opt_str(body, "project"), _opt_str(body, "pair"))
        )

    async def _flush(self, request: web.Request) -> web.Response:
        body = await _body(request)
        timeout_s = _number(body.get("timeout_s"), "timeout_s", 60.0, MAX_TIMEOUT_S)
        return _json_response(await self.api.flush(_opt_str(body, "project"), timeout_s))

    async def _sync(self, request: web.Request) -> web.Response:
        body = await _body(request)
        timeout_s = _number(body.get("timeout_s"), "timeout_s", 60.0, MAX_TIMEOUT_S)
        pairs = body.get("pairs")
        if pairs is not None:
            pairs = _str_list(pairs, "pairs", "a list of pair names")
        return _json_response(
            await self.api.sync(
                _req_str(body, "project"),
                pairs or None,
                timeout_s,
                accept_deletes=body.get("accept_deletes") is True,
            )
        )

    async def _run(self, request: web.Request) -> web.StreamResponse:
        """Stream a run: its first event is awaited before answering, so an error that stops it
        from starting (unknown project, host down) is an ordinary error reply; once the stream
        has begun, a client that goes away stops the run (the generator's cleanup does)."""
        body = await _body(request)
        argv = _str_list(body.get("argv"), "argv", "a non-empty list of strings")
        if not argv:
            raise UsageError("argv must be a non-empty list of strings")
        fetch = _str_list(body.get("fetch") or [], "fetch", "a list of paths")
        events = self.api.run(
            _req_str(body, "project"),
            _opt_str(body, "pair"),
            argv,
            bool(body.get("sync", True)),
            fetch,
        )
        try:
            first = await anext(events)
        except BaseException:
            await events.aclose()
            raise
        response = web.StreamResponse(headers={"Content-Type": "application/x-ndjson"})
        await response.prepare(request)
        try:
            await response.write(_line(first))
            async for event in events:
                await response.write(_line(event))
            await response.write_eof()
        except ConnectionResetError:
            log.info("run client went away; stopping its run")
        finally:
            await events.aclose()
        return response

    async def _stop_run(self, request: web.Request) -> web.Response:
        body = await _body(request)
        return _json_response(await self.api.stop_run(_req_str(body, "run_id")))

    async def _run_trigger(self, request: web.Request) -> web.Response:
        body = await _body(request)
        return _json_response(
            await self.api.run_trigger(_req_str(body, "project"), _req_str(body, "trigger"))
        )

    async def _reconnect(self, request: web.Request) -> web.Response:
        body = await _body(request)
        return _json_response(await self.api.reconnect(_opt_str(body, "project")))

    async def _runs(self, request: web.Request) -> web.Response:
        project = _opt_str(request.query, "project") or None
        limit = _number(request.query.get("limit"), "limit", 20, MAX_LIMIT, integer=True)
        return _json_response(await self.api.runs(project, limit))

    async def _logs(self, request: web.Request) -> web.Response:
        limit = _number(request.query.get("limit"), "limit", 100, MAX_LIMIT, integer=True)
        return _json_response({"events": self.api.recent_events(limit)})

    async def _events(self, request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(
            headers={"Content-Type": "application/x-ndjson", "Cache-Control": "no-store"}
        )
        await response.prepare(request)
        iterator = aiter(self.api.events())
        closing = asyncio.ensure_future(self._closing.wait())
        pending: asyncio.Future[Any] | None = None
        try:
            while True:
                if pending is None:
                    pending = asyncio.ensure_future(_next_or_end(iterator))
                done, _ = await asyncio.wait(
                    {pending, closing}, timeout=self.heartbeat_s, return_when="FIRST_COMPLETED"
                )
                if pending in done:
                    event, pending = pending.result(), None
                    if event is _END:
                        break
                    await response.write(_line(event))
                elif closing in done:
                    await response.write(_line({"_control": "closing", "ts": time.time()}))
                    break
                else:
                    await response.write(_line({"_control": "heartbeat", "ts": time.time()}))
            await response.write_eof()
        except ConnectionResetError:
            log.debug("event stream client went away")
        except Exception:  # the boundary (the answer has begun: end the stream, keep serving)
            log.exception("control API: event stream failed")
        finally:
            closing.cancel()
            if pending is not None:
                pending.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await pending
            aclose = getattr(iterator, "aclose", None)
            if aclose is not None:
                await aclose()
        return response

    async def _shutdown(self, request: web.Request) -> web.StreamResponse:
        stop_services = bool((await _body(request)).get("stop_services", False))
        response = _json_response({"ok": True, "message": "the daemon is stopping"})
        await response.prepare(request)
        await response.write_eof()
        task = asyncio.ensure_future(self.api.shutdown(stop_services))
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        return response

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("daemon shutdown failed", exc_info=task.exception())


async def serve(
    api: DaemonAPI, socket_path: Path | None = None, *, heartbeat_s: float = HEARTBEAT_S
) -> ControlServer:
    """Start a :class:`ControlServer` for ``api`` (``async with await serve(api): ...``)."""
    server = ControlServer(api, socket_path, heartbeat_s=heartbeat_s)
    await server.start()
    return server
