"""`tether runs [--json] [-n N]`: the runs tether started, newest first."""

from __future__ import annotations

import argparse
import time

from rich.table import Table

from ..console import console, print_json
from ..history import RunHistory


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("runs", help="list recent runs (command or trigger, status, time)")
    p.add_argument("-n", "--limit", type=int, default=20, help="how many (default 20)")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    with RunHistory() as history:
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
