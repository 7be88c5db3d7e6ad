"""`tether service install|uninstall|status`: write the service files, drive the service manager.

Everything install writes is listed in a manifest (``service.json`` in the state folder), so
uninstall stops, disables and removes exactly that and nothing else, and a second install (after
an upgrade, or from a moved virtual environment) rewrites the same files with the new paths.
The service managers are driven through their own commands (``systemctl --user``, ``launchctl``,
``loginctl``), looked up on PATH.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ..dirs import state_dir
from ..errors import EX_CONFIG, EX_UNAVAILABLE, TetherError
from .units import (
    LAUNCHD_LABELS,
    SYSTEMD_UNITS,
    TEMPLATES,
    Manager,
    Part,
    UnitParams,
    render,
    service_path,
    template_text,
)

MANIFEST = "service.json"
SYSTEM_PATH = {
    Manager.SYSTEMD: ("/usr/local/bin", "/usr/bin", "/bin"),
    Manager.LAUNCHD: ("/opt/homebrew/bin", "/usr/local/bin", "/usr/bin", "/bin", "/usr/sbin"),
}
COMMAND_TIMEOUT_S = 60.0

Say = Callable[[str], None]


def this_manager() -> Manager:
    return Manager.LAUNCHD if sys.platform == "darwin" else Manager.SYSTEMD


def find_executable() -> Path:
    """The installed ``tether`` to name in a service file, as an absolute path.

    This process's own console script when it is one (``~/.local/bin/tether`` of pipx stays put
    across upgrades), else the one beside this interpreter (its venv), else the one on PATH.

    Raises:
        TetherError: none exists (exit 78): a service cannot run ``python -m`` from a checkout.
    """
    argv0 = Path(sys.argv[0])
    candidates = [Path(os.path.abspath(argv0))] if argv0.name == "tether" else []
    candidates.append(Path(sys.executable).parent / "tether")
    found = shutil.which("tether")
    if found:
        candidates.append(Path(os.path.abspath(found)))
    for path in candidates:
        if path.is_file() and os.access(path, os.X_OK):
            return path
    raise TetherError(
        "cannot find the installed `tether` executable for the service to run",
        "install tether as a tool (`pipx install 'tether[tray]'`), then run "
        "`tether service install` from it",
        exit_code=EX_CONFIG,
    )


def params_for(manager: Manager, executable: Path, home: Path) -> UnitParams:
    return UnitParams(
        executable=executable,
        path=service_path(SYSTEM_PATH[manager], executable),
        log_dir=home / "Library" / "Logs" / "tether",
    )


def unit_dir(manager: Manager, home: Path, env: dict[str, str]) -> Path:
    """Where the service files go (``$XDG_CONFIG_HOME`` honoured for systemd)."""
    if manager is Manager.LAUNCHD:
        return home / "Library" / "LaunchAgents"
    config_home = env.get("XDG_CONFIG_HOME") or str(home / ".config")
    return Path(config_home) / "systemd" / "user"


@dataclass
class Manifest:
    """What install wrote: the manager, the parts, the files (absolute paths)."""

    manager: Manager
    parts: list[Part] = field(default_factory=list)
    files: list[str] = field(default_factory=list)

    @staticmethod
    def path() -> Path:
        return state_dir() / MANIFEST

    @classmethod
    def load(cls) -> Manifest | None:
        try:
            raw = json.loads(cls.path().read_text())
            return cls(
                Manager(raw["manager"]),
                [Part(p) for p in raw["parts"]],
                [str(f) for f in raw["files"]],
            )
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise TetherError(
                f"the service manifest {cls.path()} is unreadable ({exc})",
                "remove the service files by hand, then delete the manifest",
            ) from None

    def save(self) -> None:
        data = {"manager": self.manager.value, "parts": [p.value for p in self.parts]}
        _write(self.path(), json.dumps({**data, "files": self.files}, indent=1) + "\n", 0o600)


def _write(path: Path, text: str, mode: int) -> None:
    """Write beside, then rename into place: a service manager never reads half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.chmod(tmp, mode)
    os.replace(tmp, path)


@dataclass(frozen=True)
class Done:
    code: int
    out: str


def _run(argv: Sequence[str]) -> Done:
    """Run a service-manager command; a missing command is rc 127, as in a shell."""
    if shutil.which(argv[0]) is None:
        return Done(127, f"{argv[0]}: command not found")
    try:
        done = subprocess.run(
            list(argv),
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=COMMAND_TIMEOUT_S,
            check=False,
        )
    except subprocess.TimeoutExpired:
        return Done(124, f"{' '.join(argv)} did not finish within {COMMAND_TIMEOUT_S:g}s")
    return Done(done.returncode, (done.stderr or done.stdout).strip())


def _first_line(text: str) -> str:
    return text.splitlines()[0] if text else "no message"


# -- install ---------------------------------------------------------------------------------------


def install(
    manager: Manager, parts: list[Part], *, start: bool, home: Path, env: dict[str, str], say: Say
) -> int:
    """Write (or rewrite) the service files for ``parts`` and, with ``start``, (re)start them.

    Returns the exit code: 0, or 69 when the files are written but no service manager took them.
    """
    executable = find_executable()
    params = params_for(manager, executable, home)
    folder = unit_dir(manager, home, env)
    old = Manifest.load()
    manifest = old if old is not None and old.manager is manager else Manifest(manager)
    for part in parts:
        target = folder / TEMPLATES[(manager, part)]
        _write(target, render(manager, template_text(manager, part), params), 0o644)
        if part not in manifest.parts:
            manifest.parts.append(part)
        if str(target) not in manifest.files:
            manifest.files.append(str(target))
        say(f"wrote {target} (runs {executable})")
    if manager is Manager.LAUNCHD:
        Path(params.log_dir).mkdir(parents=True, exist_ok=True)
    manifest.save()
    if manager is Manager.SYSTEMD:
        return _systemd_install(parts, start=start, env=env, say=say)
    return _launchd_install(parts, start=start, folder=folder, say=say)


def _systemd_install(parts: list[Part], *, start: bool, env: dict[str, str], say: Say) -> int:
    units = [SYSTEMD_UNITS[p] for p in parts]
    user = env.get("USER") or env.get("LOGNAME") or str(os.getuid())
    reload = _run(["systemctl", "--user", "daemon-reload"])
    if reload.code != 0:
        say(
            f"not started: no systemd user manager is reachable ({_first_line(reload.out)}); "
            f"the files are in place: run `loginctl enable-linger {user}`, log in again, then "
            f"`systemctl --user daemon-reload && systemctl --user enable --now {' '.join(units)}`"
        )
        return EX_UNAVAILABLE
    for part, unit in zip(parts, units, strict=True):
        enabled = _run(["systemctl", "--user", "enable", unit])
        if enabled.code != 0:
            raise TetherError(
                f"systemctl --user enable {unit} failed: {_first_line(enabled.out)}",
                f"see `systemctl --user status {unit}`",
            )
        if not start:
            say(f"enabled {unit}; it starts at your next login (`systemctl --user start {unit}`)")
            continue
        # restart, not start: a reinstall must swap a running agent for the new paths
        started = _run(["systemctl", "--user", "restart", unit])
        if started.code == 0:
            say(f"started {unit}")
        elif part is Part.TRAY:
            say(f"enabled {unit}; it starts with your graphical session")
        else:
            raise TetherError(
                f"systemctl --user restart {unit} failed: {_first_line(started.out)}",
                f"see `journalctl --user -u {unit}`",
            )
    linger = _run(["loginctl", "show-user", user, "-p", "Linger"])
    if linger.code == 0 and linger.out.strip() == "Linger=no":
        say(
            f"warning: lingering is off for {user}: the agent stops when you log out "
            f"(keep it running with `loginctl enable-linger {user}`)"
        )
    return 0


def _launchd_domain() -> str:
    return f"gui/{os.getuid()}"


def _launchd_install(parts: list[Part], *, start: bool, folder: Path, say: Say) -> int:
    if not start:
        say("not loaded now (--no-start); launchd loads it at your next login")
        return 0
    domain = _launchd_domain()
    for part in parts:
        label = LAUNCHD_LABELS[part]
        plist = folder / TEMPLATES[(Manager.LAUNCHD, part)]
        _run(["launchctl", "bootout", f"{domain}/{label}"])  # idempotent: not loaded is fine
        loaded = _run(["launchctl", "bootstrap", domain, str(plist)])
        if loaded.code == 127:
            say(
                f"not loaded: launchctl is missing; load it with `launchctl bootstrap {domain} "
                f"{plist}`"
            )
            return EX_UNAVAILABLE
        if loaded.code != 0:
            why = _first_line(loaded.out)
            if "Bootstrap failed: 5" in loaded.out:
                why = (
                    "Bootstrap failed: 5 (launchd's I/O error: the label is still loaded, or "
                    "the plist is invalid or not yours)"
                )
            raise TetherError(
                f"launchctl could not load {label}: {why}",
                f"run `launchctl bootout {domain}/{label}`, check `plutil -lint {plist}`, "
                "then `tether service install` again",
                exit_code=EX_UNAVAILABLE,
            )
        say(f"loaded {label} into {domain}")
    return 0


# -- uninstall and status ----------------------------------------------------------------------


def uninstall(say: Say) -> int:
    """Stop, disable and remove what install wrote (by the manifest), then the manifest."""
    manifest = Manifest.load()
    if manifest is None:
        say("nothing to uninstall: `tether service install` has not installed anything")
        return 0
    if manifest.manager is Manager.SYSTEMD:
        for part in manifest.parts:
            _run(["systemctl", "--user", "disable", "--now", SYSTEMD_UNITS[part]])
    else:
        for part in manifest.parts:
            _run(["launchctl", "bootout", f"{_launchd_domain()}/{LAUNCHD_LABELS[part]}"])
    for name in manifest.files:
        try:
            os.unlink(name)
        except FileNotFoundError:
            continue
        say(f"removed {name}")
    if manifest.manager is Manager.SYSTEMD:
        _run(["systemctl", "--user", "daemon-reload"])
    Manifest.path().unlink()
    return 0


def status(say: Say) -> int:
    """What is installed and whether the service manager runs it (0 when all parts run)."""
    manifest = Manifest.load()
    if manifest is None:
        say("not installed (`tether service install` installs the agent as a user service)")
        return 3
    running = True
    for part in manifest.parts:
        if manifest.manager is Manager.SYSTEMD:
            unit = SYSTEMD_UNITS[part]
            active = _run(["systemctl", "--user", "is-active", unit])
            enabled = _run(["systemctl", "--user", "is-enabled", unit])
            state = f"{active.out or 'unknown'}, {enabled.out or 'unknown'}"
            running &= active.code == 0
        else:
            label = LAUNCHD_LABELS[part]
            loaded = _run(["launchctl", "print", f"{_launchd_domain()}/{label}"])
            state = "loaded" if loaded.code == 0 else "not loaded"
            running &= loaded.code == 0
        say(f"{part.value}: {state}")
    for name in manifest.files:
        say(f"  {name}{'' if Path(name).exists() else ' (missing)'}")
    return 0 if running else 3
