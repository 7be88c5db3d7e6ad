"""The run history checked against the host: what became of a run, stopping one, following one.

The history is written by a run's owner (a `tether run`, a trigger, the daemon). An owner that was
killed outright never writes the end, so a record that still says "running" is settled by asking
the host, which knows: the run's status, or whether its supervisor and process group still exist.
Nothing is guessed from the record's age or from local processes.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..config import HostConfig, load_config
from ..errors import TetherError
from ..transport.agent_client import AgentClient
from ..transport.link import Link
from .history import RunHistory, RunRecord
from .remote import GRACE_S, RunOutcome, RunSpec, exit_code_of, follow, host_reason, signal_number


@dataclass(frozen=True)
class Ending:
    """How a run ended, as the host tells it."""

    exit_code: int | None
    signal: int | None
    reason: str


def ending(summary: Mapping[str, Any] | None) -> Ending | None:
    """The end of a run from the host's account of it (one entry of the agent's ``runs``);
    None while the host says it still goes on.

    A run the host does not know (it never started there, or its folder was removed), or whose
    supervisor vanished without writing a status, is "lost": its process group is gone too, or
    ``running`` would say so.
    """
    if summary is None:
        return Ending(None, None, "lost")
    if summary.get("running"):
        return None
    if summary.get("exit_code") is None and summary.get("signal") is None:
        return Ending(None, None, "lost")
    return Ending(
        exit_code_of(summary.get("exit_code")),
        signal_number(summary.get("signal")),
        host_reason(summary.get("reason")),
    )


def host_of(record: RunRecord) -> HostConfig:
    """The host a run ran on, from the tether.toml it was started under."""
    try:
        return load_config(Path(record.project)).host(record.host)
    except TetherError as exc:
        raise TetherError(
            f"run {record.id}: cannot reach its host {record.host}: {exc.message}",
            "run this from a project whose tether.toml names that host",
        ) from None


@asynccontextmanager
async def agent_for(host: HostConfig) -> AsyncIterator[tuple[Link, AgentClient]]:
    async with Link(host) as link:
        await link.wait_up(host.connect_timeout_s or 15.0)
        yield link, await link.wait_agent(30)


@dataclass(frozen=True)
class Settled:
    """What the hosts said about the records that still say "running"."""

    ends: dict[str, Ending]
    """Run id → its end, for each run its host says has ended."""
    problems: list[str]
    """One line per host that could not be asked (its records stay as they are)."""


async def settle(records: Iterable[RunRecord]) -> Settled:
    """Ask each host about the records that still say "running". The caller writes the ends
    down (:func:`write_ends`) once the asking is done: SQLite stays off the event loop."""
    by_host: dict[tuple[str, str], list[RunRecord]] = {}
    for record in records:
        if record.ended is None:
            by_host.setdefault((record.project, record.host), []).append(record)
    settled = Settled({}, [])
    for pending in by_host.values():
        try:
            async with agent_for(host_of(pending[0])) as (_link, agent):
                known = {str(r.get("run_id")): r for r in await agent.runs()}
        except TetherError as exc:
            settled.problems.append(
                f"could not ask {pending[0].host} about its runs: {exc.one_line()}"
            )
            continue
        for record in pending:
            end = ending(known.get(record.id))
            if end is not None:
                settled.ends[record.id] = end
    return settled


def write_ends(history: RunHistory, ends: Mapping[str, Ending]) -> None:
    """Complete each run's record with the end its host reported."""
    for run_id, end in ends.items():
        history.finish(run_id, exit_code=end.exit_code, signal=end.signal, reason=end.reason)


async def stop(record: RunRecord) -> tuple[Ending, bool]:
    """Stop a run's process group as Ctrl-C does (SIGINT, SIGKILL after a grace period),
    whoever started it; an owner still following it sees it end "stopped". Returns how it
    ended and whether it was still going on; the caller records the end when either the run
    was going or its record still says "running"."""
    async with agent_for(host_of(record)) as (_link, agent):
        going = ending(await _summary(agent, record.id)) is None
        if going:
            await agent.kill(record.id, signal="INT", grace_s=GRACE_S)
        end = ending(await _summary(agent, record.id)) or Ending(None, None, "stopped")
    return end, going


async def _summary(agent: AgentClient, run_id: str) -> dict[str, Any] | None:
    return next((r for r in await agent.runs() if r.get("run_id") == run_id), None)


async def tail(record: RunRecord, on_output: Callable[[bytes], Any]) -> RunOutcome:
    """Follow a run's output on the host from its first byte to its end, as an onlooker:
    leaving (Ctrl-C) detaches and the run goes on."""
    host = host_of(record)
    spec = RunSpec(host=host, pair=None, run_id=record.id)
    async with Link(host) as link:
        await link.wait_up(host.connect_timeout_s or 15.0)
        return await follow(link, spec, on_output, owner=False)
