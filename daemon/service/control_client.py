"""The asyncio client of the control API (:mod:`.control`): the tray, `tether logs -f` and the
tests use it; the CLI's one-request verbs use the stdlib client in :mod:`.control_lite`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
from collections.abc import AsyncGenerator, Iterator, Mapping
from pathlib import Path
from typing import Any

import aiohttp

from ..errors import TetherError
from .control_lite import START_HINT, DaemonNotRunning, default_socket_path, not_running_because
from .control_protocol import BASE_URL, EX_SOFTWARE, HEARTBEAT_S, dumps, error_from_body

log = logging.getLogger(__name__)

DEFAULT_TIMEOUT_S = 30.0


@contextlib.contextmanager
def _connection_errors(path: Path) -> Iterator[None]:
    """aiohttp's connection failures → DaemonNotRunning."""
    try:
        yield
    except aiohttp.ClientConnectorError as exc:
        why = "nothing answers on" if isinstance(exc.os_error, ConnectionRefusedError) else None
        if isinstance(exc.os_error, FileNotFoundError):
            why = "no control socket at"
        raise not_running_because(path, why or f"cannot connect ({exc.os_error})") from None
    except aiohttp.ServerTimeoutError:
        raise DaemonNotRunning(
            f"the tether daemon on {path} stopped answering", "see `tether logs`"
        ) from None
    except (aiohttp.ServerDisconnectedError, aiohttp.ClientPayloadError, aiohttp.ClientOSError):
        raise DaemonNotRunning(
            f"the tether daemon on {path} went away", f"see `tether logs`; {START_HINT}"
        ) from None


def _absolute(path: str | Path) -> str:
    """``path`` made absolute as this process sees it (the daemon's cwd is not ours).

    Only ``$HOME`` and ``getcwd``: no file is read, so this is no blocking call on the loop.
    """
    return os.fspath(Path(path).expanduser().absolute())


class ControlClient:
    """Talks to the daemon's control socket. Use ``async with`` (or call :meth:`close`)."""

    def __init__(
        self, socket_path: Path | None = None, *, timeout_s: float = DEFAULT_TIMEOUT_S
    ) -> None:
        self.path = Path(socket_path) if socket_path is not None else default_socket_path()
        self.timeout_s = timeout_s
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> ControlClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def close(self) -> None:
        session, self._session = self._session, None
        if session is not None:
            await session.close()

    def _session_(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.UnixConnector(path=os.fspath(self.path)),
                json_serialize=dumps,
            )
        return self._session

    async def request(
        self,
        method: str,
        path: str,
        body: Mapping[str, Any] | None = None,
        *,
        params: Mapping[str, Any] | None = None,
        timeout_s: float | None = None,
    ) -> Any:
        """One request; the decoded JSON answer.

        Raises:
            DaemonNotRunning: no socket, nobody answering, or the daemon went away or timed out.
            TetherError: the daemon's error answer, as the class it was raised as.
        """
        if not self.path.exists():
            raise not_running_because(self.path, "no control socket at")
        query = {k: str(v) for k, v in (params or {}).items() if v is not None}
        timeout = aiohttp.ClientTimeout(total=timeout_s or self.timeout_s)
        with _connection_errors(self.path):
            try:
                async with self._session_().request(
                    method, BASE_URL + path, json=body, params=query, timeout=timeout
                ) as response:
                    raw = await response.read()
                    status = response.status
            except asyncio.TimeoutError:
                raise DaemonNotRunning(
                    f"the tether daemon did not answer {method} {path} within {timeout.total:g} s",
                    "it may be busy or hung; see `tether logs`",
                ) from None
        try:
            data = json.loads(raw) if raw else None
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise TetherError(
                f"the daemon answered HTTP {status} with something that is not JSON",
                "is another program using tether's socket?",
                exit_code=EX_SOFTWARE,
            ) from None
        if status >= 400:
            raise error_from_body(data, status)
        return data

    async def status(self) -> dict[str, Any]:
        return await self.request("GET", "/v1/status")

    async def register(self, config_path: str | Path) -> dict[str, Any]:
        """Register a project; the path is made absolute here (the daemon's cwd is not ours)."""
        path = _absolute(config_path)
        return await self.request("POST", "/v1/projects", {"config_path": path})

    async def unregister(self, config_path: str | Path) -> dict[str, Any]:
        path = _absolute(config_path)
        return await self.request("DELETE", "/v1/projects", {"config_path": path})

    async def pause(self, project: str | None = None, pair: str | None = None) -> dict[str, Any]:
        return await self.request("POST", "/v1/pause", {"project": project, "pair": pair})

    async def resume(self, project: str | None = None, pair: str | None = None) -> dict[str, Any]:
        return await self.request("POST", "/v1/resume", {"project": project, "pair": pair})

    async def flush(self, project: str | None = None, timeout_s: float = 60.0) -> dict[str, Any]:
        """Wait until pending changes landed; the HTTP timeout is ``timeout_s`` plus a margin."""
        return await self.request(
            "POST",
            "/v1/flush",
            {"project": project, "timeout_s": timeout_s},
            timeout_s=timeout_s + 10,
        )

    async def sync(
        self, project: str | Path, pairs: list[str] | None = None, timeout_s: float = 60.0
    ) -> dict[str, Any]:
        """Sync pairs of a registered project now (see :meth:`DaemonAPI.sync`)."""
        path = _absolute(project)
        return await self.request(
            "POST",
            "/v1/sync",
            {"project": path, "pairs": pairs, "timeout_s": timeout_s},
            timeout_s=timeout_s + 10,
        )

    async def runs(self, project: str | None = None, limit: int = 20) -> dict[str, Any]:
        return await self.request("GET", "/v1/runs", params={"project": project, "limit": limit})

    async def logs(self, limit: int = 100) -> list[dict[str, Any]]:
        answer = await self.request("GET", "/v1/logs", params={"limit": limit})
        return list(answer["events"])

    async def shutdown(self) -> dict[str, Any]:
        return await self.request("POST", "/v1/shutdown")

    async def follow_events(
        self, *, idle_timeout_s: float = 3 * HEARTBEAT_S
    ) -> AsyncGenerator[dict[str, Any], None]:
        """Live events, in order, until the daemon closes the stream (the iteration ends).

        Leaving early: wrap it in ``contextlib.aclosing(...)`` so the connection closes at once
        rather than when the generator is collected.

        Raises:
            DaemonNotRunning: not running; or it died (the stream broke off) or hung (nothing,
                not even a heartbeat, for ``idle_timeout_s``).
        """
        if not self.path.exists():
            raise not_running_because(self.path, "no control socket at")
        timeout = aiohttp.ClientTimeout(
            total=None, connect=self.timeout_s, sock_read=idle_timeout_s
        )
        with _connection_errors(self.path):
            response = await self._session_().get(BASE_URL + "/v1/events", timeout=timeout)
        async with response:
            if response.status >= 400:
                raise error_from_body(await response.json(content_type=None), response.status)
            while True:
                with _connection_errors(self.path):
                    line = await response.content.readline()
                if not line:
                    raise DaemonNotRunning(
                        f"the tether daemon on {self.path} went away (its event stream broke off)",
                        f"see `tether logs`; {START_HINT}",
                    )
                try:
                    event = json.loads(line)
                except (json.JSONDecodeError, UnicodeDecodeError):
                    log.warning("ignoring a malformed event line: %r", line[:200])
                    continue
                if not isinstance(event, dict):
                    continue
                control = event.get("_control")
                if control == "closing":
                    return
                if control is None:
                    yield event
