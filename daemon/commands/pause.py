"""`tether pause [PAIR]` / `tether resume [PAIR]` / `tether flush [--timeout]` for this project."""

from __future__ import annotations

import argparse
import asyncio

from ..cli import config_of
from ..config import parse_duration
from ..console import console, print_json
from ..control import ControlClient
from ..errors import UsageError


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    for verb, text in (
        ("pause", "stop syncing (changes are still collected)"),
        ("resume", "sync again (also retries a failed link)"),
    ):
        p = subparsers.add_parser(verb, help=text)
        p.add_argument("pair", nargs="?", help="one pair (default: all of this project's)")
        p.set_defaults(handler=run_toggle, verb=verb)
    f = subparsers.add_parser("flush", help="wait until every pending change has landed")
    f.add_argument("--timeout", default="60s", help='how long to wait (default "60s")')
    f.add_argument("--json", action="store_true", help="print JSON")
    f.set_defaults(handler=run_flush)


def run_toggle(args: argparse.Namespace) -> int:
    config = config_of(args)

    async def go() -> dict:
        async with ControlClient() as client:
            method = client.pause if args.verb == "pause" else client.resume
            return await method(str(config.path), args.pair)

    answer = asyncio.run(go())
    names = answer.get("paused") or answer.get("resumed") or []
    console().print(f"{args.verb}d: {', '.join(names) or '(nothing)'}")
    return 0


def run_flush(args: argparse.Namespace) -> int:
    timeout = parse_duration(args.timeout)
    if timeout is None:
        raise UsageError(f"--timeout {args.timeout!r} is not a duration", 'use e.g. "30s", "2m"')
    config = config_of(args)

    async def go() -> dict:
        async with ControlClient() as client:
            return await client.flush(str(config.path), timeout)

    answer = asyncio.run(go())
    if args.json:
        print_json(answer)
    else:
        console().print(f"flushed {', '.join(answer['flushed'])} in {answer['seconds']:.3f}s")
    return 0
