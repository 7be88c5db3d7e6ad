"""`tether sync [PAIR...] [--dry-run] [--json]`: one two-way (or push/pull/mirror) sync, now.

When the user daemon runs and has this project registered, the sync is the daemon's: it already
holds the link, the agent and the watchers' dirty paths, so it flushes the pairs (an incremental
sync of what changed) and answers with their reports; ``--accept-deletes`` goes that way too (the
daemon's halted pairs resume for the plan they showed). ``--dry-run``, ``--accept-empty``, a
project the daemon does not know, or no daemon at all: the CLI connects and syncs on its own.
The daemon is reached with a few lines of stdlib HTTP over its Unix socket, so this path imports
neither aiohttp nor asyncssh.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ...service import control_lite
from ...sync.paths import shown
from ..main import config_of

if TYPE_CHECKING:
    from rich.progress import TaskID

    from ...config import Config, PairConfig
    from ...sync.engine import Progress, SyncReport

DAEMON_TIMEOUT_S = 600.0


def add_arguments(p: argparse.ArgumentParser, verb: str) -> None:
    p.add_argument("pairs", nargs="*", metavar="PAIR", help="pairs to sync (default: all)")
    p.add_argument("--dry-run", action="store_true", help="print the plan, change nothing")
    p.add_argument("--json", action="store_true", help="print a summary a script can read")
    p.add_argument(
        "--accept-empty",
        action="store_true",
        help="go on although a root is now empty: fill it from the other side (deletes nothing)",
    )
    p.add_argument(
        "--accept-deletes",
        action="store_true",
        help="go ahead with the deletions a halted pair showed (most of one side)",
    )
    p.set_defaults(handler=run)


def _size(n: float) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} GB"


def _via_daemon(
    config: Config, names: list[str], accept_deletes: bool
) -> list[dict[str, Any]] | None:
    """The daemon's reports for these pairs, or None when the CLI must sync on its own."""
    path = control_lite.socket_path()
    if path is None:
        return None
    body = {
        "project": str(Path(config.path).resolve()),
        "pairs": names or None,
        "timeout_s": DAEMON_TIMEOUT_S,
        "accept_deletes": accept_deletes,
    }
    try:
        _, data = control_lite.request(path, "POST", "/v1/sync", body, DAEMON_TIMEOUT_S + 10)
    except OSError:  # nobody answers on the socket: a stale one, no daemon
        return None
    if not isinstance(data, dict) or not data.get("registered"):
        return None  # not registered here, or an older daemon without /v1/sync
    return list(data["pairs"])


def rate_and_eta(done: int, size: int, seconds: float) -> str:
    """``"12.5 MB/s, 40 s left"`` for a transfer ``done`` of ``size`` bytes after ``seconds``."""
    rate = done / max(seconds, 1e-6)
    left = (size - done) / rate if rate > 0 else float("inf")
    eta = "?" if left == float("inf") else f"{left:.0f} s" if left < 120 else f"{left / 60:.0f} min"
    return f"{_size(rate)}/s, {eta} left"


class _Moving:
    """Big files under way: when each started and how far it is (for per-file progress)."""

    def __init__(self) -> None:
        self.files: dict[str, tuple[float, int, int]] = {}

    def update(self, path: str, done: int, size: int) -> None:
        started = self.files[path][0] if path in self.files else time.monotonic()
        self.files[path] = (started, done, size)

    def drop(self, path: str) -> None:
        self.files.pop(path, None)

    def bytes(self) -> int:
        return sum(done for _, done, _ in self.files.values())

    def lines(self, now: float) -> list[str]:
        return [
            f"  {path}: {_size(done)}/{_size(size)}, {rate_and_eta(done, size, now - started)}"
            for path, (started, done, size) in self.files.items()
        ]


class _PlainProgress:
    """Plain lines (not a terminal): a line per phase and one every ~2 s while transferring.

    Both progress classes implement :class:`tether.sync.engine.Progress` by shape (subclassing
    it would import the engine, and asyncssh with it, on every `tether` start)."""

    def __init__(self) -> None:
        self.last = 0.0
        self.started = 0.0
        self.files = 0
        self.count = 0
        self.total = 0
        self.landed = 0
        self.moving = _Moving()

    def phase(self, name: str, detail: str = "") -> None:
        if name in ("scan", "transfer"):
            print(f"{name} {detail}", file=sys.stderr, flush=True)

    def transfer_started(self, files: int, total_bytes: int) -> None:
        self.started = self.last = time.monotonic()
        self.files, self.count, self.total = files, 0, total_bytes
        print(f"  {files} to copy, {_size(total_bytes)}", file=sys.stderr, flush=True)

    def file_done(self, path: str, done_bytes: int, total_bytes: int) -> None:
        self.count += 1
        self.landed = done_bytes
        self.moving.drop(path)
        self._report()

    def file_bytes(self, path: str, done: int, size: int) -> None:
        self.moving.update(path, done, size)
        self._report()

    def _report(self) -> None:
        """Every ~2 s: the total, then each big file under way (bytes, rate, time left)."""
        now = time.monotonic()
        if now - self.last < 2.0:
            return
        self.last = now
        done = self.landed + self.moving.bytes()
        lines = [
            f"  {self.count}/{self.files} files, {_size(done)}/{_size(self.total)}, "
            + rate_and_eta(done, self.total, now - self.started),
            *self.moving.lines(now),
        ]
        print("\n".join(lines), file=sys.stderr, flush=True)


class _RichProgress:
    """A rich progress bar on a terminal: files, bytes, rate, ETA."""

    def __init__(self) -> None:
        from rich.progress import (
            BarColumn,
            DownloadColumn,
            TextColumn,
            TimeRemainingColumn,
            TransferSpeedColumn,
        )
        from rich.progress import Progress as Bar

        from ...console import console

        self.bar = Bar(
            TextColumn("{task.description}"),
            BarColumn(),
            DownloadColumn(),
            TransferSpeedColumn(),
            TimeRemainingColumn(),
            TextColumn("{task.fields[files]}"),
            console=console(stderr=True),
            transient=True,
        )
        self.task: TaskID | None = None
        self.count = self.files = self.landed = 0
        self.moving = _Moving()
        self.tasks: dict[str, TaskID] = {}

    def phase(self, name: str, detail: str = "") -> None:
        if name == "scan":
            self.bar.console.print(f"[dim]scanning {detail}…[/]")
        if name == "done" and self.task is not None:
            self.bar.stop()
            self.task = None

    def transfer_started(self, files: int, total_bytes: int) -> None:
        self.files, self.count = files, 0
        self.bar.start()
        self.task = self.bar.add_task("transfer", total=max(total_bytes, 1), files=f"0/{files}")

    def file_done(self, path: str, done_bytes: int, total_bytes: int) -> None:
        self.count += 1
        self.landed = done_bytes
        self.moving.drop(path)
        if path in self.tasks:
            self.bar.remove_task(self.tasks.pop(path))
        self._total()

    def file_bytes(self, path: str, done: int, size: int) -> None:
        """A row of its own per big file under way: its bytes, rate and time left."""
        self.moving.update(path, done, size)
        if self.task is None:
            return
        if path not in self.tasks:
            self.tasks[path] = self.bar.add_task(path, total=max(size, 1), files="")
        self.bar.update(self.tasks[path], completed=done)
        self._total()

    def _total(self) -> None:
        if self.task is not None:
            done = self.landed + self.moving.bytes()
            self.bar.update(self.task, completed=done, files=f"{self.count}/{self.files}")

    def close(self) -> None:
        if self.task is not None:
            self.bar.stop()


def _print_json_report(report: dict[str, Any]) -> None:
    """A report the daemon sent (its JSON form), printed like a one-shot one."""
    from ...console import console

    out = console()
    name = f"{report['pair']} ({report['mode']})"
    if report.get("notice"):
        out.print(f"[yellow]note[/] {report['notice']}")
    if str(report["status"]).startswith("halted"):
        out.print(f"[bold red]HALTED[/] {name}: {report['message']}")
        return
    out.print(
        f"{name}: {report['copied']} copied ({_size(report['bytes'])}), "
        f"{report['deleted']} deleted, {report['seconds']['total']:.2f} s (through the daemon)"
    )
    for c in report["conflicts"]:
        kept = f", other version kept as {c['copy']}" if c["copy"] else ""
        out.print(shown(f"  [yellow]conflict[/] {c['path']}: {c['winner']} version kept{kept}"))
    for p in report["problems"]:
        out.print(shown(f"  [red]problem[/] {p['path']}: {p['message']}"))


def _print_report(report: SyncReport) -> None:
    from ...console import console

    out = console()
    name = f"{report.pair} ({report.mode})"
    if report.notice:
        out.print(f"[yellow]note[/] {report.notice}")
    if report.halted:
        out.print(f"[bold red]HALTED[/] {name}: {report.message}")
        return
    if report.dry_run:
        out.print(f"{name}: {len(report.plan)} action(s) planned")
        for line in report.plan:
            out.print(f"  {shown(line)}")
    else:
        out.print(
            f"{name}: {report.copied} copied ({_size(report.bytes)}), {report.deleted} deleted, "
            f"{report.local_files} local / {report.remote_files} remote files, "
            f"{report.total_s:.2f} s"
        )
    for c in report.conflicts:
        kept = f", other version kept as {c.copy}" if c.copy else ""
        out.print(shown(f"  [yellow]conflict[/] {c.root}: {c.winner.value} version kept{kept}"))
    for p in report.problems:
        out.print(shown(f"  [red]problem[/] {p.path}: {p.message}"))


def run(args: argparse.Namespace) -> int:
    config = config_of(args)
    pairs = [config.pair(name) for name in args.pairs] or list(config.pairs.values())
    if not pairs:
        config.pair(None)  # raises the "no pairs configured" ConfigError
    if not args.dry_run and not args.accept_empty:
        names = [p.name for p in pairs] if args.pairs else []
        answered = _via_daemon(config, names, args.accept_deletes)
        if answered is not None:
            if args.json:
                print(json.dumps({"pairs": answered}, indent=2))
            else:
                for answer in answered:
                    _print_json_report(answer)
            unfinished = any(
                str(r["status"]).startswith("halted") or r.get("unsettled") for r in answered
            )
            return 1 if unfinished else 0
    return _one_shot(args, config, pairs)


def _one_shot(args: argparse.Namespace, config: Config, pairs: list[PairConfig]) -> int:
    import asyncio

    from ...console import print_json
    from ...sync.engine import Progress, sync_pair
    from ...transport.endpoints import SSH

    reports: list[SyncReport] = []
    tty = sys.stderr.isatty() and not args.json
    for pair in pairs:
        progress: Progress = _RichProgress() if tty else _PlainProgress()  # type: ignore[assignment]
        if args.json:
            progress = Progress()
        try:
            report = asyncio.run(
                sync_pair(
                    config,
                    pair,
                    SSH,
                    dry_run=args.dry_run,
                    progress=progress,
                    accept_empty=args.accept_empty,
                    accept_deletes=args.accept_deletes,
                )
            )
        finally:
            if isinstance(progress, _RichProgress):
                progress.close()
        reports.append(report)
        if not args.json:
            _print_report(report)
    if args.json:
        print_json({"pairs": [r.to_json() for r in reports]})
    if any(r.halted or r.unsettled for r in reports):
        return 1  # halted, or files that kept changing were left as they were (each printed)
    return 0
