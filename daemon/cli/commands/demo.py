"""`tether demo`: the whole loop on an embedded loopback host; no remote machine needed."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..demo import main


def add_arguments(p: argparse.ArgumentParser, verb: str) -> None:
    p.add_argument(
        "--keep", type=Path, metavar="DIR", help="build the demo in DIR and leave it there"
    )
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    if args.keep:
        args.keep.mkdir(parents=True, exist_ok=True)
    return main(args.keep.resolve() if args.keep else None)
