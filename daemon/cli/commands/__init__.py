"""One module per CLI verb (or per few verbs sharing a job), named in :data:`VERBS`.

Each module exposes ``add_arguments(parser, verb)``, which adds the verb's arguments and sets
``handler`` (a function ``(args) -> int``) with ``set_defaults``; keep each handler a thin call into
the modules below the CLI. A new verb is a row in :data:`VERBS` and a module.

The table holds every verb's help line so that ``tether --help`` lists them all without importing
a single command module, and a parse imports only the module of the verb it runs: ``tether sync``
or ``tether pause`` does not pay for other verbs' imports (aiohttp, asyncssh, numpy...).
"""

from __future__ import annotations

import argparse
import importlib
from collections.abc import Collection
from dataclasses import dataclass


@dataclass(frozen=True)
class Verb:
    """Where a verb's arguments and handler live, and the line ``tether --help`` shows for it."""

    module: str
    help: str


VERBS: dict[str, Verb] = {
    "init": Verb("init", "write a commented tether.toml here"),
    "check": Verb("check", "preflight: reach, trust, log in, probe python, folders, GPU, tunnels"),
    "start": Verb("start", "register this project with the daemon (start it)"),
    "stop": Verb("start", "unregister this project; --all stops the daemon"),
    "status": Verb("status", "what the daemon is doing, per host, pair, tunnel"),
    "sync": Verb("sync", "sync pairs once (all pairs by default)"),
    "pause": Verb("pause", "stop syncing (changes are still collected)"),
    "resume": Verb("pause", "sync again (also retries a failed link)"),
    "flush": Verb("pause", "wait until every pending change has landed"),
    "conflicts": Verb("conflicts", "list sync conflicts, or resolve one"),
    "run": Verb("run", "sync, run a command on the host, stream it, exit with its status"),
    "runs": Verb(
        "runs", "list recent runs (command or trigger, status, time); `runs stop RUN` stops one"
    ),
    "logs": Verb("logs", "the daemon's events, or one run's output"),
    "bench": Verb(
        "bench", "run the roofline suite on the host; fetch, show, plot and store its results"
    ),
    "results": Verb(
        "results", "stored benchmark results: list, CSV, roofline plot, compare two runs"
    ),
    "reports": Verb(
        "reports", "list report folders on the host ([reports.*]) and pull the ones you want"
    ),
    "service": Verb("service", "run the agent as a systemd/launchd user service"),
    "daemon": Verb("daemon", "run the per-user agent in the foreground"),
    "tray": Verb("tray", "a tray icon showing and steering the agent"),
    "demo": Verb("demo", "run the whole loop against an embedded loopback host"),
}


def add_verbs(
    subparsers: argparse._SubParsersAction,
    with_arguments: Collection[str] | None = None,
) -> None:
    """Register every verb with its help line; import and fill in the arguments of the verbs in
    ``with_arguments`` only (every verb's when None). A verb left bare parses anything into
    nothing: enough to learn which verb a command line names, never enough to run it."""
    for name, verb in VERBS.items():
        parser = subparsers.add_parser(name, help=verb.help, description=verb.help, add_help=False)
        if with_arguments is None or name in with_arguments:
            parser.add_argument(
                "-h", "--help", action="help", help="show this help message and exit"
            )
            module = importlib.import_module(f"{__name__}.{verb.module}")
            module.add_arguments(parser, name)
