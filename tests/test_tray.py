"""The tray: its pure model for every agent state, its icons, its notifications, `[notify]`; and
the real `tether tray` in a real X server (Xvfb) with a minimal system-tray manager, against a
real agent it starts from its own icon and follows through a restart."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from tether.config import parse_config
from tether.errors import ConfigError
from tether.service.tray_icons import icon_image
from tether.service.tray_model import (
    IconState,
    describe,
    links_down_long,
    notice_for,
    to_json,
    view,
)

from tests.helpers import until

PROJECT = "/home/u/proj/tether.toml"
NOTIFY = {
    "runs": True,
    "conflicts": True,
    "link_down": True,
    "link_down_after_s": 60.0,
    "reports": True,
}


def status(
    *,
    link: str = "up",
    link_for_s: float = 100.0,
    pair: str = "watching",
    pending: int = 0,
    conflicts: int = 0,
    running: str | None = None,
    notify: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """A status document as `GET /v1/status` answers it."""
    return {
        "pid": 1,
        "projects": [
            {
                "project": PROJECT,
                "notify": notify or NOTIFY,
                "hosts": [
                    {
                        "host": "gpu",
                        "state": link,
                        "state_for_s": link_for_s,
                        "rtt_ms": 3.2 if link == "up" else None,
                        "last_error": None if link == "up" else "connection refused",
                    }
                ],
                "pairs": [
                    {
                        "pair": "code",
                        "state": pair,
                        "pending": pending,
                        "conflicts": conflicts,
                        "message": "root emptied" if pair == "halted" else "",
                    }
                ],
                "triggers": [{"trigger": "roofline", "running": running}],
            }
        ],
    }


FAILED_RUN = {"command": "python bench.py", "reason": "exited", "status": 3, "duration_s": 2.5}
GOOD_RUN = {"command": "python bench.py", "reason": "exited", "status": 0, "duration_s": 1.25}

CASES: dict[str, tuple[Any, list[dict[str, Any]], IconState]] = {
    "not running": (None, [], IconState.NOT_RUNNING),
    "linked": (status(), [GOOD_RUN], IconState.IDLE),
    "syncing": (status(pair="syncing", pending=4), [], IconState.SYNCING),
    "link blip": (status(link="down", link_for_s=1.0), [], IconState.IDLE),
    "link lost": (status(link="down", link_for_s=12.0), [], IconState.ATTENTION),
    "link failed": (status(link="failed", link_for_s=0.0), [], IconState.ATTENTION),
    "run in progress": (status(running="r-1"), [], IconState.RUNNING),
    "paused": (status(pair="paused"), [], IconState.PAUSED),
    "conflict": (status(conflicts=2), [], IconState.ATTENTION),
    "halted": (status(pair="halted"), [], IconState.ATTENTION),
    "run failed": (status(), [FAILED_RUN], IconState.ATTENTION),
}


def labels(tray: Any) -> list[str]:
    out: list[str] = []
    for item in tray.menu:
        out.append(item.label)
        out.extend(child.label for child in item.children)
    return out


@pytest.mark.parametrize("case", list(CASES))
def test_state_tooltip_and_menu_for_each_agent_state(case: str) -> None:
    doc, runs, expected = CASES[case]
    tray = view(doc, runs)
    assert tray.state is expected
    assert "\n" not in tray.tooltip and tray.tooltip.startswith("tether: ")
    items = labels(tray)
    defaults = [i.label for i in tray.menu if i.default]
    if doc is None:
        assert defaults == ["Start agent"] and "Stop agent" not in items
        return
    assert defaults == ["Sync now"]
    assert "proj" in items  # the project, named by its folder
    assert any(label.startswith("Host gpu: ") for label in items)
    assert "Pair code: " + doc["projects"][0]["pairs"][0]["state"] in " ".join(items)
    for action in ("Run roofline now (proj)", "Open logs", "Reconnect", "Stop agent", "Quit tray"):
        assert action in items
    assert ("Resume all" in items) == (expected is IconState.PAUSED)
    assert ("Pause all" in items) != (expected is IconState.PAUSED)
    if expected is IconState.ATTENTION:
        assert tray.reasons and any(label.startswith("⚠ ") for label in items)
    else:
        assert not tray.reasons


def test_menu_lines_carry_rtt_pending_last_run_and_bench() -> None:
    bench = {"kernel": "gemm", "precision": "fp32", "flops_per_s": 2.5e13, "roofline_fraction": 0.6,
             "device": "H200"}  # fmt: skip
    tray = view(status(pair="syncing", pending=4), [GOOD_RUN], bench)
    items = labels(tray)
    assert "Host gpu: up, 3 ms" in items
    assert "Pair code: syncing, 4 pending" in items
    assert "Last run: python bench.py → status 0, 1.2s" in items
    assert "Last bench: gemm fp32 · 25.00 TFLOP/s · 60% of roofline · on H200" in items
    plot = next(i for i in tray.menu if i.label == "Open last roofline plot")
    assert plot.enabled
    text = describe(tray)
    assert (
        text.startswith("state: syncing\ntooltip: tether: syncing") and "Sync now [default]" in text
    )
    assert json.loads(json.dumps(to_json(tray)))["state"] == "syncing"


def test_each_state_has_its_own_shape() -> None:
    """Told apart without colour: the icons' opaque masks differ pairwise."""
    masks = {
        s: icon_image(s).getchannel("A").point(lambda a: 255 if a > 127 else 0) for s in IconState
    }
    for a in IconState:
        for b in IconState:
            if a is not b:
                diff = sum(
                    1 for x, y in zip(masks[a].tobytes(), masks[b].tobytes(), strict=True) if x != y
                )
                assert diff > 64, (a, b)


def test_notifications_once_per_event_and_switchable() -> None:
    doc = status()
    finished = {"kind": "trigger.finished", "project": PROJECT, "trigger": "roofline",
                "run": "r-1", "status": 0, "message": "run r-1 exited with 0"}  # fmt: skip
    failed = {**finished, "run": "r-2", "status": 3}
    conflict = {"kind": "pair.synced", "project": PROJECT, "pair": "code", "conflicts": 1,
                "ts": 5.0, "message": "1 copied, 0 deleted, 1 conflicts in 3 ms"}  # fmt: skip
    quiet = {**conflict, "conflicts": 0}
    n1, n2, n3 = notice_for(finished, doc), notice_for(failed, doc), notice_for(conflict, doc)
    assert n1 and n1.title == "Run finished: roofline"
    assert n2 and n2.title == "Run failed: roofline" and n2.key != n1.key
    assert n3 and n3.title.startswith("Conflict in code")
    assert notice_for(quiet, doc) is None
    report = {"kind": "reports.pulled", "project": PROJECT,
              "message": "pulled tt.memory/4004 (1 file(s))"}  # fmt: skip
    n4 = notice_for(report, doc)
    assert n4 and n4.title == "New report pulled" and "tt.memory/4004" in n4.message
    off = status(notify={**NOTIFY, "runs": False, "conflicts": False, "reports": False})
    assert notice_for(finished, off) is None and notice_for(conflict, off) is None
    assert notice_for(report, off) is None
    assert links_down_long(status(link="down", link_for_s=61)) == [(PROJECT, "gpu", 61)]
    assert links_down_long(status(link="down", link_for_s=30)) == []
    assert (
        links_down_long(status(link="down", link_for_s=61, notify={**NOTIFY, "link_down": False}))
        == []
    )


def test_notify_config_keys_are_validated() -> None:
    base = '[hosts.g]\nssh = "x"\n'
    config = parse_config(
        base + '[notify]\nruns = false\nlink_down_after = "5s"\n', Path("/t.toml")
    )
    assert (
        not config.notify.runs and config.notify.conflicts and config.notify.link_down_after_s == 5
    )
    with pytest.raises(ConfigError, match=r"unknown key notify\.run$") as bad:
        parse_config(base + "[notify]\nrun = false\n", Path("/t.toml"))
    assert "did you mean 'runs'" in bad.value.hint
    with pytest.raises(ConfigError, match="true or false"):
        parse_config(base + "[notify]\nconflicts = 1\n", Path("/t.toml"))


# -- the real tray in a real X server ---------------------------------------------------------

X_WAIT_S = 60.0
"""How long a wait on the X server (and the tray process's start) may take on a loaded machine."""


@pytest.fixture
def xserver() -> Iterator[str]:
    if shutil.which("Xvfb") is None:
        pytest.skip("Xvfb is not installed (scripts/test installs it)")
    number = 100 + os.getpid() % 800
    while Path(f"/tmp/.X11-unix/X{number}").exists():
        number += 1
    proc = subprocess.Popen(
        ["Xvfb", f":{number}", "-screen", "0", "320x240x24", "-nolisten", "tcp"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    until(lambda: Path(f"/tmp/.X11-unix/X{number}").exists(), "Xvfb to listen", X_WAIT_S)
    yield f":{number}"
    proc.terminate()
    proc.wait(10)


class TrayManager:
    """The smallest XEMBED system tray: owns _NET_SYSTEM_TRAY_S0 and docks icons at (0, 0)."""

    def __init__(self, display_name: str) -> None:
        from Xlib import X, display

        self.X = X
        self.display = display.Display(display_name)
        screen = self.display.screen()
        self.window = screen.root.create_window(
            0, 0, 64, 64, 0, screen.root_depth, background_pixel=screen.white_pixel
        )
        self.window.map()
        self.window.set_selection_owner(self.display.intern_atom("_NET_SYSTEM_TRAY_S0"), 0)
        self.opcode = self.display.intern_atom("_NET_SYSTEM_TRAY_OPCODE")
        self.display.sync()
        self.docked: int | None = None
        self._stop = False
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while not self._stop:
            if not self.display.pending_events():
                time.sleep(0.02)
                continue
            event = self.display.next_event()
            if event.type == self.X.ClientMessage and event.client_type == self.opcode:
                data = event.data[1]
                if data[1] == 0:  # SYSTEM_TRAY_REQUEST_DOCK
                    icon = self.display.create_resource_object("window", data[2])
                    icon.reparent(self.window, 0, 0)
                    icon.configure(width=64, height=64)
                    icon.map()
                    self.display.sync()
                    self.docked = data[2]


def title_of(display_name: str, window_id: int) -> str:
    from Xlib import display

    d = display.Display(display_name)
    try:
        name = d.create_resource_object("window", window_id).get_wm_name()
        return name.decode() if isinstance(name, bytes) else str(name or "")
    finally:
        d.close()


def click(display_name: str, x: int, y: int) -> None:
    from Xlib import X, display
    from Xlib.ext import xtest

    d = display.Display(display_name)
    xtest.fake_input(d, X.MotionNotify, x=x, y=y)
    xtest.fake_input(d, X.ButtonPress, 1)
    xtest.fake_input(d, X.ButtonRelease, 1)
    d.sync()
    d.close()


def screenshot(display_name: str, out: Path) -> Path:
    from PIL import Image
    from Xlib import X, display

    d = display.Display(display_name)
    root = d.screen().root
    geometry = root.get_geometry()
    raw = root.get_image(0, 0, geometry.width, geometry.height, X.ZPixmap, 0xFFFFFFFF)
    Image.frombytes("RGB", (geometry.width, geometry.height), raw.data, "raw", "BGRX").save(out)
    d.close()
    return out


def test_tray_in_a_real_x_server(xserver: str, tmp_path: Path) -> None:
    manager = TrayManager(xserver)
    with tempfile.TemporaryDirectory(prefix="tt-") as short:
        runtime = Path(short) / "rt"
        runtime.mkdir(mode=0o700)
        env = {
            **{k: v for k, v in os.environ.items() if k != "PYSTRAY_BACKEND"},
            "DISPLAY": xserver,
            "TETHER_RUNTIME_DIR": str(runtime),
            "TETHER_STATE_DIR": str(tmp_path / "state"),
            "XDG_CURRENT_DESKTOP": "",
        }

        def tether(*args: str) -> subprocess.CompletedProcess[str]:
            return subprocess.run(
                [sys.executable, "-m", "tether.cli.main", *args],
                env=env, capture_output=True, text=True, timeout=60, check=False,
            )  # fmt: skip

        tray = subprocess.Popen(
            [sys.executable, "-m", "tether.cli.main", "tray"], env=env, stderr=subprocess.PIPE
        )
        try:
            window = until(lambda: manager.docked, "the icon to dock", X_WAIT_S)
            until(
                lambda: title_of(xserver, window) == "tether: agent not running",
                "no-agent",
                X_WAIT_S,
            )
            shot = screenshot(xserver, tmp_path / "tray-not-running.png")
            print(f"screenshot: {shot}")

            click(xserver, 32, 32)  # the default item without an agent: Start agent
            until(lambda: "in sync" in title_of(xserver, window), "the started agent", X_WAIT_S)
            described = json.loads(tether("tray", "--describe", "--json").stdout)
            assert described["state"] == "idle" and described["tooltip"] == title_of(
                xserver, window
            )
            shot = screenshot(xserver, tmp_path / "tray-idle.png")
            print(f"screenshot: {shot}")

            assert tether("stop", "--all").returncode == 0  # the agent goes away ...
            until(
                lambda: title_of(xserver, window) == "tether: agent not running",
                "it to notice",
                X_WAIT_S,
            )
            click(xserver, 32, 32)  # ... and comes back: the tray follows it again
            until(lambda: "in sync" in title_of(xserver, window), "the restarted agent", X_WAIT_S)
            assert tray.poll() is None
        finally:
            tether("stop", "--all")
            tray.send_signal(signal.SIGTERM)
            try:
                tray.wait(10)
            except subprocess.TimeoutExpired:
                tray.kill()
                tray.wait()
            manager._stop = True
