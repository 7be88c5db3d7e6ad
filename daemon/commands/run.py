"""`tether run [--host H] [--pair P] [--no-sync] [--fetch PATH]... -- CMD ARGS...`

Sync, run on the host in the pair's remote folder, stream the output, exit with the remote
command's own status (128+N for a signal N), then fetch. Ctrl-C stops the remote process group.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import sys

from ..cli import config_of
from ..config import Config, PairConfig
from ..console import console
from ..errors import TetherError, UsageError
from ..history import RunHistory, RunRecord
from ..link import Link
from ..runs import RunSpec, command_argv, fetch, local_log_path, run_to_end
from ..sync.engine import sync_pair
from ..sync.state import state_dir


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "run",
        help="sync, run a command on the host, stream it, exit with its status",
        usage="tether run [--host H] [--pair P] [--no-sync] [--fetch PATH]... -- CMD [ARGS...]",
    )
    p.add_argument("--host", help="the host (default: the pair's)")
    p.add_argument("--pair", help="the pair whose remote folder is the working folder")
    p.add_argument("--no-sync", action="store_true", help="do not sync before running")
    p.add_argument(
        "--fetch",
        action="append",
        default=[],
        metavar="PATH",
        help="bring PATH (relative to the pair) back afterwards; repeatable",
    )
    p.add_argument("command", nargs=argparse.REMAINDER, help="everything after --")
    p.set_defaults(handler=run)


def pick_pair(config: Config, pair: str | None, host: str | None) -> PairConfig:
    if pair is not None:
        chosen = config.pair(pair)
        if host is not None and chosen.host != host:
            raise UsageError(f"pair {chosen.name} lives on host {chosen.host}, not {host}")
        return chosen
    if host is not None:
        config.host(host)
        candidates = [p for p in config.pairs.values() if p.host == host]
        if len(candidates) == 1:
            return candidates[0]
        raise UsageError(f"host {host} has {len(candidates)} pairs", "name one with --pair")
    return config.pair(None)


def run(args: argparse.Namespace) -> int:
    words = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not words:
        raise UsageError("nothing to run", "put the command after `--`: tether run -- python x.py")
    config = config_of(args)
    pair = pick_pair(config, args.pair, args.host)
    host = config.host(pair.host)
    spec = RunSpec(host=host, pair=pair, argv=command_argv(words, host.python))
    return asyncio.run(_run(config, spec, sync=not args.no_sync, fetch_paths=args.fetch))


async def _run(config: Config, spec: RunSpec, *, sync: bool, fetch_paths: list[str]) -> int:
    err = console(stderr=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    with contextlib.suppress(NotImplementedError, RuntimeError):
        loop.add_signal_handler(signal.SIGINT, stop.set)
    log_path = local_log_path(state_dir(), spec.run_id)
    async with Link(spec.host) as link:
        await link.wait_up(spec.host.connect_timeout_s or 15.0)
        if sync:
            report = await sync_pair(config, spec.pair, client=await link.wait_agent(60))
            if report.halted:
                raise TetherError(f"sync halted: {report.message}", "fix it, or use --no-sync")
            if report.copied or report.deleted:
                err.print(f"[dim]synced {report.copied} file(s) to {spec.host.name}[/]")
        with RunHistory() as history, open(log_path, "wb") as log_file:
            history.begin(
                RunRecord(
                    id=spec.run_id,
                    project=str(config.path),
                    host=spec.host.name,
                    pair=spec.pair.name,
                    command=spec.display,
                    log=str(log_path),
                )
            )

            def show(chunk: bytes) -> None:
                sys.stdout.buffer.write(chunk)
                sys.stdout.buffer.flush()
                log_file.write(chunk)

            outcome = await run_to_end(link, spec, show, stop=stop)
            history.finish(
                spec.run_id,
                exit_code=outcome.exit_code,
                signal=outcome.signal,
                reason=outcome.reason,
            )
        if outcome.reason == "stopped":
            err.print(f"[yellow]stopped[/] run {spec.run_id} on {spec.host.name}")
        if fetch_paths:
            reports = await fetch(config, link, spec.pair, fetch_paths)
            copied = sum(r.copied for r in reports)
            err.print(f"[dim]fetched {copied} file(s): {', '.join(fetch_paths)}[/]")
    return outcome.status
