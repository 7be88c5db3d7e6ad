"""`tether daemon`: the per-user agent in the foreground (what the service runs)."""

from __future__ import annotations

import argparse
import asyncio
import logging


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("daemon", help="run the per-user agent in the foreground")
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from ..daemon import run_daemon

    logging.getLogger().setLevel(logging.INFO if args.verbose else logging.WARNING)
    asyncio.run(run_daemon())
    return 0
