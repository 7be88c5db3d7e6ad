"""`tether tray`: the pystray glue around :mod:`tether.service.tray_model`.

pystray runs on the main thread (macOS requires it); an asyncio loop on a second thread follows
the agent's event stream and, after each burst of events, fetches the status document and draws
the model's view. It does not poll: while the agent runs it waits on events (the stream's own
heartbeat tells a dead agent), and only a link that is down asks for a look every few seconds
(to tell an outage from a blip). When the agent stops the icon says so and the loop waits for the
socket to come back, so the tray outlives agent restarts.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import subprocess
import sys
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ..dirs import state_dir
from ..errors import TetherError
from .control_client import ControlClient
from .control_lite import DaemonNotRunning
from .launch import ensure_daemon
from .tray_icons import icon_image
from .tray_model import (
    SEPARATOR,
    Action,
    MenuItem,
    TrayView,
    links_down_long,
    notice_for,
    view,
)

log = logging.getLogger(__name__)

BURST_S = 0.2
"""Events closer together than this are drawn once."""
DOWN_LOOK_S = 5.0
"""While a link is down, how often the status is fetched again (no event says "still down")."""
RETRY_S = 3.0
"""How often a tray without an agent checks whether one has started."""


def latest_bench() -> dict[str, Any] | None:
    """The newest stored benchmark's best point by roofline fraction, with its device."""
    from ..results.store import ResultsStore

    try:
        with ResultsStore() as store:
            runs = store.runs(limit=1)
            if not runs:
                return None
            points = [p for p in store.points(runs[0].run_id) if p.roofline_fraction is not None]
    except TetherError:
        return None
    if not points:
        return None
    best = max(points, key=lambda p: p.roofline_fraction or 0.0)
    return {**best.to_json(), "run_id": runs[0].run_id}


def open_path(path: Path) -> None:
    opener = "open" if sys.platform == "darwin" else "xdg-open"
    if shutil.which(opener):
        subprocess.Popen([opener, str(path)], stdin=subprocess.DEVNULL, start_new_session=True)


class TrayApp:
    """One tray icon bound to the agent's control socket."""

    def __init__(self) -> None:
        import pystray

        self.pystray = pystray
        self.view = view(None)
        self.icon = pystray.Icon("tether", icon_image(self.view.state), self.view.tooltip)
        self.icon.menu = self._menu(self.view.menu)
        self.loop = asyncio.new_event_loop()
        self._shown: set[str] = set()
        self._status: Mapping[str, Any] | None = None

    # -- drawing -----------------------------------------------------------------------------

    def _menu(self, items: tuple[MenuItem, ...]) -> Any:
        pystray = self.pystray
        built = []
        for item in items:
            if item is SEPARATOR:
                built.append(pystray.Menu.SEPARATOR)
            elif item.children:
                built.append(pystray.MenuItem(item.label, self._menu(item.children)))
            else:
                built.append(
                    pystray.MenuItem(
                        item.label,
                        self._callback(item.action),
                        enabled=item.enabled,
                        default=item.default,
                    )
                )
        return pystray.Menu(*built)

    def _callback(self, action: Action | None) -> Any:
        def chosen(_icon: Any = None, _item: Any = None) -> None:
            if action is not None:
                asyncio.run_coroutine_threadsafe(self._act(action), self.loop)

        return chosen

    def _draw(self, new: TrayView) -> None:
        if new.state is not self.view.state:
            self.icon.icon = icon_image(new.state)
        if new.tooltip != self.view.tooltip:
            self.icon.title = new.tooltip
        if new.menu != self.view.menu:
            self.icon.menu = self._menu(new.menu)
            self.icon.update_menu()
        self.view = new

    def _notify(self, key: str, title: str, message: str) -> None:
        if key in self._shown:
            return
        self._shown.add(key)
        if getattr(self.icon, "HAS_NOTIFICATION", False):
            self.icon.notify(message, title)
        log.info("notice: %s: %s", title, message)

    # -- following the agent -----------------------------------------------------------------

    async def _refresh(self, client: ControlClient) -> None:
        status = await client.status()
        runs = (await client.runs(limit=5))["runs"]
        bench = await asyncio.get_running_loop().run_in_executor(None, latest_bench)
        self._status = status
        self._draw(view(status, runs, bench))
        for project, host, down in links_down_long(status):
            self._notify(
                f"down:{project}:{host}:{down // 3600}",
                f"Link to {host} down",
                f"no connection for {down:.0f}s; tether keeps retrying",
            )

    async def _follow(self, client: ControlClient) -> None:
        await self._refresh(client)
        events = client.follow_events()
        async with contextlib.aclosing(events):
            nxt: asyncio.Future[Any] | None = None
            try:
                while True:
                    if nxt is None:
                        nxt = asyncio.ensure_future(anext(events))
                    down = any(
                        h.get("state") not in ("up", "stopped")
                        for p in (self._status or {}).get("projects", [])
                        for h in p.get("hosts", [])
                    )
                    done, _ = await asyncio.wait({nxt}, timeout=DOWN_LOOK_S if down else None)
                    if nxt in done:
                        event, nxt = nxt.result(), None
                        notice = notice_for(event, self._status)
                        if notice is not None:
                            self._notify(notice.key, notice.title, notice.message)
                        await asyncio.sleep(BURST_S)
                    await self._refresh(client)
            except StopAsyncIteration:
                return
            finally:
                if nxt is not None:
                    nxt.cancel()

    async def follow(self) -> None:
        """Follow the agent for as long as the tray lives, through its restarts."""
        while True:
            try:
                async with ControlClient() as client:
                    await self._follow(client)
            except DaemonNotRunning:
                pass
            except TetherError as exc:
                log.warning("tray: %s", exc.one_line())
            self._status = None
            self._draw(view(None))
            await asyncio.sleep(RETRY_S)

    async def _act(self, action: Action) -> None:
        try:
            await self._do(action)
        except TetherError as exc:
            self._notify(f"error:{id(exc)}", "tether", exc.one_line())

    async def _do(self, action: Action) -> None:
        kind = action.kind
        if kind == "quit":
            self.icon.stop()
            return
        if kind == "start-agent":
            await asyncio.get_running_loop().run_in_executor(None, ensure_daemon)
            return
        if kind == "open-logs":
            log_file = state_dir() / "daemon.log"
            open_path(log_file if log_file.exists() else state_dir())
            return
        if kind == "open-plot":
            await asyncio.get_running_loop().run_in_executor(None, self._open_plot)
            return
        async with ControlClient() as client:
            if kind == "sync":
                for project in (self._status or {}).get("projects", []):
                    await client.sync(project["project"])
            elif kind in ("pause", "resume"):
                await getattr(client, kind)()
            elif kind == "run-trigger":
                body = {"project": action.project, "trigger": action.target}
                await client.request("POST", "/v1/trigger", body)
            elif kind == "reconnect":
                await client.request("POST", "/v1/reconnect", {})
            elif kind == "stop-agent":
                await client.shutdown()

    def _open_plot(self) -> None:
        from ..results.store import ResultsStore, plot_runs

        bench = latest_bench()
        if bench is None:
            return
        with ResultsStore() as store:
            doc = store.document(bench["run_id"])
        out = state_dir() / "tray-roofline.png"
        plot_runs({bench["run_id"]: doc}, out)
        open_path(out)

    # -- running -----------------------------------------------------------------------------

    def run(self) -> None:
        """Show the icon until Quit; pystray owns this (main) thread."""
        thread = threading.Thread(target=self._loop_thread, name="tray-follow", daemon=True)

        def setup(icon: Any) -> None:
            icon.visible = True
            listen_for_clicks(icon)
            thread.start()

        self.icon.run(setup=setup)
        self.loop.call_soon_threadsafe(self.loop.stop)

    def _loop_thread(self) -> None:
        asyncio.set_event_loop(self.loop)
        task = self.loop.create_task(self.follow())
        with contextlib.suppress(RuntimeError):  # stopped by run() at Quit
            self.loop.run_forever()
        task.cancel()


def listen_for_clicks(icon: Any) -> None:
    """pystray's X11 icon window selects no button events, so a click (its default item, the
    X11 tray's only action) never reaches it; select them."""
    window = getattr(icon, "_window", None)
    if window is None or not hasattr(icon, "_display"):
        return
    from Xlib import X

    window.change_attributes(event_mask=X.ExposureMask | X.StructureNotifyMask | X.ButtonPressMask)
    icon._display.flush()


def pick_backend(env: Mapping[str, str]) -> str | None:
    """pystray's backend for this desktop (None: pystray's own choice, on macOS and Windows),
    or a TetherError (exit 69) saying what is missing."""
    from ..errors import EX_UNAVAILABLE

    if sys.platform == "darwin" or sys.platform == "win32":
        return None
    if env.get("PYSTRAY_BACKEND"):
        return env["PYSTRAY_BACKEND"]
    if not env.get("DISPLAY") and not env.get("WAYLAND_DISPLAY"):
        raise TetherError(
            "no display: the tray needs a graphical session (DISPLAY and WAYLAND_DISPLAY unset)",
            "run it from your desktop session, or use `tether tray --describe` / `tether status`",
            exit_code=EX_UNAVAILABLE,
        )
    if has_appindicator():
        return "appindicator"
    if "GNOME" in env.get("XDG_CURRENT_DESKTOP", "").upper():
        raise TetherError(
            "GNOME shows no tray icons without AppIndicator support",
            "install the AppIndicator extension and its bindings (Debian/Ubuntu: "
            "gnome-shell-extension-appindicator gir1.2-ayatanaappindicator3-0.1 python3-gi), "
            "then log in again",
            exit_code=EX_UNAVAILABLE,
        )
    if not env.get("DISPLAY"):
        raise TetherError(
            "this Wayland session has no X server for the tray icon and no AppIndicator",
            "install AppIndicator support (python3-gi, gir1.2-ayatanaappindicator3-0.1)",
            exit_code=EX_UNAVAILABLE,
        )
    return "xorg"


def has_appindicator() -> bool:
    try:
        import gi  # type: ignore[import-not-found]
    except ImportError:
        return False
    for name in ("AyatanaAppIndicator3", "AppIndicator3"):
        try:
            gi.require_version(name, "0.1")
            return True
        except (ValueError, ImportError):
            continue
    return False


def run_tray() -> int:
    backend = pick_backend(os.environ)
    if backend is not None:
        os.environ["PYSTRAY_BACKEND"] = backend
    try:
        app = TrayApp()
    except ImportError as exc:
        from ..errors import EX_UNAVAILABLE

        raise TetherError(
            f"the tray needs pystray and Pillow ({exc})",
            "install the tray extra: `pipx install 'tether[tray]'`",
            exit_code=EX_UNAVAILABLE,
        ) from None
    app.run()
    return 0
