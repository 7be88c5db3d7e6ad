"""`tether pause [PAIR]` / `tether resume [PAIR]` / `tether flush [--timeout]` for this project."""

from __future__ import annotations

import argparse

from ...config import parse_duration
from ...console import console, print_json
from ...errors import UsageError
from ...service.control_lite import call
from ..main import config_of


def add_arguments(p: argparse.ArgumentParser, verb: str) -> None:
    if verb == "flush":
        p.add_argument("--timeout", default="60s", help='how long to wait (default "60s")')
        p.add_argument("--json", action="store_true", help="print JSON")
        p.set_defaults(handler=run_flush)
    else:  # pause, resume
        p.add_argument("pair", nargs="?", help="one pair (default: all of this project's)")
        p.set_defaults(handler=run_toggle, verb=verb)


def run_toggle(args: argparse.Namespace) -> int:
    config = config_of(args)
    answer = call("POST", f"/v1/{args.verb}", {"project": str(config.path), "pair": args.pair})
    names = answer.get("paused") or answer.get("resumed") or []
    console().print(f"{args.verb}d: {', '.join(names) or '(nothing)'}")
    return 0


def run_flush(args: argparse.Namespace) -> int:
    timeout = parse_duration(args.timeout)
    if timeout is None:
        raise UsageError(f"--timeout {args.timeout!r} is not a duration", 'use e.g. "30s", "2m"')
    config = config_of(args)
    body = {"project": str(config.path), "timeout_s": timeout}
    answer = call("POST", "/v1/flush", body, timeout + 10)
    if args.json:
        print_json(answer)
    else:
        console().print(f"flushed {', '.join(answer['flushed'])} in {answer['seconds']:.3f}s")
    return 0
