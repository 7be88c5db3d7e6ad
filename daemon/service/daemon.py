"""The per-user agent: every registered project's links, pairs, tunnels and triggers, one process.

:class:`Daemon` implements the control API (:class:`tether.service.control.DaemonAPI`). Projects are
registered by their tether.toml path and remembered in the state folder, so they come back after a
restart. Within a project there is one :class:`~tether.transport.link.Link` per host; every pair
session, tunnel, trigger and ``keep_running`` service of that host rides on it. Everything that
happens is an event: kept in a ring buffer for `tether logs`, streamed to `tether logs -f` and the
tray.
"""

from __future__ import annotations

import asyncio
import base64
import collections
import dataclasses
import json
import logging
import os
import signal
import sqlite3
import time
from collections.abc import AsyncGenerator, Callable, Mapping
from pathlib import Path
from typing import Any

from ..config import Config, TunnelConfig, load_config
from ..dirs import state_dir
from ..errors import NotFound, NotRegistered, TetherError
from ..reports.watcher import ReportWatcher
from ..results.store import ResultsStore, ingest_file
from ..runs.history import RunHistory, record_run
from ..runs.remote import RunSpec, command_argv, follow, start
from ..runs.remote import fetch as fetch_paths
from ..runs.triggers import TriggerRunner
from ..store import OffLoop
from ..sync.state import StateStore
from ..transport.link import Link
from ..transport.tunnel import Tunnel
from .control import serve
from .notify import NOTIFY_ENV, Notifier, summary
from .pair_session import PairSession

log = logging.getLogger(__name__)

REGISTRY = "projects.json"
EVENT_BUFFER = 2000


class EventBus:
    """Recent events for `tether logs`, and live copies for every follower."""

    def __init__(self, size: int = EVENT_BUFFER) -> None:
        self._recent: collections.deque[dict[str, Any]] = collections.deque(maxlen=size)
        self._followers: set[asyncio.Queue[dict[str, Any]]] = set()

    def emit(self, event: dict[str, Any]) -> None:
        event = {"ts": time.time(), "level": "info", **event}
        self._recent.append(event)
        for queue in self._followers:
            if queue.qsize() < 10_000:  # a stuck follower must not grow without bound
                queue.put_nowait(event)

    def recent(self, limit: int) -> list[dict[str, Any]]:
        return list(self._recent)[-limit:] if limit > 0 else []

    async def follow(self) -> AsyncGenerator[dict[str, Any], None]:
        queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self._followers.add(queue)
        try:
            while True:
                yield await queue.get()
        finally:
            self._followers.discard(queue)


class Service:
    """A tunnel's ``keep_running`` command: started if not running, restarted when it exits."""

    def __init__(self, tunnel: TunnelConfig, link: Link, bus: EventBus, project: str) -> None:
        self.tunnel, self.link, self.bus = tunnel, link, bus
        self.prefix = f"svc-{tunnel.name}-"
        self.restarts = 0
        self.run_id: str | None = None
        self._task: asyncio.Task[None] | None = None
        self._project = project

    def start(self) -> Service:
        self._task = asyncio.create_task(self._keep(), name=f"service {self.tunnel.name}")
        return self

    async def close(self, *, stop_remote: bool = False) -> None:
        """Stop keeping it; with ``stop_remote`` also stop it on the host (the project was
        unregistered). A daemon that merely restarts leaves it running and adopts it again."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        if stop_remote and self.run_id is not None:
            try:
                agent = await self.link.wait_agent(5)
                await agent.kill(self.run_id, signal="TERM", grace_s=3)
            except TetherError as exc:
                self.bus.emit(
                    {
                        "kind": "service.error",
                        "level": "warning",
                        "project": self._project,
                        "message": f"could not stop {self.run_id}: {exc.one_line()}",
                    }
                )

    async def _keep(self) -> None:
        backoff = 1.0
        while True:
            agent = await self.link.wait_agent()
            alive = [
                r
                for r in await agent.runs()
                if r["run_id"].startswith(self.prefix) and r.get("running")
            ]
            spec = RunSpec(host=self.link.host, pair=None, shell=self.tunnel.keep_running)
            if alive:
                spec.run_id = alive[-1]["run_id"]
            else:
                spec.run_id = self.prefix + spec.run_id
                await start(self.link, spec)
                self.bus.emit(
                    {
                        "kind": "service.started",
                        "project": self._project,
                        "message": f"{self.tunnel.keep_running!r} started as {spec.run_id}",
                    }
                )
            self.run_id = spec.run_id
            began = time.monotonic()
            try:
                # not its owner: a daemon that restarts adopts it again (see close)
                outcome = await follow(self.link, spec, lambda _chunk: None, owner=False)
            except TetherError as exc:
                self.bus.emit(
                    {
                        "kind": "service.error",
                        "level": "error",
                        "message": str(exc),
                        "project": self._project,
                    }
                )
                await asyncio.sleep(backoff)
                continue
            self.restarts += 1
            backoff = 1.0 if time.monotonic() - began > 30 else min(30.0, backoff * 2)
            self.bus.emit(
                {
                    "kind": "service.exited",
                    "level": "warning",
                    "project": self._project,
                    "message": f"{self.tunnel.keep_running!r} exited with status "
                    f"{outcome.status}; restarting in {backoff:.0f}s",
                }
            )
            await asyncio.sleep(backoff)


class Project:
    """One registered tether.toml and everything it asked for."""

    def __init__(self, config: Config, bus: EventBus) -> None:
        self.config, self.bus = config, bus
        self.name = str(config.path)
        self.stamp: tuple[int, int] | None = None
        """(mtime_ns, size) of tether.toml when loaded; the daemon reloads when it moves."""
        emit = self._emit
        used_hosts = {p.host for p in config.pairs.values()} | {
            t.host for t in config.tunnels.values()
        }
        watched = [t for t in config.reports.values() if t.watch]
        used_hosts |= {t.host for t in watched}
        self.links = {name: Link(config.host(name), on_event=emit) for name in sorted(used_hosts)}
        self.reports = [ReportWatcher(config, t, self.links[t.host], emit) for t in watched]
        self.triggers = [
            TriggerRunner(
                config,
                t,
                self.links[config.pairs[t.pair].host],
                on_event=emit,
                on_fetched=self._fetched,
            )
            for t in config.triggers.values()
        ]
        self.sessions = {
            name: PairSession(
                config, pair, self.links[pair.host], on_event=emit, on_landed=self._landed
            )
            for name, pair in config.pairs.items()
        }
        self.tunnels = [
            Tunnel(t, self.links[t.host], on_event=emit) for t in config.tunnels.values()
        ]
        self.services = [
            Service(t, self.links[t.host], bus, self.name)
            for t in config.tunnels.values()
            if t.keep_running
        ]

    async def start(self) -> None:
        for link in self.links.values():
            link.start()
        for tunnel in self.tunnels:
            try:
                await tunnel.start()
            except TetherError as exc:
                self._emit({"kind": "tunnel.error", "level": "error", "message": exc.one_line()})
        for session in self.sessions.values():
            session.start()
        for service in self.services:
            service.start()
        for watcher in self.reports:
            watcher.start()
        self._emit({"kind": "project.started", "message": f"watching {self.config.root}"})

    async def close(self, *, stop_services: bool = False) -> None:
        for trigger in self.triggers:
            await trigger.close()
        for service in self.services:
            await service.close(stop_remote=stop_services)
        parts: list[PairSession | Tunnel | ReportWatcher]
        parts = [*self.sessions.values(), *self.tunnels, *self.reports]
        for part in parts:
            await part.close()
        for link in self.links.values():
            await link.close()

    async def _landed(self, pair: Any, paths: list[str]) -> None:
        for trigger in self.triggers:
            if trigger.trigger.pair == pair.name:
                await trigger.notify(paths)

    async def _fetched(self, trigger: Any, spec: RunSpec, results: list[Path]) -> None:
        """Store the results files a trigger's run brought back (read and stored off the loop)."""
        if not results:
            return
        async with OffLoop(ResultsStore) as store:
            for path in results:
                try:
                    await store.run(_ingest, path, spec)
                except TetherError as exc:
                    self._emit(
                        {"kind": "results.error", "level": "error", "message": exc.one_line()}
                    )

    def _emit(self, event: dict[str, Any]) -> None:
        self.bus.emit({"project": self.name, **event})

    def pick(self, pair: str | None) -> list[PairSession]:
        if pair is None:
            return list(self.sessions.values())
        if pair not in self.sessions:
            raise NotFound(f"no pair named {pair!r} in {self.name}", "see `tether status`")
        return [self.sessions[pair]]

    def snapshot(self, conflicts: Mapping[str, int]) -> dict[str, Any]:
        """The project as `tether status` shows it; ``conflicts``: unresolved, per pair key."""
        return {
            "project": self.name,
            "notify": dataclasses.asdict(self.config.notify),
            "hosts": [link.snapshot() for link in self.links.values()],
            "pairs": [s.snapshot(conflicts) for s in self.sessions.values()],
            "tunnels": [t.snapshot() for t in self.tunnels],
            "triggers": [t.snapshot() for t in self.triggers],
            "reports": [w.snapshot() for w in self.reports],
            "services": [
                {"tunnel": s.tunnel.name, "run": s.run_id, "restarts": s.restarts}
                for s in self.services
            ],
        }


class Daemon:
    """The control API's implementation; owns every project."""

    def __init__(
        self, registry: Path | None = None, on_stopping: Callable[[], None] | None = None
    ) -> None:
        self.registry = registry or state_dir() / REGISTRY
        self.on_stopping = on_stopping
        """Called once when a real shutdown begins (the service manager hears STOPPING=1)."""
        self.bus = EventBus()
        self.projects: dict[str, Project] = {}
        self.started = time.time()
        self._stopped = asyncio.Event()
        self._stopping: asyncio.Task[None] | None = None
        self._config_watch: asyncio.Task[None] | None = None
        self._stops: dict[str, asyncio.Event] = {}
        self.config_poll_s = 2.0

    # -- lifecycle -----------------------------------------------------------------------------

    async def restore(self) -> None:
        """Bring back the projects registered before the last stop."""
        for path in await self._load_registry():
            if self.stop_requested:  # a SIGTERM while restoring: bring back no more
                return
            try:
                await self._add(path)
            except TetherError as exc:
                self.bus.emit(
                    {
                        "kind": "project.error",
                        "level": "error",
                        "project": path,
                        "message": f"not restored: {exc.one_line()}",
                    }
                )

    async def wait_stopped(self) -> None:
        await self._stopped.wait()

    @property
    def stop_requested(self) -> bool:
        return self._stopping is not None

    def request_stop(self) -> None:
        """Begin a shutdown from a signal handler (idempotent; the task is ours to await)."""
        if self._stopping is None:
            self._stopping = asyncio.create_task(self.shutdown(), name="shutdown")

    async def close(self, *, stop_services: bool = False) -> None:
        if self._config_watch is not None:
            self._config_watch.cancel()
            await asyncio.gather(self._config_watch, return_exceptions=True)
            self._config_watch = None
        for project in list(self.projects.values()):
            await project.close(stop_services=stop_services)
        self.projects.clear()

    def watch_configs(self) -> None:
        """Reload a project when its tether.toml changes (a broken edit keeps the running one)."""
        if self._config_watch is None:
            self._config_watch = asyncio.create_task(self._poll_configs(), name="config watch")

    async def _poll_configs(self) -> None:
        while True:
            await asyncio.sleep(self.config_poll_s)
            for path, project in list(self.projects.items()):
                stamp = await asyncio.to_thread(_stamp, path)
                if stamp == project.stamp or self.projects.get(path) is not project:
                    continue  # unchanged, or unregistered or reloaded meanwhile
                try:
                    await self._replace(path)
                except TetherError as exc:
                    project.stamp = stamp  # report a broken edit once, not every poll
                    self.bus.emit(
                        {
                            "kind": "project.error",
                            "level": "error",
                            "project": path,
                            "message": f"kept the running config: {exc.one_line()}",
                        }
                    )
                else:
                    self.bus.emit(
                        {
                            "kind": "project.reloaded",
                            "project": path,
                            "message": "tether.toml changed; reloaded",
                        }
                    )

    # -- DaemonAPI ---------------------------------------------------------------------------

    async def status(self) -> dict[str, Any]:
        """Every project's links, pairs, tunnels and triggers. A state database that cannot be
        read costs only the conflict counts (``state_error`` says why): status is how the user
        finds out what is wrong, so it must answer."""
        state_error: str | None = None
        try:
            async with OffLoop(StateStore) as store:
                conflicts = await store.run(StateStore.conflict_counts)
        except (sqlite3.Error, OSError) as exc:
            conflicts, state_error = {}, f"the state database cannot be read: {exc}"
        answer = {
            "pid": os.getpid(),
            "started": self.started,
            "projects": [p.snapshot(conflicts) for p in self.projects.values()],
        }
        if state_error is not None:
            answer["state_error"] = state_error
        return answer

    async def register(self, config_path: str) -> dict[str, Any]:
        path = await self._resolve(config_path)
        await self._replace(path)  # registering again re-reads the config
        await self._save_registry()
        return {"registered": path, "projects": list(self.projects)}

    async def unregister(self, config_path: str) -> dict[str, Any]:
        path = await self._resolve(config_path)
        project = self.projects.pop(path, None)
        if project is None:
            raise NotFound(f"{path} is not registered", "see `tether status`")
        await project.close(stop_services=True)
        await self._save_registry()
        self.bus.emit({"kind": "project.stopped", "project": path, "message": "unregistered"})
        return {"unregistered": path, "projects": list(self.projects)}

    async def pause(self, project: str | None, pair: str | None) -> dict[str, Any]:
        sessions = [s for p in await self._pick(project) for s in p.pick(pair)]
        for session in sessions:
            session.pause()
        return {"paused": [s.pair.name for s in sessions]}

    async def resume(self, project: str | None, pair: str | None) -> dict[str, Any]:
        sessions = [s for p in await self._pick(project) for s in p.pick(pair)]
        for session in sessions:
            if session.link.state.value == "failed":
                session.link.retry()
            session.resume()
        return {"resumed": [s.pair.name for s in sessions]}

    async def run_trigger(self, project: str, trigger: str) -> dict[str, Any]:
        """Fire ``trigger`` of ``project`` now, whatever changed (the tray's "Run now")."""
        (found,) = await self._pick(project)
        for runner in found.triggers:
            if runner.trigger.name == trigger:
                await runner.run_now()
                return {"fired": trigger}
        raise NotFound(f"no trigger named {trigger!r} in {found.name}", "see `tether status`")

    async def reconnect(self, project: str | None) -> dict[str, Any]:
        """Links given up on try again now; links that look up are dropped and made again (a
        laptop back from sleep holds connections that are dead without knowing it)."""
        links = [link for p in await self._pick(project) for link in p.links.values()]
        for link in links:
            if link.state.value == "failed":
                link.retry()
            elif link.state.value == "up":
                link.cut()
        return {"reconnecting": [link.host.name for link in links]}

    async def flush(self, project: str | None, timeout_s: float) -> dict[str, Any]:
        started = time.monotonic()
        sessions = [s for p in await self._pick(project) for s in p.sessions.values()]
        await asyncio.gather(*(s.flush(timeout_s) for s in sessions))
        return {
            "flushed": [s.pair.name for s in sessions],
            "seconds": round(time.monotonic() - started, 4),
        }

    async def sync(
        self,
        project: str,
        pairs: list[str] | None,
        timeout_s: float,
        accept_deletes: bool = False,
    ) -> dict[str, Any]:
        """`tether sync` through the daemon: flush these pairs (all: None) and report what
        landed. ``{"registered": false}`` when the project or a pair is not known here (the
        CLI then syncs on its own)."""
        found = self.projects.get(await self._resolve(project))
        if found is None or any(name not in found.sessions for name in pairs or ()):
            return {"registered": False}
        sessions = [found.sessions[name] for name in pairs] if pairs else found.sessions.values()
        if accept_deletes:
            for session in sessions:
                session.accept_deletes()
        reports = await asyncio.gather(*(s.sync_now(timeout_s) for s in sessions))
        return {"registered": True, "pairs": [r.to_json() for r in reports]}

    async def run(
        self, project: str, pair: str | None, argv: list[str], sync: bool, fetch: list[str]
    ) -> AsyncGenerator[dict[str, Any], None]:
        """`tether run` through the daemon: its open link and warm agent, no connect, no start.

        Events: ``synced`` (when asked), ``started``, ``output`` (base64), ``fetched``, ``exit``.
        Leaving early (the client went away) stops the run's process group.
        """
        found = self.projects.get(await self._resolve(project))
        if found is None or (pair is not None and pair not in found.sessions):
            raise NotRegistered(f"{project} is not registered with the daemon", "`tether start`")
        pair_cfg = found.config.pair(pair)
        session, link = found.sessions[pair_cfg.name], found.links[pair_cfg.host]
        if sync:
            await session.flush(60.0)
            yield {"event": "synced", "pair": pair_cfg.name}
        host = found.config.host(pair_cfg.host)
        spec = RunSpec(host=host, pair=pair_cfg, argv=command_argv(argv, host.python))
        stop = self._stops[spec.run_id] = asyncio.Event()
        chunks: asyncio.Queue[bytes] = asyncio.Queue()
        async with record_run(
            spec.run_id,
            project=found.name,
            host=host.name,
            pair=pair_cfg.name,
            command=spec.display,
        ) as recorded:
            self.bus.emit(
                {
                    "kind": "run.started",
                    "project": found.name,
                    "run": spec.run_id,
                    "message": f"{spec.display} (tether run)",
                }
            )
            await start(link, spec)
            yield {"event": "started", "run_id": spec.run_id}

            async def take(chunk: bytes) -> None:
                await recorded.write(chunk)
                chunks.put_nowait(chunk)

            task = asyncio.create_task(follow(link, spec, take, stop=stop))
            try:
                while not (task.done() and chunks.empty()):
                    getter = asyncio.ensure_future(chunks.get())
                    await asyncio.wait({getter, task}, return_when=asyncio.FIRST_COMPLETED)
                    if getter.done():
                        data = base64.b64encode(getter.result()).decode()
                        yield {"event": "output", "data": data}
                    else:
                        getter.cancel()
            finally:  # the client left (or we were cancelled): the run must not outlive that
                if not task.done():
                    stop.set()
                    await asyncio.gather(task, return_exceptions=True)
                self._stops.pop(spec.run_id, None)
                if not task.cancelled() and task.exception() is None:
                    recorded.outcome = task.result()  # "stopped" when the client went away
            outcome = task.result()
        if fetch:
            reports = await fetch_paths(found.config, link, pair_cfg, fetch)
            yield {"event": "fetched", "copied": sum(r.copied for r in reports)}
        yield {
            "event": "exit",
            "run_id": spec.run_id,
            "status": outcome.status,
            "reason": outcome.reason,
        }

    async def stop_run(self, run_id: str) -> dict[str, Any]:
        stop = self._stops.get(run_id)
        if stop is None:
            raise NotFound(f"no run {run_id} is going on here", "see `tether runs`")
        stop.set()
        return {"stopping": run_id}

    async def runs(self, project: str | None, limit: int) -> dict[str, Any]:
        path = await self._resolve(project) if project else None
        async with OffLoop(RunHistory) as history:
            records = await history.run(lambda h: h.recent(limit, path))
        return {"runs": [r.to_json() for r in records]}

    def events(self) -> AsyncGenerator[dict[str, Any], None]:
        return self.bus.follow()

    def recent_events(self, limit: int) -> list[dict[str, Any]]:
        return self.bus.recent(limit)

    async def shutdown(self, stop_services: bool = False) -> None:
        """Stop every project; its links close, so their host agents end. ``stop_services``
        (`tether stop --all`) stops the keep_running services too; a SIGTERM (a service manager
        restarting the daemon) leaves them for the next daemon to adopt."""
        self.bus.emit({"kind": "daemon.stopping", "message": "stopping"})
        if self.on_stopping is not None:
            self.on_stopping()
        await self.close(stop_services=stop_services)
        self._stopped.set()

    # -- helpers -----------------------------------------------------------------------------

    async def _add(self, path: str) -> None:
        await self._replace(path)

    async def _replace(self, path: str) -> None:
        """Load ``path``'s config, then (only if it is valid) swap it in for the running one."""
        stamp = await asyncio.to_thread(_stamp, path)
        config = await asyncio.get_running_loop().run_in_executor(None, load_config, Path(path))
        old = self.projects.get(path)  # stays listed while it closes: no moment without it
        if old is not None:
            await old.close()
        project = Project(config, self.bus)
        project.stamp = stamp
        self.projects[path] = project
        await project.start()
        if self.stop_requested and self.projects.get(path) is project:
            # The shutdown's close may have passed this project by while it was loading.
            del self.projects[path]
            await project.close()

    async def _resolve(self, project: str) -> str:
        """The config path with symlinks resolved: one project, however the user named it
        (off the loop: resolving is an lstat per part, each may wait on a slow disk)."""
        return await asyncio.to_thread(_real_path, project)

    async def _pick(self, project: str | None) -> list[Project]:
        if project is None:
            return list(self.projects.values())
        path = await self._resolve(project)
        if path not in self.projects:
            raise NotFound(f"{path} is not registered with the daemon", "run `tether start`")
        return [self.projects[path]]

    async def _load_registry(self) -> list[str]:
        try:
            data = json.loads(await asyncio.to_thread(self.registry.read_text))
        except FileNotFoundError:
            return []
        except (OSError, ValueError) as exc:
            self.bus.emit(
                {
                    "kind": "daemon.warning",
                    "level": "warning",
                    "message": f"ignoring unreadable {self.registry}: {exc}",
                }
            )
            return []
        return [p for p in data.get("projects", []) if isinstance(p, str)]

    async def _save_registry(self) -> None:
        """Write the registered projects (off the loop: a write, a chmod and a rename)."""
        await asyncio.to_thread(_write_registry, self.registry, sorted(self.projects))


def _write_registry(registry: Path, projects: list[str]) -> None:
    """The registry file, whole or not at all (a temporary beside it, renamed into place)."""
    tmp = registry.with_suffix(".tmp")
    tmp.write_text(json.dumps({"projects": projects}, indent=1))
    os.chmod(tmp, 0o600)
    os.replace(tmp, registry)


def _real_path(project: str) -> str:
    return str(Path(project).resolve())


def _ingest(store: ResultsStore, path: Path, spec: RunSpec) -> int:
    return ingest_file(path, run_id=spec.run_id, host=spec.host.name, store=store)


def _stamp(path: str) -> tuple[int, int] | None:
    try:
        info = os.stat(path)
    except OSError:
        return None
    return info.st_mtime_ns, info.st_size


async def run_daemon(socket_path: Path | None = None) -> None:
    """`tether daemon`: serve the control API until asked to stop (or SIGTERM).

    Under systemd (``NOTIFY_SOCKET``) it reports READY once the socket is bound and the registered
    projects are loaded, pings the watchdog from this loop, and says STOPPING when it stops.
    """
    notifier = Notifier.from_env(os.environ, os.getpid())
    for key in NOTIFY_ENV:  # a run or helper process must not speak for the agent
        os.environ.pop(key, None)
    daemon = Daemon(on_stopping=notifier.stopping)

    async def line() -> str:
        return summary(await daemon.status())

    # A service manager may stop the daemon the moment its socket appears: the handlers are in
    # place before it is bound, so a stop at any point after that is a clean one (exit 0).
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, daemon.request_stop)
    async with await serve(daemon, socket_path) as server:
        daemon.bus.emit({"kind": "daemon.started", "message": f"listening on {server.path}"})
        beat = asyncio.create_task(notifier.beat(line), name="watchdog")  # also while restoring
        try:
            await daemon.restore()
            if not daemon.stop_requested:
                daemon.watch_configs()
                notifier.ready(await line())
            await daemon.wait_stopped()
            if daemon._stopping is not None:
                await daemon._stopping
        finally:
            beat.cancel()
            await asyncio.gather(beat, return_exceptions=True)
            notifier.close()
