"""`tether logs [-f] [-n N]` (the daemon's events), `tether logs RUN` (one run's output as kept
here) or `tether logs -f RUN` (reattach: the run's log on the host from its start, followed to its
end; exits with the run's status; Ctrl-C detaches and leaves the run going)."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
import time
from pathlib import Path
from typing import Any

from rich.markup import escape

from ...console import console
from ...errors import TetherError
from ...runs.history import RunHistory, RunRecord
from ...service.control_client import ControlClient

LEVEL_STYLES = {"error": "bold red", "warning": "yellow", "info": ""}


def add_arguments(p: argparse.ArgumentParser, verb: str) -> None:
    p.add_argument("run", nargs="?", help="a run id (or its prefix) from `tether runs`")
    p.add_argument("-f", "--follow", action="store_true", help="keep printing new events")
    p.add_argument("-n", "--lines", type=int, default=50, help="how many recent events")
    p.set_defaults(handler=run)


def show(event: dict[str, Any]) -> str:
    when = time.strftime("%H:%M:%S", time.localtime(event.get("ts", time.time())))
    style = LEVEL_STYLES.get(event.get("level", "info"), "")
    where = event.get("pair") or event.get("tunnel") or event.get("trigger") or event.get("host")
    text = escape(
        f"{when} {event.get('kind', '?'):<18} {where or '':<10} {event.get('message', '')}"
    )
    return f"[{style}]{text}[/]" if style else text


def run(args: argparse.Namespace) -> int:
    if args.run:
        with RunHistory() as history:
            record = history.get(args.run)
        if record is None:
            raise TetherError(f"no run {args.run!r}", "see `tether runs` for ids")
        if args.follow:
            return follow_run(record)
        path = Path(record.log)
        if not path.is_file():
            raise TetherError(f"run {record.id}: its log {path} is gone")
        sys.stdout.buffer.write(path.read_bytes())
        return 0
    out = console()

    async def go() -> None:
        async with ControlClient() as client:
            for event in await client.logs(args.lines):
                out.print(show(event), markup=True, highlight=False)
            if args.follow:
                async with contextlib.aclosing(client.follow_events()) as events:
                    async for event in events:
                        out.print(show(event), markup=True, highlight=False)

    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(go())
    return 0


def follow_run(record: RunRecord) -> int:
    from ...runs import settle as host_runs  # connects to the host: asyncssh only when needed

    def write(chunk: bytes) -> None:
        sys.stdout.buffer.write(chunk)
        sys.stdout.buffer.flush()

    try:
        outcome = asyncio.run(host_runs.tail(record, write))
    except KeyboardInterrupt:
        return 130
    if record.ended is None:
        with RunHistory() as history:
            history.finish(
                record.id, exit_code=outcome.exit_code, signal=outcome.signal, reason=outcome.reason
            )
    return outcome.status
