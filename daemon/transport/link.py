"""A host's supervised connection: one link per host that heals itself and says how it is.

The link owns an SSH connection (and, when the host has python3, the remote agent riding on it).
It notices a dead connection through SSH keepalives within a few seconds, reconnects with
exponential backoff and jitter (tenacity), and cuts a backoff wait short the moment a cheap TCP
probe sees the host's port come back, so an outage costs the outage, not the outage plus a
backoff step. A link that stayed up longer than the gate time starts its next backoff from the
beginning; one that flaps keeps backing off. Refused keys and bad host keys are permanent: the
link stops retrying and shows the error until :meth:`Link.retry` is called.

Consumers never hold a connection across outages: they ask :meth:`Link.wait_up` each time.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from enum import Enum
from typing import Any

import asyncssh
from tenacity import AsyncRetrying, retry_if_exception_type, wait_exponential_jitter

from ..aio import condition_within
from ..config import HostConfig
from ..errors import AuthRefused, BadHostData, ConfigError, HostUnreachable, TetherError
from .agent_client import AgentClient
from .ssh import Target, connect, resolve_target

log = logging.getLogger(__name__)

PERMANENT_ERRORS = (AuthRefused, ConfigError, BadHostData)
CANCEL_AGAIN_S = 0.2
"""How long :func:`cancel_and_wait` gives a cancelled task to end before cancelling it again."""


class LinkState(str, Enum):
    """Where a link stands."""

    CONNECTING = "connecting"
    """First connection under way."""
    UP = "up"
    """Connected; the agent (if any) answers."""
    DOWN = "down"
    """Lost; reconnecting with backoff."""
    FAILED = "failed"
    """A permanent error (key refused, host key unknown or changed); waiting for the user."""
    STOPPED = "stopped"
    """Closed on purpose."""


class Link:
    """One supervised SSH connection to a host."""

    def __init__(
        self,
        host: HostConfig,
        *,
        keepalive_interval_s: float = 1.0,
        keepalive_count_max: int = 3,
        initial_backoff_s: float = 0.5,
        max_backoff_s: float = 30.0,
        gate_s: float = 30.0,
        probe_interval_s: float = 0.1,
        start_agent: bool = True,
        on_event: Callable[[dict[str, Any]], None] | None = None,
    ) -> None:
        self.host = host
        self.keepalive_interval_s = keepalive_interval_s
        self.keepalive_count_max = keepalive_count_max
        self.initial_backoff_s = initial_backoff_s
        self.max_backoff_s = max_backoff_s
        self.gate_s = gate_s
        self.probe_interval_s = probe_interval_s
        self.start_agent = start_agent
        self._on_event = on_event
        self.state = LinkState.CONNECTING
        self.state_since = time.monotonic()
        """When the link entered its state (the tray tells a blip from an outage by it)."""
        self.last_error: TetherError | None = None
        self.connected_at: float | None = None
        self.connect_seconds: float | None = None
        self.reconnects = 0
        self.generation = 0
        self.agent: AgentClient | None = None
        self.agent_problem: str | None = None
        self._agent_starting: asyncio.Task[AgentClient | None] | None = None
        self._pinger: asyncio.Task[None] | None = None
        self.rtt_s: float | None = None
        self.ping_interval_s = 5.0
        self._conn: asyncssh.SSHClientConnection | None = None
        self._changed = asyncio.Condition()
        self._retry = asyncio.Event()
        self._flaps = 0
        self._task: asyncio.Task[None] | None = None

    # -- consumers ---------------------------------------------------------------------------

    async def wait_up(self, timeout_s: float | None = None) -> asyncssh.SSHClientConnection:
        """The live connection; waits up to ``timeout_s`` for one.

        Raises the link's permanent error when it has failed, or HostUnreachable on timeout.
        """

        def ready() -> bool:
            up = self.state is LinkState.UP and self._conn is not None
            return up or self.state in (LinkState.FAILED, LinkState.STOPPED)

        async with self._changed:  # decided under the lock: _set() cannot move the state now
            try:
                await condition_within(self._changed, ready, timeout_s)
            except asyncio.TimeoutError:
                if isinstance(self.last_error, HostUnreachable):
                    raise HostUnreachable(
                        self.last_error.message, self.last_error.hint
                    ) from None  # the classified reason ("connection refused", ...)
                raise HostUnreachable(
                    f"{self.host.name}: the link is {self.state.value}",
                    "tether keeps reconnecting; see `tether status`",
                ) from None
            if self.state is LinkState.UP and self._conn is not None:
                return self._conn
            if self.state is LinkState.STOPPED:
                raise HostUnreachable(f"{self.host.name}: the link was closed")
            assert self.last_error is not None, "FAILED always records its error"
            raise self.last_error

    async def wait_agent(self, timeout_s: float | None = None) -> AgentClient:
        """The agent on the live connection (raises if the host has no usable python3).

        The agent starts beside the connection, not before it is reported up, so tunnels do
        not wait for the host's python to start. A start that failed (the connection died under
        it, or the host ended or refused the agent) is waited past: see :meth:`_move_past`.
        """
        deadline = None if timeout_s is None else time.monotonic() + timeout_s

        def left() -> float | None:
            return None if deadline is None else max(0.0, deadline - time.monotonic())

        while True:
            await self.wait_up(left())
            starting = self._agent_starting
            if starting is None:  # dropped between wait_up and here: wait for the next one
                await asyncio.sleep(0.01)
                continue
            # Not `await shield(starting)`: a start the link cancels (its connection dropped)
            # would cancel this caller too, and a session's sync loop would end for good.
            done, _ = await asyncio.wait({starting}, timeout=left())
            if not done:
                raise HostUnreachable(f"{self.host.name}: the agent did not start in time")
            failure = None if starting.cancelled() else starting.exception()
            if starting.cancelled() or isinstance(
                failure, (HostUnreachable, asyncssh.Error, OSError)
            ):
                await self._move_past(starting, left())
                continue
            if failure is not None:
                raise failure
            agent = starting.result()
            if agent is not None:
                return agent
            raise TetherError(
                f"{self.host.name}: no agent on the host: {self.agent_problem}",
                "install python3 >= 3.8 there, or set `python` in tether.toml",
            )

    async def _move_past(
        self, starting: asyncio.Task[AgentClient | None], timeout_s: float | None
    ) -> None:
        """Wait until the link holds a connection other than the one whose agent start failed.

        Looping straight back would find the same failed start on a link that still says up,
        without ever yielding: the supervisor could not mark it down, and the whole event loop
        (every pair's flush, the tunnels, the control API) would freeze. When the connection
        outlived the failed start (the host ended the agent or refused its session; the start
        timed out), it is dropped, so that the link reconnects and starts a fresh agent.
        """
        if self._agent_starting is starting and not starting.cancelled():
            error = starting.exception()
            reason = str(error) or type(error).__name__  # a timeout's text is empty
            self._event("warning", f"the agent did not start ({reason}); reconnecting")
            self.cut()

        def moved() -> bool:
            gone = self.state in (LinkState.FAILED, LinkState.STOPPED)
            return gone or self._agent_starting is not starting

        async with self._changed:
            try:
                await condition_within(self._changed, moved, timeout_s)
            except asyncio.TimeoutError:
                raise HostUnreachable(
                    f"{self.host.name}: the agent did not start in time"
                ) from None

    def snapshot(self) -> dict[str, Any]:
        """What `tether status` shows for this link."""
        up_for = time.monotonic() - self.connected_at if self.connected_at else None
        return {
            "host": self.host.name,
            "state": self.state.value,
            "state_for_s": round(time.monotonic() - self.state_since, 1),
            "up_for_s": round(up_for, 1)
            if up_for is not None and self.state is LinkState.UP
            else None,
            "connect_s": round(self.connect_seconds, 4) if self.connect_seconds else None,
            "rtt_ms": round(self.rtt_s * 1000, 2) if self.rtt_s is not None else None,
            "reconnects": self.reconnects,
            "next_backoff_s": self.initial_backoff(),
            "last_error": self.last_error.one_line() if self.last_error else None,
            "agent": self.agent is not None,
        }

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> Link:
        """Start supervising (idempotent)."""
        if self._task is None:
            self._task = asyncio.create_task(self._supervise(), name=f"link {self.host.name}")
        return self

    def retry(self) -> None:
        """Leave the FAILED state and try again (after the user fixed keys or trust)."""
        self._retry.set()

    def cut(self) -> None:
        """Drop the current connection (tests, or a peer that sent garbage); the link heals."""
        if self._conn is not None:
            self._conn.abort()

    async def close(self) -> None:
        if self._task is not None:
            await cancel_and_wait(self._task)
            self._task = None
        await self._drop()
        await self._set(LinkState.STOPPED)

    async def __aenter__(self) -> Link:
        return self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # -- the supervisor ----------------------------------------------------------------------

    async def _supervise(self) -> None:
        loop = asyncio.get_running_loop()
        target = await loop.run_in_executor(None, resolve_target, self.host)
        while True:
            try:
                await self._connect_with_backoff(target)
            except PERMANENT_ERRORS as exc:
                self.last_error = exc
                self._event("error", f"giving up until asked again: {exc.one_line()}")
                await self._set(LinkState.FAILED)
                await self._retry.wait()
                self._retry.clear()
                self._flaps = 0
                await self._set(LinkState.CONNECTING)
                continue
            assert self._conn is not None
            await self._conn.wait_closed()
            up_for = time.monotonic() - (self.connected_at or time.monotonic())
            self._flaps = 0 if up_for >= self.gate_s else self._flaps + 1
            await self._drop()
            self.last_error = HostUnreachable(f"{self.host.name}: connection lost")
            self._event("down", f"connection lost after {up_for:.1f}s up; reconnecting")
            await self._set(LinkState.DOWN)

    def initial_backoff(self) -> float:
        """The first wait of the next outage: doubled for each flap (up for less than the gate)."""
        return min(self.max_backoff_s, self.initial_backoff_s * 2**self._flaps)

    async def _connect_with_backoff(self, target: Target) -> None:
        initial = self.initial_backoff()
        retrying = AsyncRetrying(
            retry=retry_if_exception_type(HostUnreachable),
            wait=wait_exponential_jitter(
                multiplier=initial, max=self.max_backoff_s, jitter=initial / 2
            ),
            sleep=lambda delay: self._sleep_or_probe(target, delay),
            before_sleep=self._note_failure,
            reraise=True,
        )
        async for attempt in retrying:
            with attempt:
                await self._connect_once()

    def _note_failure(self, state: Any) -> None:
        exc = state.outcome.exception() if state.outcome else None
        if isinstance(exc, TetherError):
            self.last_error = exc
        delay = state.next_action.sleep if state.next_action else 0
        self._event("retry", f"attempt {state.attempt_number} failed ({exc}); next in {delay:.1f}s")

    async def _sleep_or_probe(self, target: Target, delay: float) -> None:
        """Sleep ``delay``, but wake as soon as the host's sshd goes from silent to answering."""
        deadline = time.monotonic() + delay
        if target.proxy_jump:
            await asyncio.sleep(delay)
            return
        seen_closed = False
        while (left := deadline - time.monotonic()) > 0:
            started = time.monotonic()
            if await _port_open(target.hostname, target.port, min(left, 0.5)):
                if seen_closed:
                    return
            else:
                seen_closed = True
            spent = time.monotonic() - started
            await asyncio.sleep(max(0.0, min(self.probe_interval_s - spent, left)))

    async def _connect_once(self) -> None:
        started = time.monotonic()
        conn = await connect(
            self.host,
            keepalive_interval=self.keepalive_interval_s,
            keepalive_count_max=self.keepalive_count_max,
        )
        self.connect_seconds = time.monotonic() - started
        self._conn, self.agent_problem = conn, None
        self._agent_starting = asyncio.create_task(self._start_agent(conn), name="agent start")
        self.connected_at = time.monotonic()
        if self.generation:
            self.reconnects += 1
        self.generation += 1
        self.last_error = None
        self._event("up", f"connected in {self.connect_seconds * 1000:.0f} ms")
        await self._set(LinkState.UP)

    async def _start_agent(self, conn: asyncssh.SSHClientConnection) -> AgentClient | None:
        if not self.start_agent:
            self.agent_problem = "not started (start_agent=False)"
            return None
        try:
            self.agent = await AgentClient.start(conn, python=self.host.python)
        except (HostUnreachable, BadHostData):
            raise  # the connection died, or the host is lying: wait_agent retries or reports
        except TetherError as exc:
            self.agent_problem = exc.message
            self._event("warning", f"no agent: {exc.one_line()}")
            return None
        self._pinger = asyncio.create_task(self._ping(self.agent), name="agent ping")
        return self.agent

    async def _ping(self, agent: AgentClient) -> None:
        """Measure the round trip to the agent now and then (`tether status` shows it)."""
        while True:
            started = time.monotonic()
            try:
                await asyncio.wait_for(agent.hello(), 10)
            except (TetherError, asyncio.TimeoutError):
                return  # the link's keepalive decides what a silent host means
            self.rtt_s = time.monotonic() - started
            await asyncio.sleep(self.ping_interval_s)

    async def _drop(self) -> None:
        async with self._changed:
            starting, conn, pinger = self._agent_starting, self._conn, self._pinger
            self._agent_starting, self._conn, self._pinger = None, None, None
        self.rtt_s = None
        for task in (starting, pinger):
            if task is not None:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
        agent, self.agent = self.agent, None
        if agent is not None:
            await agent.close()
        if conn is not None:
            conn.abort()
            await conn.wait_closed()

    async def _set(self, state: LinkState) -> None:
        async with self._changed:
            if state is not self.state:
                self.state_since = time.monotonic()
            self.state = state
            self._changed.notify_all()

    def _event(self, kind: str, message: str) -> None:
        log.info("link %s: %s", self.host.name, message)
        if self._on_event is not None:
            self._on_event({"kind": f"link.{kind}", "host": self.host.name, "message": message})


async def cancel_and_wait(task: asyncio.Task[Any]) -> None:
    """Cancel ``task`` and wait until it has ended, cancelling it again while it has not.

    One cancel is not always enough: before Python 3.12, ``asyncio.wait_for`` drops a cancel
    that arrives just as the call it waits on finishes (it returns that call's result or raises
    its error instead), and asyncssh's connect and the link's port probes wait that way. A
    supervisor that lost its cancel goes on reconnecting to a host that is down, and whoever
    closes the link (the daemon, on unregister or shutdown) would wait for it forever.
    """
    while not task.done():
        task.cancel()
        await asyncio.wait({task}, timeout=CANCEL_AGAIN_S)
    await asyncio.gather(task, return_exceptions=True)  # its end is ours: take what it raised


async def _port_open(host: str, port: int, timeout_s: float) -> bool:
    """True when an SSH server answers at host:port with its banner.

    A bare TCP accept is not enough: a NAT box, a proxy or a half-started sshd accepts and then
    says nothing, and waking the reconnect for those would only burn an attempt.
    """
    writer: asyncio.StreamWriter | None = None
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout_s)
        banner = await asyncio.wait_for(reader.readline(), timeout_s)
        return banner.startswith(b"SSH-")
    except (OSError, asyncio.TimeoutError):
        return False
    finally:
        if writer is not None:
            writer.close()
