"""A TCP proxy between tether and sshd that can fail for real: cut, black-hole, refuse.

It runs its own event loop in a thread so a test can break the network under a client that lives
on another loop (or in another process). Modes:

- ``cut()``: reset every open connection now (the peer sees ECONNRESET).
- ``blackhole()``: keep connections open but drop every byte both ways (a dead Wi-Fi); new
  connections are accepted and then hear nothing.
- ``refuse()``: close the listening socket, so new connections are refused; ``restore()`` binds
  the same port again.
"""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager


class FaultProxy:
    def __init__(self, target_port: int, target_host: str = "127.0.0.1") -> None:
        self.target = (target_host, target_port)
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._server: asyncio.Server | None = None
        self._conns: set[tuple[asyncio.StreamWriter, asyncio.StreamWriter]] = set()
        self.blackholed = False
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]

    def start(self) -> FaultProxy:
        self._thread.start()
        self._call(self._listen())
        return self

    def stop(self) -> None:
        self._call(self._close_all(close_server=True))
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(5)

    def cut(self) -> None:
        self._call(self._close_all(close_server=False))

    def blackhole(self) -> None:
        self.blackholed = True

    def refuse(self) -> None:
        self._call(self._close_all(close_server=True))

    def restore(self) -> None:
        self.blackholed = False
        if self._server is None:
            self._call(self._listen())

    @property
    def open_connections(self) -> int:
        return len(self._conns)

    def _call(self, coro) -> None:  # type: ignore[no-untyped-def]
        asyncio.run_coroutine_threadsafe(coro, self.loop).result(10)

    async def _listen(self) -> None:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", self.port)

    async def _close_all(self, *, close_server: bool) -> None:
        if close_server and self._server is not None:
            self._server.close()
            self._server = None
        for a, b in list(self._conns):
            for w in (a, b):
                sock = w.get_extra_info("socket")
                if sock is not None and sock.fileno() >= 0:
                    # SO_LINGER 0: close sends RST, as a dropped route would look to the peer.
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\0\0\0\0\0\0\0")
                w.transport.abort()
        self._conns.clear()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.transport.abort()
            return
        pair = (writer, up_writer)
        self._conns.add(pair)

        async def pump(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            try:
                while data := await src.read(65536):
                    if not self.blackholed:
                        dst.write(data)
                        await dst.drain()
            except (OSError, asyncio.CancelledError):
                pass
            finally:
                dst.transport.abort() if not self.blackholed else None

        await asyncio.gather(pump(reader, up_writer), pump(up_reader, writer))
        self._conns.discard(pair)


@contextmanager
def fault_proxy(target_port: int) -> Iterator[FaultProxy]:
    proxy = FaultProxy(target_port).start()
    try:
        yield proxy
    finally:
        proxy.stop()
