"""Remote runs: a command executed on the host, followed to its end, its artifacts fetched.

A run is started by the agent in its own session with its output going to a log *on the host*,
so it outlives the link: when the connection drops mid-run, :func:`follow` waits for the link to
come back and reattaches at the byte offset it had reached, so no output is lost or repeated.
Stopping a run (Ctrl-C, a signal, a timeout, ``on_busy = "restart"``, its follower leaving early)
signals its whole process group and escalates to SIGKILL after a grace period, so no child is
left behind.

No run is orphaned on the host either: a run nobody is attached to for the host's
``orphan_timeout`` (its client killed with SIGKILL, the link lost for good) is stopped there by its
supervisor and ends with reason "orphaned" (see the agent's ``exec``). Reattaching sooner, as
:func:`follow` does after a drop and ``tether logs -f RUN`` does, keeps it going.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import re
import secrets
import shlex
import signal as signal_module
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from ..config import Config, HostConfig, PairConfig, PairMode
from ..dirs import private_folder
from ..errors import BadHostData, HostUnreachable, TetherError
from ..sync.engine import SyncReport, sync_pair
from ..sync.paths import check_relpath
from ..transport.endpoints import SSH
from ..transport.link import Link
from .bundle import LAUNCHER, PACKAGE, cache_dir_of, upload_kernels

log = logging.getLogger(__name__)

GRACE_S = 5.0


def command_argv(words: Sequence[str], python: str) -> list[str]:
    """What runs on the host for ``tether run -- WORDS``: a ``.py`` file or ``-m module`` runs
    with the host's python; anything else runs as typed (no shell, so no re-quoting)."""
    if not words:
        raise TetherError(
            "nothing to run", "put the command after `--`, e.g. `tether run -- nvidia-smi`"
        )
    first = words[0]
    if first == "-m" or first.endswith(".py"):
        return [*shlex.split(python), *words]
    return list(words)


def exit_status(exit_code: int | None, signal: int | None) -> int:
    """The status a local shell would report: the exit code, or 128+N for a signal N."""
    if signal:
        return 128 + signal
    return exit_code if exit_code is not None else 1


def signal_number(value: object) -> int | None:
    """A signal as the host reported it ("SIGKILL", "KILL", 9) → its number; validated."""
    if value is None or value == "":
        return None
    if isinstance(value, int) and not isinstance(value, bool) and 0 < value < 128:
        return value
    if isinstance(value, str):
        name = value.upper() if value.upper().startswith("SIG") else f"SIG{value.upper()}"
        if name in signal_module.Signals.__members__:
            return int(signal_module.Signals[name])
    raise BadHostData(f"the host reported an unknown signal: {value!r}")


def exit_code_of(value: object) -> int | None:
    if value is None:
        return None
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 256:
        return value
    raise BadHostData(f"the host reported an impossible exit code: {value!r}")


HOST_REASONS = frozenset({"exited", "stopped", "orphaned"})


def host_reason(value: object) -> str:
    """Why the host says a run ended; validated (older agents say nothing: "exited")."""
    if value is None:
        return "exited"
    if isinstance(value, str) and value in HOST_REASONS:
        return value
    raise BadHostData(f"the host reported an unknown reason for a run's end: {value!r}")


def new_run_id() -> str:
    return time.strftime("%Y%m%d-%H%M%S-") + secrets.token_hex(3)


@dataclass
class RunSpec:
    """What to run, where, and under which limits."""

    host: HostConfig
    pair: PairConfig | None
    """Whose remote folder is the working folder; None: ``cwd`` (default the host's home)."""
    argv: list[str] | None = None
    shell: str | None = None
    """A trigger's ``run`` string, given to ``/bin/sh -c`` on the host."""
    env: dict[str, str] = field(default_factory=dict)
    timeout_s: float | None = None
    run_id: str = field(default_factory=new_run_id)
    cwd: str | None = None

    @property
    def workdir(self) -> str:
        return self.cwd or (self.pair.remote if self.pair is not None else "~")

    @property
    def display(self) -> str:
        return self.shell if self.shell is not None else shlex.join(self.argv or [])


@dataclass
class RunOutcome:
    run_id: str
    exit_code: int | None
    signal: int | None
    duration_s: float
    reason: str = "exited"
    """exited, timeout, stopped (Ctrl-C, a signal, a restart, ``tether runs stop``), orphaned
    (nobody followed it for the host's orphan_timeout), lost (the host forgot the run)."""
    reattached: int = 0

    @property
    def status(self) -> int:
        return exit_status(self.exit_code, self.signal)


_KERNELS_MODULE = re.compile(
    r"(?<![^\s;&|(])(?P<python>\S*python[0-9.]*)\s+-m\s+" + re.escape(PACKAGE) + r"(?=\s|$|;)"
)


def uses_kernels(spec: RunSpec) -> bool:
    if spec.argv is not None:
        return any(a == "-m" and b == PACKAGE for a, b in itertools.pairwise(spec.argv))
    return bool(_KERNELS_MODULE.search(spec.shell or ""))


def pin_kernels(spec: RunSpec, cache: str) -> RunSpec:
    """Make ``python -m tether_kernels`` run tether's uploaded copy: the launcher puts the suite's
    folder in the host's cache first on sys.path (see :mod:`tether.runs.bundle`)."""
    if spec.argv is not None:
        argv = list(spec.argv)
        for i in range(len(argv) - 1):
            if argv[i] == "-m" and argv[i + 1] == PACKAGE:
                argv[i : i + 2] = ["-c", LAUNCHER, cache]
                break
        return replace(spec, argv=argv)
    launcher = f"-c {shlex.quote(LAUNCHER)} {shlex.quote(cache)}"
    shell = _KERNELS_MODULE.sub(lambda m: f"{m.group('python')} {launcher}", spec.shell or "")
    return replace(spec, shell=shell)


async def start(link: Link, spec: RunSpec) -> dict[str, Any]:
    """Start ``spec`` on the host (cwd = the pair's remote root, the host's venv active).

    A command that runs ``python -m tether_kernels`` gets tether's suite uploaded first and pinned
    ahead of any same-named folder of the user's.
    """
    agent = await link.wait_agent(30)
    if uses_kernels(spec):
        await upload_kernels(agent)
        spec = pin_kernels(spec, cache_dir_of(agent))
    return await agent.exec(
        spec.shell if spec.shell is not None else (spec.argv or []),
        cwd=spec.workdir,
        env=dict(spec.env),
        venv=spec.host.venv,
        run_id=spec.run_id,
        orphan_s=spec.host.orphan_timeout_s,
    )


async def follow(
    link: Link,
    spec: RunSpec,
    on_output: Callable[[bytes], Any],
    *,
    stop: asyncio.Event | None = None,
    owner: bool = True,
) -> RunOutcome:
    """Stream a started run's output until it ends; reattach across link drops.

    ``stop`` set → the process group gets SIGINT, then SIGKILL after a grace period; the
    outcome's reason says "stopped". A timeout does the same with SIGTERM. The ``owner`` of a
    run (what started it) also stops it when it leaves early: cancelled, or its output could not
    be delivered; an onlooker (``tether logs -f RUN``) just detaches. A link that stays away
    longer than the host's orphan_timeout finds the run stopped there: waiting longer is moot.
    """
    try:
        return await _follow(link, spec, on_output, stop or asyncio.Event())
    except BaseException:
        if owner:
            await asyncio.shield(_abandon(link, spec))
        raise


async def _abandon(link: Link, spec: RunSpec) -> None:
    """Stop the process group of a run its owner leaves early, if the link lets us now; the
    host's orphan rule stops it otherwise."""
    try:
        agent = await link.wait_agent(2)
        await agent.kill(spec.run_id, signal="TERM", grace_s=GRACE_S)
    except (TetherError, OSError) as exc:
        log.warning(
            "run %s: not stopped now (%s); the host stops it when orphaned", spec.run_id, exc
        )


async def _follow(
    link: Link, spec: RunSpec, on_output: Callable[[bytes], Any], stop: asyncio.Event
) -> RunOutcome:
    reconnect_timeout_s = spec.host.orphan_timeout_s
    started = time.monotonic()
    offset, reattached, reason = 0, 0, "exited"
    deadline = started + spec.timeout_s if spec.timeout_s else None

    def count(chunk: bytes) -> Any:
        nonlocal offset
        offset += len(chunk)
        return on_output(chunk)

    while True:
        try:
            agent = await link.wait_agent(reconnect_timeout_s)
            attach = asyncio.create_task(agent.attach(spec.run_id, offset=offset, on_output=count))
            watchers: list[asyncio.Task[object]] = [asyncio.create_task(stop.wait())]
            if deadline is not None:
                watchers.append(
                    asyncio.create_task(asyncio.sleep(max(0, deadline - time.monotonic())))
                )
            try:
                done, _ = await asyncio.wait(
                    [attach, *watchers], return_when=asyncio.FIRST_COMPLETED
                )
                if attach not in done:
                    reason = "stopped" if stop.is_set() else "timeout"
                    signal = "INT" if stop.is_set() else "TERM"
                    await agent.kill(spec.run_id, signal=signal, grace_s=GRACE_S)
                result = await attach
            finally:  # every task here has this owner, also when follow() itself is cancelled
                for task in (*watchers, attach):
                    task.cancel()
                await asyncio.gather(*watchers, attach, return_exceptions=True)
        except HostUnreachable:
            if link.state.value == "failed":
                raise
            reattached += 1
            log.info("run %s: link lost; reattaching at byte %d", spec.run_id, offset)
            continue
        if result.get("lost"):
            reason = "lost"
        elif reason == "exited":
            reason = host_reason(result.get("reason"))
        return RunOutcome(
            spec.run_id,
            exit_code_of(result.get("exit_code")),
            signal_number(result.get("signal")),
            float(result.get("duration_s") or time.monotonic() - started),
            reason,
            reattached,
        )


async def run_to_end(
    link: Link,
    spec: RunSpec,
    on_output: Callable[[bytes], Any],
    *,
    stop: asyncio.Event | None = None,
) -> RunOutcome:
    await start(link, spec)
    return await follow(link, spec, on_output, stop=stop)


def fetch_pair(pair: PairConfig, rel: str, *, is_dir: bool) -> PairConfig:
    """A pull-mode pair that brings ``rel`` (relative to the pair's roots) back.

    A folder becomes a pair rooted at it, so the pair's own ignore rules (which usually list the
    results folder) do not hide what was asked for; a file becomes a pair rooted at its folder
    that ignores everything else.
    """
    ignore: tuple[str, ...] = ()
    if is_dir:
        local, remote = pair.local / rel, f"{pair.remote.rstrip('/')}/{rel}"
    else:
        folder, _, name = rel.rpartition("/")
        local = pair.local / folder if folder else pair.local
        remote = f"{pair.remote.rstrip('/')}/{folder}" if folder else pair.remote
        ignore = ("/*", f"!/{name}")
    return replace(
        pair,
        name=f"{pair.name}:fetch:{rel}",
        local=local,
        remote=remote,
        mode=PairMode.PULL,
        ignore=ignore,
    )


async def fetch(
    config: Config, link: Link, pair: PairConfig, paths: Sequence[str]
) -> list[SyncReport]:
    """Bring ``paths`` back from the host with the sync engine (atomic, conflict-safe)."""
    agent = await link.wait_agent(30)
    reports = []
    for raw in paths:
        rel = check_relpath(raw.strip().strip("/").removeprefix("./"), origin="--fetch")
        probe = await agent.probe(f"{pair.remote.rstrip('/')}/{rel}")
        if not probe.exists:
            raise TetherError(
                f"--fetch {raw}: nothing there on the host ({pair.remote}/{rel})",
                "check the path; it is relative to the pair's remote folder",
            )
        sub = fetch_pair(pair, rel, is_dir=probe.is_dir)
        await asyncio.to_thread(sub.local.mkdir, parents=True, exist_ok=True)
        reports.append(await sync_pair(config, sub, SSH, client=agent, accept_empty=True))
    return reports


def local_log_path(state: Path, run_id: str) -> Path:
    return private_folder(state / "runs") / f"{run_id}.log"
