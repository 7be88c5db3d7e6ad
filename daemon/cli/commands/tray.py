"""`tether tray [--describe [--json]]`: the tray icon, or what it would show right now."""

from __future__ import annotations

import argparse
import json
from typing import Any

from ...service.control_lite import DaemonNotRunning, call


def add_arguments(p: argparse.ArgumentParser, verb: str) -> None:
    p.add_argument(
        "--describe", action="store_true", help="print the state and menu it would show, and exit"
    )
    p.add_argument("--json", action="store_true", help="with --describe: as JSON")
    p.set_defaults(handler=run)


def current_view() -> Any:
    from ...service.tray import latest_bench
    from ...service.tray_model import view

    try:
        status = call("GET", "/v1/status", timeout=10.0)
        runs = call("GET", "/v1/runs?limit=5", timeout=10.0)["runs"]
    except DaemonNotRunning:
        return view(None)
    return view(status, runs, latest_bench())


def run(args: argparse.Namespace) -> int:
    if args.describe:
        from ...service.tray_model import describe, to_json

        tray = current_view()
        print(json.dumps(to_json(tray), indent=1) if args.json else describe(tray))
        return 0
    from ...service.tray import run_tray

    return run_tray()
