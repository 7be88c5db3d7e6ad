"""`tether check [HOST] [--json] [--trust]`: the preflight, step by step."""

from __future__ import annotations

import argparse
import asyncio

from ...console import STATUS_STYLES, console, print_json
from ..check import Status, Step, check_host, first_failure
from ..main import config_of


def add_arguments(p: argparse.ArgumentParser, verb: str) -> None:
    p.add_argument("host", nargs="?", help="host to check (default: every host)")
    p.add_argument("--json", action="store_true", help="print the steps as JSON")
    p.add_argument(
        "--trust", action="store_true", help="record an unknown host key after showing it"
    )
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    config = config_of(args)
    hosts = [config.host(args.host)] if args.host else list(config.hosts.values())
    out = console()

    def show(step: Step) -> None:
        if args.json:
            return
        style = STATUS_STYLES[step.status.value]
        out.print(
            f"[{style}]{step.status.value:<4}[/] {step.host:<10} {step.name:<16} "
            f"{step.seconds * 1000:7.0f} ms  {step.detail}"
        )
        if step.error is not None and step.error.hint:
            out.print(f"{'':<33}[dim]→ {step.error.hint}[/]")

    async def all_hosts() -> list[Step]:
        steps: list[Step] = []
        for host in hosts:
            steps += await check_host(config, host, trust=args.trust, on_step=show)
        return steps

    steps = asyncio.run(all_hosts())
    failed = first_failure(steps)
    if args.json:
        print_json({"ok": failed is None, "steps": [s.as_json() for s in steps]})
    elif failed is None:
        warns = sum(s.status is Status.WARN for s in steps)
        out.print(f"[green]all checks passed[/]{f' ({warns} warnings)' if warns else ''}")
    if failed is None:
        return 0
    return failed.error.exit_code if failed.error else 1
