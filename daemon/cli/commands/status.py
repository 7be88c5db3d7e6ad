"""`tether status [--json]`: links, pairs, tunnels, triggers of every registered project."""

from __future__ import annotations

import argparse
import time

from ...console import console, print_json
from ...service.control_lite import call

STATE_STYLES = {
    "up": "green",
    "watching": "green",
    "listening": "green",
    "syncing": "cyan",
    "connecting": "yellow",
    "starting": "yellow",
    "down": "yellow",
    "waiting": "yellow",
    "paused": "yellow",
    "failed": "bold red",
    "halted": "bold red",
}


def add_arguments(p: argparse.ArgumentParser, verb: str) -> None:
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(handler=run)


def _state(text: str) -> str:
    return f"[{STATE_STYLES.get(text, 'white')}]{text}[/]"


def _ago(ts: float | None) -> str:
    if not ts:
        return "never"
    seconds = time.time() - ts
    return f"{seconds:.0f}s ago" if seconds < 120 else f"{seconds / 60:.0f}m ago"


def run(args: argparse.Namespace) -> int:
    status = call("GET", "/v1/status")  # stdlib HTTP: aiohttp's import alone took ~0.3 s
    if args.json:
        print_json(status)
        return 0
    from rich.table import Table

    out = console()
    if not status["projects"]:
        out.print("the daemon runs, but no project is registered (`tether start` in one)")
    for project in status["projects"]:
        out.print(f"[bold]{project['project']}[/]")
        hosts = Table("host", "link", "round trip", "reconnects", "last error", box=None)
        for h in project["hosts"]:
            rtt = f"{h['rtt_ms']:.1f} ms" if h.get("rtt_ms") is not None else ""
            hosts.add_row(
                h["host"], _state(h["state"]), rtt, str(h["reconnects"]), h["last_error"] or ""
            )
        out.print(hosts)
        pairs = Table(
            "pair", "state", "mode", "pending", "last sync", "conflicts", "note", box=None
        )
        for p in project["pairs"]:
            pairs.add_row(
                p["pair"],
                _state(p["state"]),
                p["mode"],
                str(p["pending"]),
                _ago(p["last_sync"]),
                str(p["conflicts"]),
                p["message"],
            )
        out.print(pairs)
        if project["tunnels"]:
            tunnels = Table(
                "tunnel",
                "state",
                "local",
                "remote",
                "open",
                "total",
                "in/out",
                "last error",
                box=None,
            )
            for t in project["tunnels"]:
                tunnels.add_row(
                    t["name"],
                    _state("listening" if t["listening"] else "failed"),
                    t["local"],
                    t["remote"],
                    str(t["open_connections"]),
                    str(t["total_connections"]),
                    f"{t['bytes_in']}/{t['bytes_out']} B",
                    t["last_error"] or "",
                )
            out.print(tunnels)
        for trig in project["triggers"]:
            running = f"running {trig['running']}" if trig["running"] else "idle"
            last = trig["last"] or {}
            out.print(
                f"  trigger {trig['trigger']}: {running}; fired {trig['fired']}x; "
                f"last {last.get('reason', '-')} {last.get('status', '')}"
            )
    return 0
