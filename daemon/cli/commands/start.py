"""`tether start` / `tether stop [--all]`: register this project with the daemon, or not."""

from __future__ import annotations

import argparse

from ...console import console
from ...service.control_lite import call, daemon_running
from ...service.launch import ensure_daemon
from ..main import config_of


def add_arguments(p: argparse.ArgumentParser, verb: str) -> None:
    if verb == "stop":
        p.add_argument(
            "--all",
            action="store_true",
            help="stop the daemon, every project, keep_running services and host agents",
        )
        p.set_defaults(handler=run_stop)
    else:  # start
        p.set_defaults(handler=run_start)


def run_start(args: argparse.Namespace) -> int:
    config = config_of(args)
    started = ensure_daemon()
    call("POST", "/v1/projects", {"config_path": str(config.path)})  # already absolute
    out = console()
    out.print(("started the daemon; " if started else "") + f"watching {config.root}")
    out.print("see `tether status`; `tether logs -f` follows what happens")
    return 0


def run_stop(args: argparse.Namespace) -> int:
    out = console()
    if args.all:
        if not daemon_running():
            out.print("the daemon is not running")
            return 0
        call("POST", "/v1/shutdown", {"stop_services": True})
        out.print("stopped the daemon, its keep_running services and host agents")
        return 0
    config = config_of(args)
    call("DELETE", "/v1/projects", {"config_path": str(config.path)})
    out.print(f"no longer watching {config.root}")
    return 0
