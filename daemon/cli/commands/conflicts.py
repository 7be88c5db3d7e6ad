"""`tether conflicts [--json]` lists conflicts; `tether conflicts resolve PATH --keep SIDE`."""

from __future__ import annotations

import argparse
import asyncio
import time

from ...console import console, print_json
from ...sync.resolve import KEEP_CHOICES, find_record, resolve
from ...sync.state import StateStore, pair_key
from ...transport.endpoints import SSH
from ..main import config_of


def add_arguments(p: argparse.ArgumentParser, verb: str) -> None:
    p.add_argument("--json", action="store_true", help="print them as JSON")
    sub = p.add_subparsers(dest="conflicts_command", metavar="ACTION")
    r = sub.add_parser("resolve", help="settle one conflict")
    r.add_argument("path", help="the conflicted path (or its conflict copy)")
    r.add_argument("--keep", required=True, choices=KEEP_CHOICES, help="which version to keep")
    r.add_argument("--pair", help="the pair (default: whichever has that conflict)")
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    config = config_of(args)
    with StateStore() as store:
        if getattr(args, "conflicts_command", None) == "resolve":
            pair, record = find_record(store, config, args.path, args.pair)
            asyncio.run(resolve(config, pair, record, args.keep, SSH))
            console().print(f"resolved {record.path}: kept {args.keep}")
            return 0
        rows = []
        for pair in config.pairs.values():
            for record in store.conflicts(pair_key(config.path, pair.name)):
                rows.append((pair.name, record))
    if args.json:
        print_json(
            {
                "conflicts": [
                    {
                        "pair": name,
                        "path": r.path,
                        "winner": r.winner,
                        "copy": r.copy,
                        "copy_sides": list(r.copy_sides),
                        "detail": r.detail,
                        "since": r.created,
                    }
                    for name, r in rows
                ]
            }
        )
        return 0
    out = console()
    if not rows:
        out.print("no conflicts")
    for name, r in rows:
        when = time.strftime("%Y-%m-%d %H:%M", time.localtime(r.created))
        out.print(
            f"{name}: {r.path} — {r.winner} version kept at the name, other at {r.copy} "
            f"({when}); settle with `tether conflicts resolve {r.path} --keep local|remote|both`"
        )
    return 0
