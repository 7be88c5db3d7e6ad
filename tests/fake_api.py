"""A stand-in for the daemon behind the control socket: the control tests serve it in this
process, and a script of theirs serves it from a child process that they then kill or stop
(so it lives in a plain module that a script can import)."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator
from typing import Any

from tether.service.control import ControlServer


class FakeAPI:
    """A DaemonAPI that records calls and publishes events to every subscriber."""

    def __init__(self) -> None:
        self.calls: list[tuple[Any, ...]] = []
        self.subscribers: list[asyncio.Queue[dict[str, Any]]] = []
        self.subscribed = asyncio.Condition()
        self.history: list[dict[str, Any]] = []
        self.flush_delay_s = 0.0
        self.flush_error: Exception | None = None
        self.server: ControlServer | None = None
        self.shut_down = asyncio.Event()

    async def status(self) -> dict[str, Any]:
        self.calls.append(("status",))
        return {"projects": [{"name": "demo", "pairs": {"code": "watching"}}], "pid": os.getpid()}

    async def register(self, config_path: str) -> dict[str, Any]:
        self.calls.append(("register", config_path))
        return {"registered": config_path}

    async def unregister(self, config_path: str) -> dict[str, Any]:
        self.calls.append(("unregister", config_path))
        return {"unregistered": config_path}

    async def pause(self, project: str | None, pair: str | None) -> dict[str, Any]:
        self.calls.append(("pause", project, pair))
        return {"paused": [pair or "*"]}

    async def resume(self, project: str | None, pair: str | None) -> dict[str, Any]:
        self.calls.append(("resume", project, pair))
        return {"resumed": [pair or "*"]}

    async def flush(self, project: str | None, timeout_s: float) -> dict[str, Any]:
        self.calls.append(("flush", project, timeout_s))
        if self.flush_error is not None:
            raise self.flush_error
        await asyncio.sleep(self.flush_delay_s)
        return {"flushed": project, "timeout_s": timeout_s}

    async def runs(self, project: str | None, limit: int) -> dict[str, Any]:
        self.calls.append(("runs", project, limit))
        return {"runs": [{"id": i} for i in range(limit)]}

    async def events(self) -> AsyncIterator[dict[str, Any]]:
        queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        async with self.subscribed:
            self.subscribers.append(queue)
            self.subscribed.notify_all()
        try:
            while True:
                yield await queue.get()
        finally:
            self.subscribers.remove(queue)

    def recent_events(self, limit: int) -> list[dict[str, Any]]:
        self.calls.append(("recent_events", limit))
        return self.history[-limit:] if limit else []

    async def shutdown(self, stop_services: bool = False) -> None:
        self.calls.append(("shutdown",))
        assert self.server is not None
        self.server.close()
        await self.server.wait_closed()
        self.shut_down.set()

    def publish(self, n: int, **extra: Any) -> None:
        event = {
            "ts": time.time(),
            "level": "info",
            "project": "demo",
            "kind": "sync",
            "message": f"event {n}",
            "n": n,
            **extra,
        }
        self.history.append(event)
        for queue in self.subscribers:
            queue.put_nowait(event)

    async def wait_subscribers(self, n: int = 1) -> None:
        async with self.subscribed:
            await self.subscribed.wait_for(lambda: len(self.subscribers) >= n)
