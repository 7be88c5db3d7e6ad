"""`tether runs [--json] [-n N]`: the runs tether started, newest first; `tether runs stop RUN`.

A run still listed as running is first checked with its host (see :mod:`tether.runs.settle`), so
a run whose owner was killed shows how it really ended instead of "running" for ever.
"""

from __future__ import annotations

import argparse
import asyncio
import time

from rich.table import Table

from ...console import console, print_json
from ...errors import TetherError, UsageError
from ...runs.history import RunHistory


def add_arguments(p: argparse.ArgumentParser, verb: str) -> None:
    p.usage = "tether runs [-n N] [--json] | tether runs stop RUN"
    p.add_argument("action", nargs="?", choices=["stop"], help="stop RUN on its host")
    p.add_argument("run", nargs="?", help="a run id (or its prefix) from `tether runs`")
    p.add_argument("-n", "--limit", type=int, default=20, help="how many (default 20)")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from ...runs import settle as host_runs  # connects to hosts: asyncssh only when needed

    if args.action == "stop":
        return stop(args.run)
    if args.run is not None:
        raise UsageError(f"unexpected {args.run!r}", "tether runs [-n N] [--json] | runs stop RUN")
    with RunHistory() as history:
        records = history.recent(args.limit)
        if any(r.ended is None for r in records):
            settled = asyncio.run(host_runs.settle(records))
            host_runs.write_ends(history, settled.ends)
            for problem in settled.problems:
                console(stderr=True).print(f"[yellow]{problem}[/]", highlight=False)
            records = history.recent(args.limit)
    if args.json:
        print_json([r.to_json() for r in records])
        return 0
    table = Table("run", "started", "host", "trigger/command", "status", "took", box=None)
    for r in records:
        status = "running" if r.ended is None else f"{r.reason} {r.status}"
        took = f"{r.ended - r.started:.1f}s" if r.ended else ""
        started = time.strftime("%m-%d %H:%M:%S", time.localtime(r.started))
        what = f"[{r.trigger}] {r.command}" if r.trigger else r.command
        table.add_row(r.id, started, r.host, what, status, took)
    console().print(table if records else "no runs yet")
    return 0


def stop(run_id: str | None) -> int:
    from ...runs import settle as host_runs

    if not run_id:
        raise UsageError("which run?", "tether runs stop RUN (ids from `tether runs`)")
    with RunHistory() as history:
        record = history.get(run_id)
        if record is None:
            raise TetherError(f"no run {run_id!r}", "see `tether runs` for ids")
        end, going = asyncio.run(host_runs.stop(record))
        if going or record.ended is None:
            host_runs.write_ends(history, {record.id: end})
    if going:
        console().print(f"stopped run {record.id} on {record.host}")
    else:
        console().print(f"run {record.id} had already ended ({end.reason})")
    return 0
