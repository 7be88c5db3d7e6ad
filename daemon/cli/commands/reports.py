"""`tether reports list [NAME] [--kind K] [--json]` and `tether reports pull [FOLDER...] [--all |
--outdated] [--kind K] [--json]`: the report folders a tool left on the host (``[reports.NAME]``
roots), listed in one round trip per host, and pulled incrementally into local folders.

Each pull is a pull-mode sync of one report folder: only what changed moves, every file lands
whole, and the pulled copy is a plain local folder (it works offline).
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import TYPE_CHECKING

from ...errors import TetherError, UsageError
from ...sync.paths import shown
from ..main import config_of
from .sync import _PlainProgress, _RichProgress, _size

if TYPE_CHECKING:
    from ...config import Config
    from ...reports.fetch import Listing, Pulled
    from ...reports.model import Report
    from ...transport.agent_client import AgentClient


def add_arguments(p: argparse.ArgumentParser, verb: str) -> None:
    p.usage = (
        "tether reports list [NAME] [--kind K] [--json]\n"
        "       tether reports pull [FOLDER...] [--all | --outdated] [--kind K] [--json]"
    )
    p.add_argument("action", choices=["list", "pull"])
    p.add_argument(
        "names",
        nargs="*",
        metavar="NAME|FOLDER",
        help="list: [reports.NAME] tables (default: all); pull: report folders as listed",
    )
    p.add_argument("--kind", help="only this kind (memory, performance, ...)")
    which = p.add_mutually_exclusive_group()
    which.add_argument("--all", action="store_true", help="pull: every report listed")
    which.add_argument(
        "--outdated", action="store_true", help="pull: the ones changed on the host since pulled"
    )
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    import asyncio

    config = config_of(args)
    if not config.reports:
        raise TetherError(
            f"{config.path}: no [reports.NAME] table",
            'add one, e.g. [reports.gpu] memory = "~/tt-metal/generated/ttnn/reports/"',
        )
    if args.action == "list":
        if args.all or args.outdated:
            raise UsageError("--all and --outdated are for `tether reports pull`")
        for name in args.names:
            if name not in config.reports:
                from ...config import choices_hint

                raise UsageError(f"no [reports.{name}]", choices_hint(name, list(config.reports)))
        return asyncio.run(_list(config, args))
    if not (args.names or args.all or args.outdated):
        raise UsageError(
            "which reports?", "name folders (see `tether reports list`), or --all, or --outdated"
        )
    return asyncio.run(_pull(config, args))


async def _listing(config: Config, tables: list[str], kind: str | None) -> Listing:
    """One round trip per host for all its roots; local status from the sync state."""
    from ...reports.fetch import Listing, list_host, tables_for, with_local_status
    from ...sync.state import off_loop
    from ...transport.agent_client import AgentClient
    from ...transport.ssh import open_connection

    hosts = sorted({t.host for t in config.reports.values()})
    if kind is not None and not any(kind in t.roots for t in config.reports.values()):
        from ...config import choices_hint

        kinds = sorted({k for t in config.reports.values() for k in t.roots})
        raise UsageError(f"no report folder of kind {kind!r}", choices_hint(kind, kinds))
    listing = Listing()
    for name in hosts:
        chosen = [t for t in tables_for(config, name, tables) if kind is None or kind in t.roots]
        if not chosen:
            continue
        host = config.host(name)
        async with open_connection(host) as conn:
            agent = await AgentClient.start(conn, python=host.python)
            try:
                part = await list_host(agent, chosen, kind)
            finally:
                await agent.close()
        listing.errors.extend(part.errors)
        listing.reports.extend(part.reports)
    listing.reports.sort(key=lambda r: (-r.mtime_ns, r.kind, r.folder))
    found = listing.reports
    async with off_loop() as store:
        listing.reports = await store.run(lambda s: with_local_status(config, s, found))
    return listing


def _when(mtime_ns: int) -> str:
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(mtime_ns / 1e9)) if mtime_ns else "-"


async def _list(config: Config, args: argparse.Namespace) -> int:
    from rich.table import Table

    from ...console import console, print_json

    listing = await _listing(config, args.names, args.kind)
    if args.json:
        print_json({"reports": [r.to_json() for r in listing.reports], "errors": listing.errors})
    else:
        table = Table("kind", "folder", "name", "modified", "size", "files", "status", box=None)
        for r in listing.reports:
            table.add_row(
                r.kind, shown(r.folder), r.name, _when(r.mtime_ns), _size(r.size),
                str(r.files), r.status.value,
            )  # fmt: skip
        console().print(table if listing.reports else "no reports found")
    for line in listing.errors:
        print(f"tether: reports root {line}", file=sys.stderr)
    return 1 if listing.errors else 0


def _pick(listing: Listing, args: argparse.Namespace) -> list[Report]:
    from ...reports.model import LocalStatus

    if args.all:
        return listing.reports
    if args.outdated:
        return [r for r in listing.reports if r.status is LocalStatus.OUTDATED]
    chosen: list[Report] = []
    for name in args.names:
        name = name.strip("/")
        found = [r for r in listing.reports if name in (r.folder, f"{r.kind}/{r.folder}", r.name)]
        if not found:
            raise TetherError(
                f"no report folder {name!r} on the host",
                "`tether reports list` shows the folders there",
            )
        if len(found) > 1:
            raise UsageError(
                f"{name!r} names {len(found)} reports",
                "say which as KIND/FOLDER: " + ", ".join(f"{r.kind}/{r.folder}" for r in found),
            )
        chosen.extend(r for r in found if r not in chosen)
    return chosen


async def _pull(config: Config, args: argparse.Namespace) -> int:
    from ...console import print_json

    listing = await _listing(config, [], args.kind)
    for line in listing.errors:
        print(f"tether: reports root {line}", file=sys.stderr)
    chosen = _pick(listing, args)
    pulled = await pull_reports(config, chosen, quiet=args.json)
    if args.json:
        print_json({"pulled": [pulled_json(p) for p in pulled], "errors": listing.errors})
    elif not chosen:
        print("nothing to pull", file=sys.stderr)
    return 0 if all(p.ok for p in pulled) else 1


async def pull_reports(
    config: Config, reports: list[Report], *, quiet: bool = False, agent: AgentClient | None = None
) -> list[Pulled]:
    """Pull each report with progress (bytes, rate, ETA) and a line per report. ``agent``: a
    running one on their host (after `tether run --auto-fetch`); else one per host is started."""
    from ...transport.agent_client import AgentClient
    from ...transport.ssh import open_connection

    if agent is not None:
        return [await _pull_one(config, agent, r, quiet) for r in reports]
    pulled: list[Pulled] = []
    for name in sorted({config.reports[r.table].host for r in reports}):
        host = config.host(name)
        async with open_connection(host) as conn:
            started = await AgentClient.start(conn, python=host.python)
            try:
                for report in [r for r in reports if config.reports[r.table].host == name]:
                    pulled.append(await _pull_one(config, started, report, quiet))
            finally:
                await started.close()
    return pulled


async def _pull_one(config: Config, agent: AgentClient, report: Report, quiet: bool) -> Pulled:
    from ...reports.fetch import pull
    from ...sync.engine import Progress

    progress: Progress = Progress()
    if not quiet:
        tty = sys.stderr.isatty()
        progress = _RichProgress() if tty else _PlainProgress()  # type: ignore[assignment]
        print(
            f"pulling {report.kind}/{shown(report.folder)} "
            f"({report.files} files, {_size(report.size)})",
            file=sys.stderr,
            flush=True,
        )
    try:
        result = await pull(config, agent, report, progress=progress)
    finally:
        if isinstance(progress, _RichProgress):
            progress.close()
    if not quiet:
        _say(result)
    return result


def _say(p: Pulled) -> None:
    where = f"{p.report.kind}/{shown(p.report.folder)}"
    if p.error:
        print(f"tether: {where}: not pulled: {p.error}", file=sys.stderr)
        return
    sync = p.sync
    assert sync is not None
    moved = f"{sync.copied} copied ({_size(sync.bytes)}), {sync.deleted} deleted"
    print(
        f"{where}: {moved if sync.copied or sync.deleted else 'up to date'}, {sync.total_s:.2f} s"
    )
    for c in sync.conflicts:
        print(shown(f"  conflict {c.root}: the host's version kept, yours as {c.copy}"))
    for problem in sync.problems:
        print(shown(f"  problem {problem.path}: {problem.message}"), file=sys.stderr)
    if p.changing:
        print(
            f"tether: {where} is still being written on the host; pull it again once it is done",
            file=sys.stderr,
        )


def pulled_json(p: Pulled) -> dict[str, object]:
    sync = p.sync
    return {
        **p.report.to_json(),
        "copied": sync.copied if sync else 0,
        "deleted": sync.deleted if sync else 0,
        "bytes": sync.bytes if sync else 0,
        "changing": p.changing,
        "error": p.error,
        "problems": [{"path": x.path, "message": x.message} for x in sync.problems] if sync else [],
    }
