"""`tether init [--from remote_tools/.remote_config] [--force]`: write a starter tether.toml."""

from __future__ import annotations

import argparse
from pathlib import Path

from ...config import CONFIG_NAME
from ...console import console
from ..init import convert_remote_config, starter_config, write_config


def add_arguments(p: argparse.ArgumentParser, verb: str) -> None:
    p.add_argument(
        "--from",
        dest="source",
        type=Path,
        metavar="FILE",
        help="convert an old remote_tools/.remote_config",
    )
    p.add_argument("--ssh", default="gpu-box", help="host alias or user@host[:port]")
    p.add_argument("--remote", default=None, help="remote folder for this project")
    p.add_argument("--force", action="store_true", help="replace an existing tether.toml")
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    target = (args.config or Path.cwd() / CONFIG_NAME).resolve()
    notes: list[str] = []
    warnings: list[str] = []
    if args.source:
        text, conversion = convert_remote_config(args.source)
        notes, warnings = conversion.notes, conversion.warnings
    else:
        text = starter_config(ssh=args.ssh, remote=args.remote or f"~/src/{Path.cwd().name}")
    write_config(target, text, force=args.force)
    out = console()
    err = console(stderr=True)
    for warning in warnings:
        err.print(f"warning: {warning}", markup=False)
    out.print(f"wrote {target}")
    for note in notes:
        out.print(f"  {note}", markup=False)
    out.print("next: edit it, then run `tether check`")
    return 0
