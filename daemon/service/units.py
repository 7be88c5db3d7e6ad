"""The service files tether installs: which templates, and how they are rendered (pure).

The templates' source of truth is the top-level ``systemd/`` and ``launchd/`` folders (what a
packager reads). The package reaches them through the links ``daemon/service/systemd`` and
``daemon/service/launchd``, which ``package-data`` follows: a built wheel holds real copies, so an
installed tether renders the same files without its source checkout.

A rendered file names the installed ``tether`` by absolute path and carries an explicit ``PATH``:
neither systemd nor launchd gives a service the login shell's environment.
"""

from __future__ import annotations

import enum
import string
from dataclasses import dataclass
from importlib import resources
from pathlib import PurePath
from xml.sax.saxutils import escape


class Manager(str, enum.Enum):
    """A service manager tether can install into."""

    SYSTEMD = "systemd"
    """Linux: a systemd user unit in ``~/.config/systemd/user``."""
    LAUNCHD = "launchd"
    """macOS: a LaunchAgent in ``~/Library/LaunchAgents``."""


class Part(str, enum.Enum):
    """What a service file runs."""

    AGENT = "agent"
    """``tether daemon``: the per-user agent."""
    TRAY = "tray"
    """``tether tray``: the tray icon, in the graphical session."""


TEMPLATES: dict[tuple[Manager, Part], str] = {
    (Manager.SYSTEMD, Part.AGENT): "tether.service",
    (Manager.SYSTEMD, Part.TRAY): "tether-tray.service",
    (Manager.LAUNCHD, Part.AGENT): "dev.tether.agent.plist",
    (Manager.LAUNCHD, Part.TRAY): "dev.tether.tray.plist",
}
"""(manager, part) → the template's file name; the installed file has the same name."""

LAUNCHD_LABELS = {Part.AGENT: "dev.tether.agent", Part.TRAY: "dev.tether.tray"}
SYSTEMD_UNITS = {Part.AGENT: "tether.service", Part.TRAY: "tether-tray.service"}


@dataclass(frozen=True)
class UnitParams:
    """What a template is filled with; every path absolute."""

    executable: PurePath
    """The installed ``tether`` console script (never a path into a source checkout)."""
    path: tuple[str, ...]
    """PATH for the service: the executable's folder first, then the system's."""
    log_dir: PurePath
    """launchd only: where stdout/stderr go (systemd sends them to the journal)."""


def template_text(manager: Manager, part: Part) -> str:
    """The template shipped with this tether (package data; see the module docstring)."""
    folder = resources.files(__package__).joinpath(manager.value)
    return folder.joinpath(TEMPLATES[(manager, part)]).read_text(encoding="utf-8")


def render(manager: Manager, template: str, params: UnitParams) -> str:
    """``template`` with its ``${...}`` placeholders filled, each value quoted for its format.

    systemd: ExecStart's program and the ``Environment=`` assignment are double-quoted (a path
    with spaces stays one word) with ``%`` doubled (systemd's specifier character).
    launchd: values are XML-escaped.
    """
    path = ":".join(params.path)
    if manager is Manager.SYSTEMD:
        values = {
            "exec_start": _systemd_quote(str(params.executable)),
            "path_env": _systemd_quote(f"PATH={path}"),
        }
    else:
        values = {
            "exec_start": escape(str(params.executable)),
            "path": escape(path),
            "log_dir": escape(str(params.log_dir)),
        }
    return string.Template(template).substitute(values)


def _systemd_quote(value: str) -> str:
    escaped = value.replace("\\", "\\\\").replace('"', '\\"').replace("%", "%%")
    return f'"{escaped}"'


def service_path(system_dirs: tuple[str, ...], executable: PurePath) -> tuple[str, ...]:
    """The PATH a service gets: the folder of ``executable`` (its venv: ``ssh``-free, but the
    interpreter's tools), then the system folders, each once."""
    seen: list[str] = []
    for folder in (str(executable.parent), *system_dirs):
        if folder not in seen:
            seen.append(folder)
    return tuple(seen)
