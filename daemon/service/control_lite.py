"""The control API from the CLI's hot paths with nothing but the standard library.

`tether sync`, `run`, `status`, `start`, `stop`, `flush`, `pause` and `resume` talk to a running
daemon; importing aiohttp for one request (~0.3 s here) would cost more than the request itself.
"No daemon" (:class:`DaemonNotRunning`) is decided here; an error the daemon answers with is
rebuilt as the TetherError class :class:`tether.service.control_client.ControlClient` would raise
(that import happens only then).
"""

from __future__ import annotations

import functools
import json
import socket
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import EX_UNAVAILABLE, TetherError

if TYPE_CHECKING:
    import http.client

START_HINT = "start it with `tether start` (or run `tether daemon` in the foreground)"


class DaemonNotRunning(TetherError):
    """No daemon answers on the control socket (missing, refused, or it went away or hung).

    Exit 69 (``EX_UNAVAILABLE``, "service unavailable"), as for an unreachable host. Defined
    here, not with the aiohttp client: "no daemon" must not cost the CLI aiohttp's import."""

    exit_code = EX_UNAVAILABLE


def not_running_because(path: Path, why: str) -> DaemonNotRunning:
    return DaemonNotRunning(f"no tether daemon is running ({why}: {path})", START_HINT)


def not_running(path: Path, exc: BaseException) -> DaemonNotRunning:
    """What a failed connection to the socket at ``path`` means, as DaemonNotRunning."""
    if isinstance(exc, FileNotFoundError):
        return not_running_because(path, "no control socket at")
    if isinstance(exc, ConnectionRefusedError):
        return not_running_because(path, "nothing answers on")
    return DaemonNotRunning(
        f"the tether daemon on {path} went away ({exc})", f"see `tether logs`; {START_HINT}"
    )


@functools.cache
def _unix_http() -> Callable[[Path, float | None], http.client.HTTPConnection]:
    """HTTP/1.1 over the daemon's Unix socket. http.client is imported on the first request,
    not with this module: it brings email and ssl (~25 ms), and most one-shot `tether sync`
    runs find no daemon to ask."""
    import http.client

    class UnixHTTP(http.client.HTTPConnection):
        def __init__(self, path: Path, timeout: float | None) -> None:
            super().__init__("localhost", timeout=timeout)
            self.unix_path = path

        def connect(self) -> None:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.settimeout(self.timeout)
            sock.connect(str(self.unix_path))
            self.sock = sock

    return UnixHTTP


def _not_http(exc: Exception) -> ConnectionError:
    return ConnectionError(f"the daemon's answer is not HTTP: {exc}")


SOCKET_NAME = "control.sock"


def default_socket_path() -> Path:
    """``control.sock`` in the runtime folder (``$TETHER_RUNTIME_DIR`` overrides)."""
    from ..dirs import runtime_dir

    return runtime_dir() / SOCKET_NAME


def socket_path() -> Path | None:
    """The daemon's socket if one exists (a daemon may be listening), else None."""
    try:
        path = default_socket_path()
    except Exception:  # no usable runtime folder: no daemon either
        return None
    return path if path.exists() else None


def daemon_running(path: Path | None = None, timeout_s: float = 1.0) -> bool:
    """Whether something accepts connections on the control socket (blocking, cheap)."""
    path = path or default_socket_path()
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout_s)
        try:
            sock.connect(str(path))
        except OSError:
            return False
    return True


def call(method: str, route: str, body: dict[str, Any] | None = None, timeout: float = 30.0) -> Any:
    """One request to the running daemon; its decoded answer.

    Raises:
        DaemonNotRunning: no socket, nobody answering, or it went away or did not answer within
            ``timeout``.
        TetherError: the daemon's error answer, as the class it was raised as.
    """
    path = default_socket_path()
    try:
        status, answer = request(path, method, route, body or {}, timeout)
    except TimeoutError:
        raise DaemonNotRunning(
            f"the tether daemon did not answer {method} {route} within {timeout:g} s",
            "it may be busy or hung; see `tether logs`",
        ) from None
    except OSError as exc:
        raise not_running(path, exc) from None
    if status >= 400:  # a route the daemon does not know
        raise TetherError(
            f"the running daemon is older than this tether (it does not know {route})",
            "restart it: `tether stop --all`, then `tether start`",
        )
    return answer


def _raise_for(status: int, raw: bytes) -> None:
    from .control_protocol import error_from_body  # stdlib only, and only when it failed

    try:
        data = json.loads(raw) if raw else None
    except ValueError:
        data = None
    raise error_from_body(data, status)


def is_old_daemon(status: int, raw: bytes) -> bool:
    """A 400/404 for an unknown route: the daemon predates this route (use the one-shot path).

    Told apart by the message's start: a 404 for an unknown project whose path holds "route"
    is an answer, not an old daemon."""
    return status in (400, 404) and b'"message": "no such route: ' in raw


def request(
    path: Path, method: str, route: str, body: dict[str, Any], timeout: float | None
) -> tuple[int, Any]:
    """One JSON request; (status, decoded answer). OSError when nobody answers (or the answer
    is not HTTP)."""
    import http.client

    conn = _unix_http()(path, timeout)
    try:
        conn.request(method, route, json.dumps(body), {"Content-Type": "application/json"})
        response = conn.getresponse()
        status, raw = response.status, response.read()
    except http.client.HTTPException as exc:
        raise _not_http(exc) from None
    finally:
        conn.close()
    if status >= 400:
        if is_old_daemon(status, raw):
            return status, None
        _raise_for(status, raw)
    return status, json.loads(raw) if raw else None


def stream(
    path: Path, route: str, body: dict[str, Any], timeout: float | None
) -> Iterator[dict[str, Any]] | None:
    """NDJSON events from a streaming route; None when the daemon does not know the route.

    OSError when nobody answers on the socket (or the answer is not HTTP).
    """
    import http.client

    conn = _unix_http()(path, timeout)
    try:
        conn.request("POST", route, json.dumps(body), {"Content-Type": "application/json"})
        response = conn.getresponse()
    except http.client.HTTPException as exc:
        conn.close()
        raise _not_http(exc) from None
    except BaseException:
        conn.close()
        raise
    if response.status >= 400:
        raw = response.read()
        conn.close()
        if is_old_daemon(response.status, raw):
            return None
        _raise_for(response.status, raw)

    def events() -> Iterator[dict[str, Any]]:
        try:
            while line := response.readline():
                event = json.loads(line)
                if isinstance(event, dict):
                    yield event
        except http.client.HTTPException as exc:  # the daemon went away mid-stream
            raise _not_http(exc) from None
        finally:
            conn.close()

    return events()
