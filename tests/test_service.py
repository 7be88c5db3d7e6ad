"""`tether service`: rendered unit files checked by the real systemd-analyze and plistlib; install
and uninstall into a temporary HOME against recording stand-ins for systemctl/loginctl/launchctl."""

from __future__ import annotations

import os
import plistlib
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from tether.service.units import Manager, Part, UnitParams, render, service_path, template_text

BIN = Path(sys.executable).parent
TETHER = BIN / "tether"


def make_tether(folder: Path) -> Path:
    """A working copy of the installed console script at ``folder/tether`` (a "moved venv")."""
    folder.mkdir(parents=True, exist_ok=True)
    copy = folder / "tether"
    shutil.copy2(TETHER, copy)
    return copy


def params(executable: Path, home: Path) -> UnitParams:
    return UnitParams(executable, service_path(("/usr/bin", "/bin"), executable), home / "Logs")


def analyze(tmp_path: Path, unit: Path) -> subprocess.CompletedProcess[str]:
    runtime = tmp_path / "runtime"  # the user manager's runtime folder; a container has none
    runtime.mkdir(mode=0o700, exist_ok=True)
    return subprocess.run(
        ["systemd-analyze", "verify", "--user", str(unit)],
        capture_output=True,
        text=True,
        env={**os.environ, "XDG_RUNTIME_DIR": str(runtime)},
        check=False,
    )


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze not installed")
@pytest.mark.parametrize("part", list(Part))
def test_rendered_unit_passes_systemd_analyze_verify(tmp_path: Path, part: Part) -> None:
    exe = make_tether(tmp_path / "a venv with 100% spaces" / "bin")
    text = render(Manager.SYSTEMD, template_text(Manager.SYSTEMD, part), params(exe, tmp_path))
    unit = tmp_path / ("tether.service" if part is Part.AGENT else "tether-tray.service")
    unit.write_text(text)
    done = analyze(tmp_path, unit)
    assert done.returncode == 0, done.stderr
    assert unit.name not in done.stderr + done.stdout  # no warning about our file at all
    assert "RestartPreventExitStatus=" in text and "${" not in text
    if part is Part.AGENT:
        assert "Type=notify" in text and "WatchdogSec=" in text
    else:
        assert "graphical-session.target" in text


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze not installed")
def test_systemd_analyze_rejects_a_unit_naming_a_missing_tether(tmp_path: Path) -> None:
    """The check above can fail: a unit that names a tether that is not there is refused."""
    gone = tmp_path / "gone" / "tether"
    unit = tmp_path / "tether.service"
    unit.write_text(
        render(Manager.SYSTEMD, template_text(Manager.SYSTEMD, Part.AGENT), params(gone, tmp_path))
    )
    done = analyze(tmp_path, unit)
    assert done.returncode != 0 and "not executable" in done.stderr


@pytest.mark.parametrize("part", list(Part))
def test_plist_round_trips_with_its_keys(tmp_path: Path, part: Part) -> None:
    exe = tmp_path / "R&D <tools>" / "bin" / "tether"
    text = render(Manager.LAUNCHD, template_text(Manager.LAUNCHD, part), params(exe, tmp_path))
    plist = plistlib.loads(text.encode())
    assert plist["Label"] == f"dev.tether.{part.value}"
    assert plist["ProgramArguments"] == [str(exe), "daemon" if part is Part.AGENT else "tray"]
    assert plist["RunAtLoad"] is True
    assert plist["KeepAlive"] == {"SuccessfulExit": False}
    path = plist["EnvironmentVariables"]["PATH"].split(":")
    assert path[0] == str(exe.parent) and "/usr/bin" in path
    for key in ("StandardOutPath", "StandardErrorPath"):
        assert Path(plist[key]).is_absolute() and Path(plist[key]).parent == tmp_path / "Logs"


# -- install / uninstall against recording stand-ins ------------------------------------------

FAKE = """#!/bin/sh
echo "$(basename "$0") $*" >> "$FAKE_LOG"
case "$(basename "$0") $*" in
  "systemctl --user daemon-reload") [ -n "$FAKE_NO_BUS" ] && {
      echo "Failed to connect to bus: No medium found" >&2; exit 1; } ;;
  "loginctl show-user"*) echo "Linger=no" ;;
  "launchctl bootstrap"*) [ -n "$FAKE_BOOTSTRAP_5" ] && {
      echo "Bootstrap failed: 5: Input/output error" >&2; exit 5; } ;;
  "launchctl bootout"*) echo "Boot-out failed: 3: No such process" >&2; exit 3 ;;
esac
exit 0
"""


class Home:
    """A temporary HOME, state folder, and PATH whose systemctl/loginctl/launchctl record calls."""

    def __init__(self, root: Path) -> None:
        self.home = root / "home"
        self.home.mkdir()
        fakes = root / "fakebin"
        fakes.mkdir()
        for name in ("systemctl", "loginctl", "launchctl"):
            (fakes / name).write_text(FAKE)
            (fakes / name).chmod(stat.S_IRWXU)
        self.log = root / "calls.log"
        self.env = {
            "HOME": str(self.home),
            "USER": "alice",
            "PATH": f"{fakes}:/usr/bin:/bin",
            "TETHER_STATE_DIR": str(root / "state"),
            "FAKE_LOG": str(self.log),
        }

    def tether(self, exe: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(exe), "service", *args],
            capture_output=True,
            text=True,
            env={**self.env, **env},
            cwd=self.home,
            stdin=subprocess.DEVNULL,
            timeout=60,
            check=False,
        )

    def calls(self) -> list[str]:
        calls = self.log.read_text().splitlines() if self.log.exists() else []
        self.log.unlink(missing_ok=True)
        return calls


def test_systemd_install_reinstall_and_uninstall(tmp_path: Path) -> None:
    h = Home(tmp_path)
    units = h.home / ".config" / "systemd" / "user"
    units.mkdir(parents=True)
    (units / "someone-else.service").write_text("[Service]\nExecStart=/bin/true\n")
    first = make_tether(tmp_path / "venv1" / "bin")

    done = h.tether(first, "install", "--tray")
    assert done.returncode == 0, done.stderr
    assert h.calls() == [
        "systemctl --user daemon-reload",
        "systemctl --user enable tether.service",
        "systemctl --user restart tether.service",
        "systemctl --user enable tether-tray.service",
        "systemctl --user restart tether-tray.service",
        "loginctl show-user alice -p Linger",
    ]
    assert "lingering is off" in done.stdout and "loginctl enable-linger alice" in done.stdout
    agent = (units / "tether.service").read_text()
    assert f'ExecStart="{first}" daemon' in agent
    assert f'Environment="PATH={first.parent}:' in agent
    assert f'ExecStart="{first}" tray' in (units / "tether-tray.service").read_text()

    moved = make_tether(tmp_path / "venv2" / "bin")  # an upgrade, or a venv moved elsewhere
    done = h.tether(moved, "install")
    assert done.returncode == 0, done.stderr
    assert f'ExecStart="{moved}" daemon' in (units / "tether.service").read_text()
    assert "systemctl --user restart tether.service" in h.calls()

    done = h.tether(moved, "uninstall")
    assert done.returncode == 0, done.stderr
    assert h.calls() == [
        "systemctl --user disable --now tether.service",
        "systemctl --user disable --now tether-tray.service",
        "systemctl --user daemon-reload",
    ]
    assert sorted(p.name for p in units.iterdir()) == ["someone-else.service"]
    assert "nothing to uninstall" in h.tether(moved, "uninstall").stdout


def test_systemd_install_without_a_user_manager_writes_files_and_says_what_to_run(
    tmp_path: Path,
) -> None:
    h = Home(tmp_path)
    config_home = tmp_path / "xdg"
    done = h.tether(TETHER, "install", FAKE_NO_BUS="1", XDG_CONFIG_HOME=str(config_home))
    assert done.returncode == 69
    assert (config_home / "systemd" / "user" / "tether.service").is_file()
    lines = [line for line in done.stdout.splitlines() if line.startswith("not started")]
    assert len(lines) == 1 and "No medium found" in lines[0]
    assert "loginctl enable-linger alice" in lines[0]
    assert "systemctl --user enable --now tether.service" in lines[0]
    assert h.calls() == ["systemctl --user daemon-reload"]


def test_launchd_install_boots_out_first_and_explains_bootstrap_failed_5(tmp_path: Path) -> None:
    h = Home(tmp_path)
    done = h.tether(TETHER, "install", "--manager", "launchd")
    assert done.returncode == 0, done.stderr
    plist = h.home / "Library" / "LaunchAgents" / "dev.tether.agent.plist"
    assert plistlib.loads(plist.read_bytes())["ProgramArguments"][0] == str(TETHER)
    assert (h.home / "Library" / "Logs" / "tether").is_dir()
    uid = os.getuid()
    assert h.calls() == [
        f"launchctl bootout gui/{uid}/dev.tether.agent",
        f"launchctl bootstrap gui/{uid} {plist}",
    ]

    done = h.tether(TETHER, "install", "--manager", "launchd", FAKE_BOOTSTRAP_5="1")
    assert done.returncode == 69
    assert done.stderr.count("\n") == 1 and "Traceback" not in done.stderr
    assert "Bootstrap failed: 5" in done.stderr and "launchctl bootout" in done.stderr
    h.calls()

    assert h.tether(TETHER, "uninstall").returncode == 0
    assert h.calls() == [f"launchctl bootout gui/{uid}/dev.tether.agent"]
    assert not plist.exists()


def test_print_writes_the_rendered_file_on_any_os(tmp_path: Path) -> None:
    h = Home(tmp_path)
    done = h.tether(TETHER, "print", "launchd", "--tray")
    assert done.returncode == 0
    assert plistlib.loads(done.stdout.encode())["Label"] == "dev.tether.tray"
    assert not h.log.exists()  # printing drives no service manager
