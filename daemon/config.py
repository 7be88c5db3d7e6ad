"""tether.toml → frozen, typed config; every error names the file, the key and what is allowed.

The whole file is validated before anything connects: unknown keys (with a "did you mean"),
wrong types, bad enums, dangling references between tables. Parsing is pure apart from reading the
one file, so every rule is testable on strings (:func:`parse_config`).
"""

from __future__ import annotations

import difflib
import os
import re
import stat
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any

from .errors import ConfigError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on 3.10 only
    import tomli as tomllib

CONFIG_NAME = "tether.toml"
MAX_CONFIG_BYTES = 1 << 20
"""A tether.toml is a few kilobytes; anything past a MiB is not one (and is not read whole)."""

DEFAULT_IGNORES = (".git/", "__pycache__/", "*.pyc", ".tether/", "*.swp", "*.swo", "*~", ".#*")


class PairMode(str, Enum):
    """Which way a pair's changes flow."""

    PUSH = "push"
    """Local to remote; a remote edit that local also changed is kept as a conflict copy."""
    PULL = "pull"
    """Remote to local; the mirror image of push."""
    TWO_WAY = "two-way"
    """Three-way merge; real conflicts keep both versions."""
    MIRROR = "mirror"
    """The remote becomes an exact copy of local, remote edits included."""


class OnBusy(str, Enum):
    """What a trigger does when it fires while its previous run is still going."""

    RESTART = "restart"
    QUEUE = "queue"
    IGNORE = "ignore"


@dataclass(frozen=True)
class HostConfig:
    name: str
    ssh: str
    """A Host alias from ~/.ssh/config, or ``user@host[:port]``."""
    identity_file: Path | None = None
    python: str = "python3"
    venv: str | None = None
    connect_timeout_s: float | None = None
    """None: take ConnectTimeout from ~/.ssh/config, else tether's default."""
    known_hosts: Path | None = None
    """None: ~/.ssh/known_hosts (and the system file), as ssh does."""
    ssh_config: Path | None = None
    """None: ~/.ssh/config."""
    proxy_jump: str | None = None
    """``[user@]host[:port]`` hops, comma-separated, as ``ssh -J``; None: ProxyJump from
    ~/.ssh/config, if any. A converted ``SSH_OPTIONS="-J bastion"`` lands here, so the host is
    reachable without editing ~/.ssh/config."""
    orphan_timeout_s: float = 120.0
    """How long a run may go on with no tether attached to it (its client killed, the link
    lost for good) before the host stops its process group. A link that comes back sooner
    reattaches and the run goes on."""


@dataclass(frozen=True)
class PairConfig:
    name: str
    host: str
    local: Path
    remote: str
    mode: PairMode = PairMode.PUSH
    ignore: tuple[str, ...] = ()


@dataclass(frozen=True)
class TunnelConfig:
    name: str
    host: str
    local: int
    remote_host: str
    remote_port: int
    keep_running: str | None = None


@dataclass(frozen=True)
class TriggerConfig:
    name: str
    pair: str
    on: tuple[str, ...]
    run: str
    fetch: tuple[str, ...] = ()
    on_busy: OnBusy = OnBusy.RESTART
    timeout_s: float | None = None
    env: Mapping[str, str] = field(default_factory=dict)
    auto_fetch: bool = False
    """When the run ends, pull the report folders it created or changed (:mod:`tether.reports`)."""


DEFAULT_MARKERS: Mapping[str, tuple[str, ...]] = {
    "memory": ("db.sqlite",),
    "performance": ("profile_log_device.csv",),
}
"""TT-NN's report markers: a memory report holds ``db.sqlite``, a performance report
``profile_log_device.csv``. Any other kind has none: every direct child folder is a report."""


@dataclass(frozen=True)
class ReportsConfig:
    """``[reports.NAME]``: folders on a host where tools leave reports, one root per kind."""

    name: str
    host: str
    roots: Mapping[str, str]
    """kind (``memory``, ``performance``, any name) → the folder on the host."""
    local: Path
    """Reports of kind K land in ``local / K / <folder>``; default ``reports/<host>``."""
    markers: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    """kind → file names that make a folder a report (empty: every direct child folder)."""
    watch: bool = False
    ignore: tuple[str, ...] = ()

    def local_for(self, kind: str) -> Path:
        return self.local / kind


@dataclass(frozen=True)
class NotifyConfig:
    """``[notify]``: which desktop notifications the tray shows (each on unless turned off)."""

    runs: bool = True
    """A run finished or failed."""
    conflicts: bool = True
    """A sync kept both versions of a file (a conflict copy was made)."""
    link_down: bool = True
    """A link has been down for ``link_down_after``."""
    link_down_after_s: float = 60.0
    reports: bool = True
    """A watched report folder was pulled by itself (``[reports.*] watch = true``)."""


@dataclass(frozen=True)
class Config:
    path: Path
    """The tether.toml this came from; ``root`` is its folder."""
    hosts: Mapping[str, HostConfig]
    pairs: Mapping[str, PairConfig] = field(default_factory=dict)
    tunnels: Mapping[str, TunnelConfig] = field(default_factory=dict)
    triggers: Mapping[str, TriggerConfig] = field(default_factory=dict)
    reports: Mapping[str, ReportsConfig] = field(default_factory=dict)
    notify: NotifyConfig = NotifyConfig()

    @property
    def root(self) -> Path:
        return self.path.parent

    def host(self, name: str | None) -> HostConfig:
        """The named host, or the only one when ``name`` is None."""
        if name is None:
            if len(self.hosts) == 1:
                return next(iter(self.hosts.values()))
            raise ConfigError(
                f"{self.path}: several hosts are configured",
                f"name one of: {', '.join(self.hosts)}",
            )
        if name not in self.hosts:
            raise ConfigError(
                f"{self.path}: no host named {name!r}", choices_hint(name, list(self.hosts))
            )
        return self.hosts[name]

    def pair(self, name: str | None) -> PairConfig:
        """The named pair, or the only one when ``name`` is None."""
        if name is None:
            if len(self.pairs) == 1:
                return next(iter(self.pairs.values()))
            if not self.pairs:
                raise ConfigError(f"{self.path}: no pairs are configured", "add a [pairs.NAME]")
            raise ConfigError(
                f"{self.path}: several pairs are configured",
                f"name one of: {', '.join(self.pairs)}",
            )
        if name not in self.pairs:
            raise ConfigError(
                f"{self.path}: no pair named {name!r}", choices_hint(name, list(self.pairs))
            )
        return self.pairs[name]


def choices_hint(bad: str, allowed: list[str]) -> str:
    """The hint for a name that is not one of ``allowed``: the closest one, then all of them."""
    close = difflib.get_close_matches(bad, allowed, n=1)
    listing = ", ".join(allowed) if allowed else "(none)"
    return f"did you mean {close[0]!r}? allowed: {listing}" if close else f"allowed: {listing}"


def find_config(start: Path | None = None) -> Path:
    """The nearest tether.toml from ``start`` (default: the current folder) upward, like git."""
    here = (start or Path.cwd()).resolve()
    for folder in (here, *here.parents):
        candidate = folder / CONFIG_NAME
        if candidate.is_file():
            return candidate
    raise ConfigError(
        f"no {CONFIG_NAME} in {here} or any parent folder",
        "run `tether init` here, or pass --config FILE",
    )


def load_config(path: Path | None = None) -> Config:
    """Find (unless given), read and validate a tether.toml."""
    path = (path or find_config()).expanduser().resolve()
    try:
        text = read_config_bytes(path).decode("utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such file", "run `tether init` or fix --config") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read it: {exc}") from None
    return parse_config(text, path)


def read_config_bytes(path: Path) -> bytes:
    """A config file's bytes: a regular file only, and at most :data:`MAX_CONFIG_BYTES`.

    The daemon loads whatever path a client registers: opened plainly, a FIFO would hold a worker
    until someone writes to it, and ``/dev/zero`` would be read until memory ran out. The file is
    opened non-blocking (a FIFO returns at once) and its kind checked on the open descriptor.

    Raises:
        ConfigError: not a regular file, or too big.
        OSError: it cannot be opened or read (FileNotFoundError when missing).
    """
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise ConfigError(f"{path}: not a regular file", "point --config at a tether.toml")
        parts: list[bytes] = []
        size = 0
        while size <= MAX_CONFIG_BYTES and (chunk := os.read(fd, MAX_CONFIG_BYTES + 1 - size)):
            parts.append(chunk)
            size += len(chunk)
    finally:
        os.close(fd)
    if size > MAX_CONFIG_BYTES:
        raise ConfigError(
            f"{path}: bigger than {MAX_CONFIG_BYTES >> 20} MiB, not a tether.toml",
            "point --config at a tether.toml",
        )
    return b"".join(parts)


_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h)")
_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$")


class _Table:
    """One TOML table being read: pops known keys, type-checks them, reports leftovers."""

    def __init__(self, file: Path, key: str, raw: Any) -> None:
        self.file, self.key = file, key
        if not isinstance(raw, dict):
            raise self.error(key, raw, "a table")
        self.raw: dict[str, Any] = dict(raw)
        self.known: list[str] = []

    def error(self, key: str, value: Any, allowed: str) -> ConfigError:
        return ConfigError(
            f"{self.file}: {key} = {_show(value)} is not allowed; expected {allowed}"
        )

    def _take(self, name: str, default: Any, check: Callable[[Any], bool], allowed: str) -> Any:
        self.known.append(name)
        if name not in self.raw:
            if default is _REQUIRED:
                raise ConfigError(
                    f"{self.file}: {self.key}.{name} is missing", f"set it to {allowed}"
                )
            return default
        value = self.raw.pop(name)
        if not check(value):
            raise self.error(f"{self.key}.{name}", value, allowed)
        return value

    def string(self, name: str, default: Any = None, *, required: bool = False) -> Any:
        return self._take(
            name,
            _REQUIRED if required else default,
            lambda v: isinstance(v, str) and v.strip() != "",
            "a non-empty string",
        )

    def strings(self, name: str, *, required: bool = False) -> tuple[str, ...]:
        value = self._take(
            name,
            _REQUIRED if required else [],
            lambda v: isinstance(v, list) and all(isinstance(s, str) and s for s in v),
            "a list of non-empty strings",
        )
        return tuple(value)

    def port(self, name: str) -> int:
        return int(
            self._take(
                name,
                _REQUIRED,
                lambda v: isinstance(v, int) and not isinstance(v, bool) and 1 <= v <= 65535,
                "a port number from 1 to 65535",
            )
        )

    def choice(self, name: str, enum: type[Enum], default: Enum) -> Any:
        allowed = [m.value for m in enum]
        value = self._take(
            name, default.value, lambda v: v in allowed, "one of " + ", ".join(allowed)
        )
        return enum(value)

    def duration(self, name: str) -> float | None:
        value = self._take(
            name,
            None,
            lambda v: parse_duration(v) is not None,
            'a duration like "90s", "10m", "1h"',
        )
        return None if value is None else parse_duration(value)

    def string_map(self, name: str) -> dict[str, str]:
        return dict(
            self._take(
                name,
                {},
                lambda v: isinstance(v, dict) and all(isinstance(x, str) for x in v.values()),
                "a table of strings",
            )
        )

    def finish(self) -> None:
        for extra in self.raw:
            raise ConfigError(
                f"{self.file}: unknown key {self.key}.{extra}", choices_hint(extra, self.known)
            )


_REQUIRED = object()


def _show(value: Any) -> str:
    text = repr(value) if not isinstance(value, str) else f'"{value}"'
    return text if len(text) <= 60 else text[:57] + "..."


def parse_duration(value: Any) -> float | None:
    """Seconds in ``value`` (a number of seconds, or "1h30m", "10m", "90s", "250ms"); else None."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return float(value) if value > 0 else None
    if not isinstance(value, str) or not value.strip():
        return None
    text, total, pos = value.strip().replace(" ", ""), 0.0, 0
    for match in _DURATION.finditer(text):
        if match.start() != pos:
            return None
        total += float(match.group(1)) * _DURATION_UNITS[match.group(2)]
        pos = match.end()
    return total if pos == len(text) and total > 0 else None


def parse_config(text: str, path: Path) -> Config:
    """Validate a tether.toml's text; ``path`` is where it lives (relative paths hang off it)."""
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}", "fix the syntax at that line") from None
    top = _Table(path, "", doc)
    tables = {
        name: _names(path, name, top._take(name, {}, lambda v: isinstance(v, dict), "tables"))
        for name in ("hosts", "pairs", "tunnels", "triggers", "reports")
    }
    notify = _notify(path, top._take("notify", {}, lambda v: isinstance(v, dict), "a table"))
    for extra in top.raw:
        raise ConfigError(f"{path}: unknown table [{extra}]", choices_hint(extra, top.known))
    if not tables["hosts"]:
        raise ConfigError(
            f"{path}: no [hosts.NAME] table", 'add one, e.g. [hosts.gpu] ssh = "gpu-box"'
        )

    hosts = {name: _host(path, name, raw) for name, raw in tables["hosts"].items()}
    pairs = {name: _pair(path, name, raw, hosts) for name, raw in tables["pairs"].items()}
    tunnels = {name: _tunnel(path, name, raw, hosts) for name, raw in tables["tunnels"].items()}
    triggers = {name: _trigger(path, name, raw, pairs) for name, raw in tables["triggers"].items()}
    reports = {name: _reports(path, name, raw, hosts) for name, raw in tables["reports"].items()}
    ports: dict[int, str] = {}
    for tunnel in tunnels.values():
        if tunnel.local in ports:
            raise ConfigError(
                f"{path}: tunnels.{tunnel.name}.local = {tunnel.local} is already used by "
                f"tunnels.{ports[tunnel.local]}",
                "give each tunnel its own local port",
            )
        ports[tunnel.local] = tunnel.name
    return Config(path, hosts, pairs, tunnels, triggers, reports, notify)


def _notify(path: Path, raw: Any) -> NotifyConfig:
    table = _Table(path, "notify", raw)
    flag = (lambda v: isinstance(v, bool), "true or false")
    notify = NotifyConfig(
        runs=table._take("runs", True, *flag),
        conflicts=table._take("conflicts", True, *flag),
        link_down=table._take("link_down", True, *flag),
        link_down_after_s=table.duration("link_down_after") or NotifyConfig.link_down_after_s,
        reports=table._take("reports", True, *flag),
    )
    table.finish()
    return notify


def _names(path: Path, table: str, raw: dict[str, Any]) -> dict[str, Any]:
    for name in raw:
        if not _NAME.match(name):
            raise ConfigError(
                f"{path}: [{table}.{name}] is not a usable name",
                "use letters, digits, '_', '-' and '.'",
            )
    return raw


def _reference(path: Path, key: str, value: str, allowed: Mapping[str, Any], kind: str) -> str:
    if value not in allowed:
        raise ConfigError(
            f'{path}: {key} = "{value}" names no [{kind}.{value}]',
            choices_hint(value, list(allowed)),
        )
    return value


def _host(path: Path, name: str, raw: Any) -> HostConfig:
    t = _Table(path, f"hosts.{name}", raw)
    ssh = t.string("ssh", required=True)
    identity = t.string("identity_file")
    known_hosts = t.string("known_hosts")
    ssh_config = t.string("ssh_config")
    host = HostConfig(
        name=name,
        ssh=ssh,
        identity_file=_user_path(path, identity),
        python=t.string("python", "python3"),
        venv=t.string("venv"),
        connect_timeout_s=t.duration("connect_timeout"),
        known_hosts=_user_path(path, known_hosts),
        ssh_config=_user_path(path, ssh_config),
        proxy_jump=t.string("proxy_jump"),
        orphan_timeout_s=t.duration("orphan_timeout") or HostConfig.orphan_timeout_s,
    )
    t.finish()
    return host


def _user_path(config_path: Path, value: str | None) -> Path | None:
    if value is None:
        return None
    p = Path(value).expanduser()
    return p if p.is_absolute() else (config_path.parent / p).resolve()


def _pair(path: Path, name: str, raw: Any, hosts: Mapping[str, HostConfig]) -> PairConfig:
    t = _Table(path, f"pairs.{name}", raw)
    host = _reference(path, f"pairs.{name}.host", t.string("host", required=True), hosts, "hosts")
    local = t.string("local", ".")
    remote = t.string("remote", required=True)
    mode = t.choice("mode", PairMode, PairMode.PUSH)
    ignore = t.strings("ignore")
    t.finish()
    local_path = (path.parent / Path(local).expanduser()).resolve()
    return PairConfig(name, host, local_path, remote, mode, ignore)


def _tunnel(path: Path, name: str, raw: Any, hosts: Mapping[str, HostConfig]) -> TunnelConfig:
    t = _Table(path, f"tunnels.{name}", raw)
    host = _reference(path, f"tunnels.{name}.host", t.string("host", required=True), hosts, "hosts")
    local = t.port("local")
    remote = t.string("remote", required=True)
    keep_running = t.string("keep_running")
    t.finish()
    target_host, _, port_text = remote.rpartition(":")
    if not target_host or not port_text.isdigit() or not 1 <= int(port_text) <= 65535:
        raise t.error(f"tunnels.{name}.remote", remote, '"HOST:PORT" as seen from the host')
    return TunnelConfig(name, host, local, target_host.strip("[]"), int(port_text), keep_running)


def _trigger(path: Path, name: str, raw: Any, pairs: Mapping[str, PairConfig]) -> TriggerConfig:
    t = _Table(path, f"triggers.{name}", raw)
    pair = _reference(
        path, f"triggers.{name}.pair", t.string("pair", required=True), pairs, "pairs"
    )
    trigger = TriggerConfig(
        name=name,
        pair=pair,
        on=t.strings("on", required=True),
        run=t.string("run", required=True),
        fetch=t.strings("fetch"),
        on_busy=t.choice("on_busy", OnBusy, OnBusy.RESTART),
        timeout_s=t.duration("timeout"),
        env=t.string_map("env"),
        auto_fetch=t._take("auto_fetch", False, lambda v: isinstance(v, bool), "true or false"),
    )
    t.finish()
    return trigger


_REPORTS_KEYS = ("host", "local", "markers", "watch", "ignore")


def _reports(path: Path, name: str, raw: Any, hosts: Mapping[str, HostConfig]) -> ReportsConfig:
    """A reports table: its settings, and every other key a kind naming a root on the host.

    A kind is any name, so a misspelt setting (``wach = true``, ``hots = "gpu"``) could pass for
    a kind: a key that is not a string, or is close to a setting's name, is refused with the
    suggestion instead.
    """
    key = f"reports.{name}"
    t = _Table(path, key, raw)
    host_name = t.string("host", name if name in hosts else None)
    if host_name is None:
        raise ConfigError(f"{path}: {key}.host is missing", choices_hint(name, list(hosts)))
    host = _reference(path, f"{key}.host", host_name, hosts, "hosts")
    local = t.string("local")
    watch = t._take("watch", False, lambda v: isinstance(v, bool), "true or false")
    ignore = t.strings("ignore")
    raw_markers = t._take("markers", {}, lambda v: isinstance(v, dict), "a table kind → files")
    roots: dict[str, str] = {}
    for kind in list(t.raw):
        close = difflib.get_close_matches(kind, _REPORTS_KEYS, n=1, cutoff=0.75)
        if close or not isinstance(t.raw[kind], str):
            t.finish()  # the unknown-key error, with its "did you mean"
        if not _NAME.match(kind):
            raise ConfigError(
                f"{path}: {key}.{kind} is not a usable kind name",
                "use letters, digits, '_', '-' and '.'",
            )
        roots[kind] = t.string(kind, required=True)
    t.finish()
    if not roots:
        raise ConfigError(
            f"{path}: [{key}] names no report folder",
            'add one per kind, e.g. memory = "~/tt-metal/generated/ttnn/reports/"',
        )
    markers = {kind: DEFAULT_MARKERS[kind] for kind in roots if kind in DEFAULT_MARKERS}
    for kind, files in raw_markers.items():
        if kind not in roots:
            raise ConfigError(
                f"{path}: {key}.markers.{kind}: no report folder of kind {kind!r}",
                choices_hint(kind, list(roots)),
            )
        files = [files] if isinstance(files, str) else files
        if not isinstance(files, list) or not all(
            isinstance(f, str) and f and "/" not in f and f not in (".", "..") for f in files
        ):
            raise t.error(f"{key}.markers.{kind}", files, "a file name or a list of file names")
        markers[kind] = tuple(files)
    base = Path(local).expanduser() if local else Path("reports") / host
    return ReportsConfig(name, host, roots, (path.parent / base).resolve(), markers, watch, ignore)
