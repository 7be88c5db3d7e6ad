"""systemd's notify protocol (sd_notify) with the standard library: one datagram per message.

Under ``Type=notify`` the agent says ``READY=1`` once its control socket is bound and the
registered projects are loaded, ``WATCHDOG=1`` from a timer on its event loop (a wedged loop stops
pinging and systemd restarts it; a busy worker thread does not), ``STATUS=`` a one-line summary,
and ``STOPPING=1`` when a real shutdown begins. Without ``NOTIFY_SOCKET`` every call does nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

NOTIFY_ENV = ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID")
STATUS_EVERY_S = 10.0
"""How often the summary is refreshed when no watchdog asks for a shorter beat."""


class Notifier:
    """Sends notify messages to systemd; inert when the process was not started by it."""

    def __init__(self, address: str | None, watchdog_usec: int | None) -> None:
        self.address = address
        self.watchdog_s = watchdog_usec / 1e6 if watchdog_usec else None
        self._sock: socket.socket | None = None
        self._status = ""

    @classmethod
    def from_env(cls, env: Mapping[str, str], pid: int) -> Notifier:
        """The notifier ``env`` asks for. ``WATCHDOG_PID`` naming another process (a parent that
        exec-ed us is the same pid) turns the watchdog off, as sd_watchdog_enabled does."""
        address = env.get("NOTIFY_SOCKET") or None
        usec: int | None = None
        with contextlib.suppress(ValueError):
            usec = int(env.get("WATCHDOG_USEC", "")) or None
        owner = env.get("WATCHDOG_PID")
        if owner and owner != str(pid):
            usec = None
        return cls(address, usec)

    @property
    def enabled(self) -> bool:
        return self.address is not None

    def send(self, **fields: Any) -> None:
        """One message, ``KEY=value`` lines; a failure to send is not the agent's failure."""
        if self.address is None:
            return
        message = "\n".join(f"{key}={value}" for key, value in fields.items()).encode()
        target = self.address
        if target.startswith("@"):  # Linux abstract namespace
            target = "\0" + target[1:]
        try:
            if self._sock is None:
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            self._sock.sendto(message, target)
        except OSError:
            pass

    def ready(self, status: str) -> None:
        self._status = status
        self.send(READY=1, STATUS=status, MAINPID=os.getpid())

    def stopping(self) -> None:
        self.send(STOPPING=1, STATUS="stopping")

    def status(self, status: str) -> None:
        """``STATUS=`` only when it changed."""
        if status != self._status:
            self._status = status
            self.send(STATUS=status)

    async def beat(self, summary: Callable[[], Awaitable[str]]) -> None:
        """Ping the watchdog at half its period (and refresh STATUS) until cancelled; the owner
        cancels it. A loop timer on purpose: a loop too stuck to run it is one to restart."""
        if self.address is None:
            return
        period = min(self.watchdog_s / 2, STATUS_EVERY_S) if self.watchdog_s else STATUS_EVERY_S
        while True:
            await asyncio.sleep(period)
            if self.watchdog_s:
                self.send(WATCHDOG=1)
            self.status(await summary())

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None


def summary(status: Mapping[str, Any]) -> str:
    """The agent's state in one line, from its status document (pure): links up, pairs syncing,
    runs going."""
    projects = status.get("projects") or []
    hosts = [h for p in projects for h in p.get("hosts", [])]
    pairs = [s for p in projects for s in p.get("pairs", [])]
    runs = [t for p in projects for t in p.get("triggers", []) if t.get("running")]
    up = sum(1 for h in hosts if h.get("state") == "up")
    syncing = sum(1 for s in pairs if s.get("state") == "syncing")
    halted = sum(1 for s in pairs if s.get("state") in ("halted", "failed"))
    parts = [
        f"{len(projects)} project{'s' if len(projects) != 1 else ''}",
        f"links {up}/{len(hosts)} up",
        f"{syncing}/{len(pairs)} pairs syncing",
        f"{len(runs)} run{'s' if len(runs) != 1 else ''} going",
    ]
    if halted:
        parts.append(f"{halted} halted")
    return ", ".join(parts)
