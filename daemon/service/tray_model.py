"""What the tray shows, as a pure function of the agent's status document (no display, no I/O).

:func:`view` turns ``GET /v1/status`` (None: no agent answers), the recent runs and the newest
benchmark's headline into a :class:`TrayView`: the icon's state, the tooltip, the menu. The
pystray glue (:mod:`tether.service.tray`) only draws it and sends the chosen :class:`Action` to
the agent, so every state and menu is tested here without a display. :func:`notice_for` decides,
per event, what desktop notification (if any) it deserves; :func:`links_down_long` which links
have been down long enough to say so.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

LINK_GRACE_S = 5.0
"""A link down for less than this is a blip (reconnecting), not yet worth the user's attention."""


class IconState(str, enum.Enum):
    """The icon's state, most urgent first when several hold (see :func:`view`)."""

    NOT_RUNNING = "not-running"
    """No agent answers on the control socket."""
    ATTENTION = "attention"
    """A link down past the grace, a halted pair, an unresolved conflict, or a failed run."""
    PAUSED = "paused"
    """A pair is paused by the user."""
    RUNNING = "running"
    """A run is in progress on a host."""
    SYNCING = "syncing"
    """A pair is syncing (or changes are pending)."""
    IDLE = "idle"
    """Everything linked and in sync."""


@dataclass(frozen=True)
class Action:
    """A menu item's effect, carried out by the glue."""

    kind: str
    """sync, pause, resume, run-trigger, open-plot, open-logs, reconnect, start-agent,
    stop-agent, quit."""
    project: str | None = None
    target: str | None = None
    """The trigger's name for run-trigger."""


@dataclass(frozen=True)
class MenuItem:
    label: str
    action: Action | None = None
    """None: an information line (shown greyed out) or a submenu's title."""
    children: tuple[MenuItem, ...] = ()
    default: bool = False
    """What a click on the icon itself does (the X11 tray has no menu, only this)."""

    @property
    def enabled(self) -> bool:
        return self.action is not None or bool(self.children)


SEPARATOR = MenuItem("-")


@dataclass(frozen=True)
class TrayView:
    state: IconState
    tooltip: str
    menu: tuple[MenuItem, ...]
    reasons: tuple[str, ...] = ()
    """Why the state is ATTENTION (empty otherwise)."""


@dataclass(frozen=True)
class Notice:
    key: str
    """Identifies the happening: shown once per key."""
    title: str
    message: str


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


def _project_name(project: Mapping[str, Any]) -> str:
    path = str(project.get("project", ""))
    parts = path.rstrip("/").split("/")
    return parts[-2] if len(parts) >= 2 else path


def _link_down_s(host: Mapping[str, Any]) -> float | None:
    """Seconds a link has been without a connection (None: it is up or stopped)."""
    if host.get("state") in ("up", "stopped"):
        return None
    return float(host.get("state_for_s") or 0.0)


def _run_failed(run: Mapping[str, Any]) -> bool:
    return run.get("reason") == "error" or (run.get("status") not in (None, 0))


def attention(status: Mapping[str, Any], runs: Sequence[Mapping[str, Any]]) -> list[str]:
    """Why the user should look, one short line each (pure)."""
    reasons: list[str] = []
    for project in status.get("projects") or []:
        for host in project.get("hosts", []):
            down = _link_down_s(host)
            if host.get("state") == "failed":
                reasons.append(f"link to {host['host']} failed: {host.get('last_error') or '?'}")
            elif down is not None and down >= LINK_GRACE_S:
                reasons.append(f"link to {host['host']} down for {down:.0f}s")
        for pair in project.get("pairs", []):
            if pair.get("state") in ("halted", "failed"):
                what = f"pair {pair['pair']} {pair['state']}: {pair.get('message') or ''}"
                reasons.append(what.strip())
            if pair.get("conflicts"):
                reasons.append(f"pair {pair['pair']}: {_plural(pair['conflicts'], 'conflict')}")
    finished = [r for r in runs if r.get("reason") != "running"]
    if finished and _run_failed(finished[0]):
        last = finished[0]
        reasons.append(f"last run failed: {last.get('command', '?')} (status {last.get('status')})")
    return reasons


def icon_state(status: Mapping[str, Any] | None, runs: Sequence[Mapping[str, Any]]) -> IconState:
    if status is None:
        return IconState.NOT_RUNNING
    if attention(status, runs):
        return IconState.ATTENTION
    projects = status.get("projects") or []
    pairs = [p for project in projects for p in project.get("pairs", [])]
    if any(p.get("state") == "paused" for p in pairs):
        return IconState.PAUSED
    triggers = [t for project in projects for t in project.get("triggers", [])]
    if any(t.get("running") for t in triggers) or any(r.get("reason") == "running" for r in runs):
        return IconState.RUNNING
    if any(p.get("state") in ("syncing", "starting") or p.get("pending") for p in pairs):
        return IconState.SYNCING
    return IconState.IDLE


def tooltip(state: IconState, status: Mapping[str, Any] | None, reasons: Sequence[str]) -> str:
    if status is None:
        return "tether: agent not running"
    projects = status.get("projects") or []
    hosts = [h for p in projects for h in p.get("hosts", [])]
    pairs = [s for p in projects for s in p.get("pairs", [])]
    up = sum(1 for h in hosts if h.get("state") == "up")
    head = {
        IconState.ATTENTION: reasons[0] if reasons else "needs attention",
        IconState.PAUSED: "paused",
        IconState.RUNNING: "run in progress",
        IconState.SYNCING: "syncing",
        IconState.IDLE: "in sync",
    }[state]
    return f"tether: {head} · {up}/{len(hosts)} links up · {_plural(len(pairs), 'pair')}"


def _host_line(host: Mapping[str, Any]) -> str:
    state = str(host.get("state"))
    if state == "up" and host.get("rtt_ms") is not None:
        return f"{host['host']}: up, {host['rtt_ms']:.0f} ms"
    down = _link_down_s(host)
    if down is not None and state != "failed":
        return f"{host['host']}: {state} for {down:.0f}s"
    return f"{host['host']}: {state}"


def _pair_line(pair: Mapping[str, Any]) -> str:
    line = f"{pair['pair']}: {pair.get('state')}"
    if pair.get("pending"):
        line += f", {pair['pending']} pending"
    if pair.get("conflicts"):
        line += f", {_plural(pair['conflicts'], 'conflict')}"
    return line


def _run_line(run: Mapping[str, Any]) -> str:
    command = str(run.get("command", "?"))
    command = command if len(command) <= 40 else command[:39] + "…"
    if run.get("reason") == "running":
        return f"Run: {command} (running)"
    duration = run.get("duration_s")
    took = f", {duration:.1f}s" if isinstance(duration, (int, float)) else ""
    return f"Last run: {command} → status {run.get('status')}{took}"


def _bench_line(bench: Mapping[str, Any]) -> str:
    flops = bench.get("flops_per_s")
    fraction = bench.get("roofline_fraction")
    parts = [f"Last bench: {bench.get('kernel', '?')} {bench.get('precision', '')}".rstrip()]
    if isinstance(flops, (int, float)):
        parts.append(f"{flops / 1e12:.2f} TFLOP/s")
    if isinstance(fraction, (int, float)):
        parts.append(f"{fraction:.0%} of roofline")
    if bench.get("device"):
        parts.append(f"on {bench['device']}")
    return " · ".join(parts)


def view(
    status: Mapping[str, Any] | None,
    runs: Sequence[Mapping[str, Any]] = (),
    bench: Mapping[str, Any] | None = None,
) -> TrayView:
    """The tray for this status document (None: no agent answers), the newest runs (newest
    first, as ``GET /v1/runs`` lists them) and the newest benchmark's best point."""
    state = icon_state(status, runs)
    reasons = tuple(attention(status, runs)) if status is not None else ()
    quit_item = MenuItem("Quit tray", Action("quit"))
    if status is None:
        menu = (
            MenuItem("tether agent not running"),
            SEPARATOR,
            MenuItem("Start agent", Action("start-agent"), default=True),
            MenuItem("Open logs", Action("open-logs")),
            SEPARATOR,
            quit_item,
        )
        return TrayView(state, tooltip(state, None, ()), menu)
    items: list[MenuItem] = []
    projects = status.get("projects") or []
    if not projects:
        items.append(MenuItem("No projects (run `tether start` in one)"))
    paused = any(p.get("state") == "paused" for pr in projects for p in pr.get("pairs", []))
    triggers: list[MenuItem] = []
    for project in projects:
        lines = [MenuItem(f"Host {_host_line(h)}") for h in project.get("hosts", [])]
        lines += [MenuItem(f"Pair {_pair_line(p)}") for p in project.get("pairs", [])]
        items.append(MenuItem(_project_name(project), children=tuple(lines) or (MenuItem("-"),)))
        for trigger in project.get("triggers", []):
            label = f"Run {trigger['trigger']} now ({_project_name(project)})"
            action = Action("run-trigger", project.get("project"), trigger["trigger"])
            triggers.append(MenuItem(label, action))
    items.append(SEPARATOR)
    if runs:
        items.append(MenuItem(_run_line(runs[0])))
    if bench:
        items.append(MenuItem(_bench_line(bench)))
    for reason in reasons:
        items.append(MenuItem(f"⚠ {reason}"))
    pause_item = MenuItem(
        "Resume all" if paused else "Pause all", Action("resume" if paused else "pause")
    )
    items += [
        SEPARATOR,
        MenuItem("Sync now", Action("sync"), default=True),
        pause_item,
        *triggers,
        MenuItem("Open last roofline plot", Action("open-plot") if bench else None),
        MenuItem("Open logs", Action("open-logs")),
        MenuItem("Reconnect", Action("reconnect")),
        SEPARATOR,
        MenuItem("Stop agent", Action("stop-agent")),
        quit_item,
    ]
    return TrayView(state, tooltip(state, status, reasons), tuple(items), reasons)


# -- text and JSON forms (`tether tray --describe`) --------------------------------------------


def describe(tray: TrayView) -> str:
    """The view as text: state, tooltip, then the menu indented (for scripts, screen readers)."""
    lines = [f"state: {tray.state.value}", f"tooltip: {tray.tooltip}", "menu:"]

    def walk(items: Sequence[MenuItem], depth: int) -> None:
        for item in items:
            if item is SEPARATOR or item.label == "-":
                lines.append("  " * depth + "  ---")
                continue
            mark = "" if item.enabled else " (info)"
            mark += " [default]" if item.default else ""
            lines.append("  " * depth + f"  {item.label}{mark}")
            walk(item.children, depth + 1)

    walk(tray.menu, 0)
    return "\n".join(lines)


def to_json(tray: TrayView) -> dict[str, Any]:
    return {
        "state": tray.state.value,
        "tooltip": tray.tooltip,
        "reasons": list(tray.reasons),
        "menu": [asdict(item) for item in tray.menu],
    }


# -- notifications -----------------------------------------------------------------------------


def _notify_config(status: Mapping[str, Any] | None, project: str | None) -> Mapping[str, Any]:
    for entry in (status or {}).get("projects") or []:
        if entry.get("project") == project:
            return entry.get("notify") or {}
    return {}


def notice_for(event: Mapping[str, Any], status: Mapping[str, Any] | None) -> Notice | None:
    """The notification one event deserves under its project's ``[notify]`` (None: none)."""
    kind = event.get("kind")
    config = _notify_config(status, event.get("project"))
    message = str(event.get("message", ""))
    if kind in ("trigger.finished", "trigger.error") and config.get("runs", True):
        failed = kind == "trigger.error" or event.get("status") != 0
        title = f"Run {'failed' if failed else 'finished'}: {event.get('trigger', '')}".strip()
        return Notice(f"run:{event.get('run') or message}", title, message)
    if kind == "pair.synced" and event.get("conflicts") and config.get("conflicts", True):
        title = f"Conflict in {event.get('pair')}: both versions kept"
        return Notice(f"conflict:{event.get('project')}:{event.get('ts')}", title, message)
    if kind == "reports.pulled" and config.get("reports", True):
        return Notice(f"report:{event.get('project')}:{message}", "New report pulled", message)
    return None


def links_down_long(status: Mapping[str, Any] | None) -> list[tuple[str, str, float]]:
    """(project, host, seconds down) of each link down past its project's ``link_down_after``,
    where its notification is on."""
    found = []
    for project in (status or {}).get("projects") or []:
        config = project.get("notify") or {}
        if not config.get("link_down", True):
            continue
        after = float(config.get("link_down_after_s", 60.0))
        for host in project.get("hosts", []):
            down = _link_down_s(host)
            if down is not None and down >= after:
                found.append((str(project.get("project")), str(host["host"]), down))
    return found
