"""The ``tether`` command. Parsing and error reporting live here; every verb is a thin call into
the modules below (see :mod:`tether.cli.commands`).

Failures a user can act on are :class:`~tether.errors.TetherError`: printed as one line (what went
wrong, then what to do) with the error's exit code. Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import gc
import logging
import sys
from collections.abc import Collection, Sequence
from pathlib import Path

from .. import __version__
from ..config import Config, load_config
from ..errors import EX_USAGE, TetherError
from .commands import add_verbs


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        self.print_usage(sys.stderr)
        print(f"tether: {message}", file=sys.stderr)
        raise SystemExit(EX_USAGE)


def build_parser(with_arguments: Collection[str] | None = None) -> argparse.ArgumentParser:
    """The ``tether`` parser, listing every verb; only the verbs in ``with_arguments`` (all when
    None) get their arguments, so only their command modules are imported."""
    parser = _Parser(
        prog="tether",
        description="Keep this machine tied to a GPU box: sync, tunnels, runs, roofline results.",
    )
    parser.add_argument("--version", action="version", version=f"tether {__version__}")
    parser.add_argument("--config", type=Path, help="tether.toml to use (default: nearest upward)")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more logging")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    subparsers.required = True
    add_verbs(subparsers, with_arguments)
    return parser


def config_of(args: argparse.Namespace) -> Config:
    """The project's config, loaded once per invocation (commands call this, never load twice)."""
    cached = getattr(args, "_config", None)
    if cached is None:
        cached = load_config(args.config)
        args._config = cached
    return cached


def parse(argv: Sequence[str] | None) -> argparse.Namespace:
    """Parse twice: first with every verb bare (which verb is it? `--help` and `--version` answer
    here, from the table alone), then with that one verb's arguments."""
    verb = build_parser(with_arguments=()).parse_known_args(argv)[0].command
    return build_parser(with_arguments=(verb,)).parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse(argv)
    args.own_argv = argv is None  # this process's own command line: a verb may exec it again
    logging.basicConfig(
        level=logging.WARNING - 10 * min(args.verbose, 2),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        return int(args.handler(args) or 0)
    except TetherError as exc:
        print(f"tether: {exc.one_line()}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("tether: interrupted", file=sys.stderr)
        return 130
    finally:
        if args.own_argv:
            skip_exit_collections()


def skip_exit_collections() -> None:
    """Let this process end without the garbage collector walking every object it holds.

    Interpreter shutdown runs full collections over everything still alive: all the modules
    asyncssh and cryptography bring, and after a sync its snapshots. That took ~0.1 s after
    every one-shot `tether sync` here, as long as the rest of a small sync. Frozen objects are
    skipped by those passes; finalizers, atexit handlers and buffered output still run as
    usual. Only for this process's own command line: a caller of :func:`main` goes on living.
    """
    gc.freeze()


if __name__ == "__main__":
    sys.exit(main())
