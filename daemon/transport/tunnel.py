"""Stable local tunnels: a port on 127.0.0.1 that stays bound while the link comes and goes.

asyncssh's own forward listener closes with its connection, so a drop would free the port and a
browser tab pointed at it would break. Here the listener belongs to tether, is bound once, and
each accepted client opens a fresh direct-tcpip channel over whatever connection the link has
*now*. During an outage a new client waits a bounded time for the link, then is closed cleanly;
clients that were mid-stream when the link died are closed (their bytes had nowhere to go).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Any

import asyncssh

from ..config import TunnelConfig
from ..errors import TetherError
from .link import Link

log = logging.getLogger(__name__)

_CHUNK = 1 << 16
LOOPBACK = "127.0.0.1"


class Tunnel:
    """``127.0.0.1:cfg.local`` → ``cfg.remote_host:cfg.remote_port`` as seen from the host."""

    def __init__(
        self,
        cfg: TunnelConfig,
        link: Link,
        *,
        wait_for_link_s: float = 10.0,
        on_event: Callable[[dict[str, Any]], None] | None = None,
    ) -> None:
        self.cfg = cfg
        self.link = link
        self.wait_for_link_s = wait_for_link_s
        self._on_event = on_event
        self._server: asyncio.Server | None = None
        self._clients: set[asyncio.Task[None]] = set()
        self._streams: set[asyncio.StreamWriter] = set()
        self.open_connections = 0
        self.total_connections = 0
        self.refused_connections = 0
        self.bytes_out = 0
        self.bytes_in = 0
        self.last_error: str | None = None

    @property
    def port(self) -> int:
        """The bound local port (``cfg.local``, or the one the OS chose when that was 0)."""
        if self._server is None or not self._server.sockets:
            return self.cfg.local
        return int(self._server.sockets[0].getsockname()[1])

    async def start(self) -> Tunnel:
        """Bind 127.0.0.1:local once (and only loopback, ever)."""
        try:
            self._server = await asyncio.start_server(self._serve, LOOPBACK, self.cfg.local)
        except OSError as exc:
            error = TetherError(
                f"tunnel {self.cfg.name}: cannot listen on {LOOPBACK}:{self.cfg.local}: "
                f"{exc.strerror}",
                f"free the port or change tunnels.{self.cfg.name}.local",
            )
            self.last_error = error.one_line()  # `tether status` shows why it is not listening
            raise error from None
        self.last_error = None
        self._event("listening", f"{LOOPBACK}:{self.port} → {self._remote}")
        return self

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        # Abort the clients' sockets and let their handlers end on their own: cancelling a
        # start_server handler task makes asyncio (3.11) log a spurious error.
        for writer in list(self._streams):
            writer.transport.abort()
        await asyncio.gather(*self._clients, return_exceptions=True)

    async def __aenter__(self) -> Tunnel:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def snapshot(self) -> dict[str, Any]:
        return {
            "name": self.cfg.name,
            "host": self.cfg.host,
            "local": f"{LOOPBACK}:{self.port}",
            "remote": self._remote,
            "listening": self._server is not None,
            "open_connections": self.open_connections,
            "total_connections": self.total_connections,
            "refused_connections": self.refused_connections,
            "bytes_out": self.bytes_out,
            "bytes_in": self.bytes_in,
            "last_error": self.last_error,
        }

    @property
    def _remote(self) -> str:
        return f"{self.cfg.remote_host}:{self.cfg.remote_port}"

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._clients.add(task)
        self._streams.add(writer)
        self.total_connections += 1
        try:
            await self._forward(reader, writer)
        finally:
            self._clients.discard(task)
            self._streams.discard(writer)
            writer.close()
            with contextlib.suppress(OSError, asyncio.CancelledError):
                await writer.wait_closed()

    async def _forward(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            conn = await self.link.wait_up(self.wait_for_link_s)
            remote_reader, remote_writer = await conn.open_connection(
                self.cfg.remote_host, self.cfg.remote_port
            )
        except (TetherError, asyncssh.Error, OSError) as exc:
            self.refused_connections += 1
            self.last_error = str(exc)
            self._event("refused", f"client closed: {exc}")
            return
        self.open_connections += 1
        try:
            await _pump_both(reader, writer, remote_reader, remote_writer, self._count)
        finally:
            self.open_connections -= 1
            remote_writer.close()

    def _count(self, outbound: bool, n: int) -> None:
        if outbound:
            self.bytes_out += n
        else:
            self.bytes_in += n

    def _event(self, kind: str, message: str) -> None:
        log.info("tunnel %s: %s", self.cfg.name, message)
        if self._on_event is not None:
            self._on_event({"kind": f"tunnel.{kind}", "tunnel": self.cfg.name, "message": message})


async def _pump_both(
    local_reader: asyncio.StreamReader,
    local_writer: asyncio.StreamWriter,
    remote_reader: asyncssh.SSHReader,
    remote_writer: asyncssh.SSHWriter,
    count: Callable[[bool, int], None],
) -> None:
    """Copy both ways until either side ends; half-closes are passed on."""

    async def pump(src: Any, dst: Any, outbound: bool) -> None:
        try:
            while data := await src.read(_CHUNK):
                dst.write(data)
                count(outbound, len(data))
                await dst.drain()
            if dst.can_write_eof():
                dst.write_eof()
        except (asyncssh.Error, OSError):
            return

    up = asyncio.create_task(pump(local_reader, remote_writer, True))
    down = asyncio.create_task(pump(remote_reader, local_writer, False))
    try:
        # The session ends when the remote side is done; the local side may half-close first.
        await down
        up.cancel()
        await asyncio.gather(up, return_exceptions=True)
    finally:
        for task in (up, down):
            task.cancel()
        await asyncio.gather(up, down, return_exceptions=True)
