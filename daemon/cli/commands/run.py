"""`tether run [--host H] [--pair P] [--no-sync] [--fetch PATH]... -- CMD ARGS...`

Sync, run on the host in the pair's remote folder, stream the output, exit with the remote
command's own status (128+N for a signal N), then fetch. Ctrl-C, SIGTERM and SIGHUP (a closed
terminal) all stop the remote process group; a CLI killed outright leaves a run that the host
stops after its ``orphan_timeout``.

When the user daemon watches this project, the run is the daemon's: it already holds the link and
a warm agent, and its watchers know what changed, so nothing is connected or started here (the
CLI speaks stdlib HTTP to it and imports neither asyncssh nor aiohttp). Otherwise the CLI connects
and does it all itself.
"""

from __future__ import annotations

import argparse
import base64
import signal
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from ...errors import NotRegistered, TetherError, UsageError
from ...service import control_lite
from ..main import config_of

if TYPE_CHECKING:
    from ...config import Config, PairConfig
    from ...reports.fetch import Listing
    from ...runs.remote import RunSpec
    from ...transport.link import Link


STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
"""Each ends tether's side of a run, so each stops the run on the host as Ctrl-C does."""


def add_arguments(p: argparse.ArgumentParser, verb: str) -> None:
    p.usage = "tether run [--host H] [--pair P] [--no-sync] [--fetch PATH]... -- CMD [ARGS...]"
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
    p.add_argument(
        "--auto-fetch",
        action="store_true",
        help="afterwards, pull the report folders ([reports.*] roots) the run created or changed",
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
    status = (
        None  # the daemon's runs do not fetch reports: this one runs here
        if args.auto_fetch
        else _via_daemon(config, pair, words, sync=not args.no_sync, fetch=args.fetch)
    )
    if status is not None:
        return status
    import asyncio

    from ...runs.remote import RunSpec, command_argv

    host = config.host(pair.host)
    spec = RunSpec(host=host, pair=pair, argv=command_argv(words, host.python))
    return asyncio.run(
        _run(
            config,
            pair,
            spec,
            sync=not args.no_sync,
            fetch_paths=args.fetch,
            auto_fetch=args.auto_fetch,
        )
    )


def _via_daemon(
    config: Config, pair: PairConfig, words: list[str], *, sync: bool, fetch: list[str]
) -> int | None:
    """Run through the daemon; its status, or None when the CLI must run on its own."""
    path = control_lite.socket_path()
    if path is None:
        return None
    body = {
        "project": str(Path(config.path).resolve()),
        "pair": pair.name,
        "argv": words,
        "sync": sync,
        "fetch": fetch,
    }
    try:
        events = control_lite.stream(path, "/v1/run", body, None)
    except (OSError, NotRegistered):  # a stale socket, or a project the daemon does not watch
        return None
    if events is None:
        return None  # an older daemon without /v1/run
    run_id = ""
    status = None
    previous = {sig: signal.getsignal(sig) for sig in STOP_SIGNALS}

    def stop(*_: object) -> None:
        if run_id:  # the daemon stops the run's process group; we keep reading to its end
            control_lite.request(path, "POST", "/v1/run/stop", {"run_id": run_id}, 10)

    for sig in STOP_SIGNALS:
        signal.signal(sig, stop)
    try:
        for event in events:
            kind = event.get("event")
            if kind == "started":
                run_id = str(event.get("run_id", ""))
            elif kind == "output":
                sys.stdout.buffer.write(base64.b64decode(event.get("data", "")))
                sys.stdout.buffer.flush()
            elif kind == "fetched":
                print(f"fetched {event.get('copied', 0)} file(s)", file=sys.stderr)
            elif kind == "exit":
                status = int(event["status"])
                if event.get("reason") == "stopped":
                    print(f"tether: stopped run {run_id}", file=sys.stderr)
    except OSError as exc:  # the daemon went away: the run goes on, or ends, on the host
        raise _lost(f"{control_lite.not_running(path, exc).message} during run", run_id) from None
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if status is None:
        raise _lost("the tether daemon ended the stream without the exit status of run", run_id)
    return status


def _lost(what: str, run_id: str) -> TetherError:
    return control_lite.DaemonNotRunning(
        f"{what} {run_id or '(not started yet)'}",
        "`tether runs` tells how it ended; `tether logs` what happened to the daemon",
    )


async def _run(
    config: Config,
    pair: PairConfig,
    spec: RunSpec,
    *,
    sync: bool,
    fetch_paths: list[str],
    auto_fetch: bool = False,
) -> int:
    """Run ``spec`` (which runs in ``pair``'s remote root) here, without the daemon."""
    import asyncio
    import contextlib

    from ...console import console
    from ...runs.history import record_run
    from ...runs.remote import fetch, run_to_end
    from ...sync.engine import sync_pair
    from ...transport.endpoints import SSH
    from ...transport.link import Link

    err = console(stderr=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in STOP_SIGNALS:
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
    async with Link(spec.host) as link:
        await link.wait_up(spec.host.connect_timeout_s or 15.0)
        if sync:
            report = await sync_pair(config, pair, SSH, client=await link.wait_agent(60))
            if report.halted:
                raise TetherError(f"sync halted: {report.message}", "fix it, or use --no-sync")
            if report.copied or report.deleted:
                err.print(f"[dim]synced {report.copied} file(s) to {spec.host.name}[/]")
        before = await reports_before(config, link, spec.host.name) if auto_fetch else None
        async with record_run(
            spec.run_id,
            project=str(config.path),
            host=spec.host.name,
            pair=pair.name,
            command=spec.display,
        ) as recorded:

            async def show(chunk: bytes) -> None:
                sys.stdout.buffer.write(chunk)
                sys.stdout.buffer.flush()
                await recorded.write(chunk)

            outcome = recorded.outcome = await run_to_end(link, spec, show, stop=stop)
        if outcome.reason == "stopped":
            err.print(f"[yellow]stopped[/] run {spec.run_id} on {spec.host.name}")
        if fetch_paths:
            reports = await fetch(config, link, pair, fetch_paths)
            copied = sum(r.copied for r in reports)
            err.print(f"[dim]fetched {copied} file(s): {', '.join(fetch_paths)}[/]")
        if before is not None:
            await fetch_new_reports(config, link, spec.host.name, before)
    return outcome.status


async def reports_before(config: Config, link: Link, host: str) -> Listing:
    """The reports on ``host`` before a run, to tell afterwards which ones it made or changed."""
    from ...reports.fetch import Listing, list_host, tables_for

    tables = tables_for(config, host)
    if not tables:
        return Listing()
    return await list_host(await link.wait_agent(60), tables)


async def fetch_new_reports(config: Config, link: Link, host: str, before: Listing) -> None:
    """Pull the report folders the run created or changed (nothing older), with progress and
    a one-line summary; nothing is pushed back."""
    from ...console import console
    from ...reports.model import changed_since
    from .reports import pull_reports

    err = console(stderr=True)
    tables = [t for t in config.reports.values() if t.host == host]
    if not tables:
        err.print(f"[yellow]--auto-fetch[/]: no [reports.*] table names host {host}")
        return
    after = await reports_before(config, link, host)
    changed = changed_since(before.reports, after.reports)
    pulled = await pull_reports(config, changed, agent=await link.wait_agent(60))
    moved = sum(p.sync.bytes for p in pulled if p.sync)
    failed = sum(not p.ok for p in pulled)
    what = ", ".join(f"{p.report.kind}/{p.report.folder}" for p in pulled) or "none new"
    err.print(
        f"auto-fetch: {len(pulled)} report(s) pulled ({what}), {moved} bytes"
        + (f", {failed} not whole" if failed else "")
    )
