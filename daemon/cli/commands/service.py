"""`tether service install|uninstall|status|print`: run the agent (and tray) as a user service."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from ...service.install import find_executable, install, params_for, status, this_manager, uninstall
from ...service.units import Manager, Part, render, template_text


def add_arguments(p: argparse.ArgumentParser, verb: str) -> None:
    verbs = p.add_subparsers(dest="service_verb", metavar="VERB", parser_class=type(p))
    verbs.required = True
    managers = [m.value for m in Manager]

    inst = verbs.add_parser("install", help="install and start the agent as a user service")
    inst.add_argument("--tray", action="store_true", help="also the tray icon (graphical session)")
    inst.add_argument("--no-start", action="store_true", help="write and enable, do not start")
    inst.add_argument("--manager", choices=managers, help="default: this system's")
    inst.set_defaults(handler=run_install)

    uninst = verbs.add_parser("uninstall", help="stop and remove what install wrote")
    uninst.set_defaults(handler=run_uninstall)

    stat = verbs.add_parser("status", help="what is installed, and whether it runs")
    stat.set_defaults(handler=run_status)

    show = verbs.add_parser("print", help="write a rendered service file to stdout")
    show.add_argument("manager", choices=managers)
    show.add_argument("--tray", action="store_true", help="the tray's file, not the agent's")
    show.set_defaults(handler=run_print)


def _say(line: str) -> None:
    print(line, flush=True)


def run_install(args: argparse.Namespace) -> int:
    manager = Manager(args.manager) if args.manager else this_manager()
    parts = [Part.AGENT, Part.TRAY] if args.tray else [Part.AGENT]
    env = dict(os.environ)
    return install(manager, parts, start=not args.no_start, home=Path.home(), env=env, say=_say)


def run_uninstall(args: argparse.Namespace) -> int:
    return uninstall(_say)


def run_status(args: argparse.Namespace) -> int:
    return status(_say)


def run_print(args: argparse.Namespace) -> int:
    manager = Manager(args.manager)
    part = Part.TRAY if args.tray else Part.AGENT
    params = params_for(manager, find_executable(), Path.home())
    sys.stdout.write(render(manager, template_text(manager, part), params))
    return 0
