"""Starter tether.toml files: a commented template, or one converted from remote_tools' config.

The old ``remote_tools/.remote_config`` is shell assignments (REMOTE_HOST, REMOTE_CODE_PATH,
REMOTE_VENV_PATH, RSYNC_OPTIONS, SSH_OPTIONS). It is read with :mod:`shlex`, never executed.
"""

from __future__ import annotations

import json
import shlex
from pathlib import Path

from ..config import parse_config
from ..errors import ConfigError

STARTER = """\
# tether.toml: what tether keeps tied together. Docs: README.md ("Configuration").

[hosts.gpu]
ssh = {ssh}  # a Host alias from ~/.ssh/config, or user@host[:port]
# identity_file = "~/.ssh/id_ed25519" # optional; otherwise ssh-agent and ~/.ssh/id_* are used
python = "python3"                  # the host's interpreter for the agent and for runs
{venv_line}

[pairs.code]
host = "gpu"
local = "."                         # relative to this file
remote = {remote}
mode = "push"                       # push | pull | two-way | mirror
ignore = {ignore}                   # gitignore syntax; .gitignore files apply too

# [tunnels.api]                     # 127.0.0.1:8000 here reaches localhost:8000 on the host
# host = "gpu"
# local = 8000
# remote = "localhost:8000"

# [triggers.roofline]               # rerun the suite when kernels change
# pair = "code"
# on = ["src/**/*.py"]
# run = "python -m tether_kernels run src/my_kernels.py --json results/latest.tether.json"
# fetch = ["results/"]
# on_busy = "restart"               # restart | queue | ignore
# timeout = "10m"
"""


def _toml_str(value: str) -> str:
    return json.dumps(value, ensure_ascii=False)


def starter_config(
    *,
    ssh: str = "gpu-box",
    remote: str = "~/src/project",
    venv: str | None = None,
    ignore: list[str] | None = None,
    connect_timeout_s: float | None = None,
) -> str:
    venv_line = (
        f"venv = {_toml_str(venv)}" if venv else '# venv = "~/venvs/nb"               # optional'
    )
    if connect_timeout_s:
        venv_line += f'\nconnect_timeout = "{connect_timeout_s:g}s"'
    return STARTER.format(
        ssh=_toml_str(ssh),
        remote=_toml_str(remote),
        venv_line=venv_line,
        ignore="[" + ", ".join(_toml_str(p) for p in (ignore or ["results/", "*.log"])) + "]",
    )


def read_remote_config(text: str, source: Path) -> dict[str, str]:
    """Parse ``KEY=value`` lines as a shell would quote them; comments and blanks skipped."""
    values: dict[str, str] = {}
    # As the shell does, a backslash before a newline joins the lines (long RSYNC_OPTIONS).
    # Line numbers in errors stay those of the first line of each logical line.
    logical: list[tuple[int, str]] = []
    for number, line in enumerate(text.splitlines(), 1):
        if logical and logical[-1][1].endswith("\\"):
            logical[-1] = (logical[-1][0], logical[-1][1][:-1] + line)
        else:
            logical.append((number, line))
    for number, line in logical:
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        if stripped.startswith("export "):
            stripped = stripped[len("export ") :]
        key, sep, raw = stripped.partition("=")
        if not sep or not key.isidentifier():
            raise ConfigError(f"{source}:{number}: expected KEY=value, got {line.strip()!r}")
        try:
            words = shlex.split(raw, comments=True)
        except ValueError as exc:
            raise ConfigError(f"{source}:{number}: {key}: {exc}") from None
        values[key] = " ".join(words)
    return values


def excludes_of(rsync_options: str) -> list[str]:
    """The ``--exclude`` patterns in an RSYNC_OPTIONS string (both ``--exclude X`` and ``=X``)."""
    words = shlex.split(rsync_options)
    patterns: list[str] = []
    for i, word in enumerate(words):
        if word.startswith("--exclude="):
            patterns.append(word.split("=", 1)[1])
        elif word == "--exclude" and i + 1 < len(words):
            patterns.append(words[i + 1])
    return patterns


def connect_timeout_of(ssh_options: str) -> float | None:
    """ConnectTimeout from ``-o ConnectTimeout=10`` (or ``-oConnectTimeout 10``) style options."""
    words = shlex.split(ssh_options)
    for i, word in enumerate(words):
        option = word[2:] if word.startswith("-o") and len(word) > 2 else None
        if word == "-o" and i + 1 < len(words):
            option = words[i + 1]
        if option and option.lower().startswith("connecttimeout"):
            value = option.split("=", 1)[1] if "=" in option else option.split()[-1]
            if value.strip().isdigit():
                return float(value)
    return None


def convert_remote_config(source: Path) -> str:
    """A tether.toml equivalent to an old remote_tools/.remote_config."""
    try:
        text = source.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{source}: cannot read it: {exc.strerror}") from None
    values = read_remote_config(text, source)
    for required in ("REMOTE_HOST", "REMOTE_CODE_PATH"):
        if not values.get(required):
            raise ConfigError(f"{source}: {required} is missing", f"set {required}=... in it")
    defaults_already = {".git", ".git/", "__pycache__", "__pycache__/", "*.pyc"}
    ignore = [p for p in excludes_of(values.get("RSYNC_OPTIONS", "")) if p not in defaults_already]
    return starter_config(
        ssh=values["REMOTE_HOST"],
        remote=values["REMOTE_CODE_PATH"],
        venv=values.get("REMOTE_VENV_PATH") or None,
        ignore=ignore,
        connect_timeout_s=connect_timeout_of(values.get("SSH_OPTIONS", "")),
    )


def write_config(target: Path, text: str, *, force: bool) -> None:
    """Validate, then write ``text`` to ``target`` (never over an existing file unless forced)."""
    parse_config(text, target)
    if target.exists() and not force:
        raise ConfigError(f"{target} already exists", "pass --force to replace it")
    target.write_text(text, encoding="utf-8")
