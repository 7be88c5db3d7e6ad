"""Starter tether.toml files: a commented template, or one converted from remote_tools' config.

The old ``remote_tools/.remote_config`` is shell assignments (REMOTE_HOST, REMOTE_CODE_PATH,
REMOTE_VENV_PATH, RSYNC_OPTIONS, SSH_OPTIONS). It is read with :mod:`shlex`, never executed.
"""

from __future__ import annotations

import json
import shlex
from dataclasses import dataclass, field
from pathlib import Path

from ..config import parse_config
from ..errors import ConfigError
from ..transport.ssh import parse_destination

STARTER = """\
# tether.toml: what tether keeps tied together. Docs: README.md ("Configuration").

[hosts.gpu]
ssh = {ssh}  # a Host alias from ~/.ssh/config, or user@host[:port]
{identity_line}
python = "python3"                  # the host's interpreter for the agent and for runs
{venv_line}

[pairs.code]
host = "gpu"
local = "."                         # relative to this file
remote = {remote}
mode = {mode}# push | pull | two-way | mirror
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
    identity_file: str | None = None,
    proxy_jump: str | None = None,
    mode: str = "push",
) -> str:
    identity_line = (
        f"identity_file = {_toml_str(identity_file)}"
        if identity_file
        else '# identity_file = "~/.ssh/id_ed25519" # optional; otherwise ssh-agent and ~/.ssh/id_*'
    )
    if proxy_jump:
        identity_line += f"\nproxy_jump = {_toml_str(proxy_jump)}  # hops, as ssh -J"
    venv_line = (
        f"venv = {_toml_str(venv)}" if venv else '# venv = "~/venvs/nb"               # optional'
    )
    if connect_timeout_s:
        venv_line += f'\nconnect_timeout = "{connect_timeout_s:g}s"'
    return STARTER.format(
        ssh=_toml_str(ssh),
        identity_line=identity_line,
        mode=f"{_toml_str(mode):<29}",
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


@dataclass
class Conversion:
    """An old config's SSH_OPTIONS and RSYNC_OPTIONS in tether's terms.

    ``notes`` and ``warnings`` are one line each: a choice worth telling the user about, and an
    option that was dropped with the reason. Nothing the old config said vanishes unmentioned.
    """

    user: str | None = None
    port: int | None = None
    identity_file: str | None = None
    proxy_jump: str | None = None
    connect_timeout_s: float | None = None
    mirror: bool = False
    rules: list[tuple[str, bool]] = field(default_factory=list)
    """rsync's filter list in its order: ``(pattern, included?)``; the first match decides."""
    notes: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def drop(self, where: str, token: str, why: str) -> None:
        self.warnings.append(f"{where}: dropped `{token}`: {why}")


SSH_FLAGS = frozenset("46AaCfGgKkMNnqsTtVvXxYy")
"""ssh's options that take no argument (``ssh -h``); the rest of its letters take one."""
SSH_WITH_ARG = frozenset("BbcDEeFIiJLlmOoPpQRSWw")
SSH_OPTION_WHY = {
    "serveraliveinterval": "tether's link sends its own keepalives and reconnects by itself",
    "serveralivecountmax": "tether's link sends its own keepalives and reconnects by itself",
    "stricthostkeychecking": "tether always checks host keys; trust a new host with "
    "`tether check --trust gpu`",
    "userknownhostsfile": "set known_hosts = ... under [hosts.gpu] if not ~/.ssh/known_hosts",
    "ciphers": "put `Ciphers ...` under the host's entry in ~/.ssh/config, which tether reads",
    "batchmode": "tether never prompts anyway",
}


def parse_ssh_options(text: str, conv: Conversion, where: str = "SSH_OPTIONS") -> None:
    """Carry ``-p``/``-i``/``-J``/``-l`` and their ``-o`` spellings (and ConnectTimeout) over.

    ssh parses options getopt-style: flags can be bundled (``-4C``) and a value may be glued to its
    letter (``-p2222``) or be the next word; ``-o Key=Value`` takes ``=`` or a blank between.
    """
    words = shlex.split(text)
    i = 0
    while i < len(words):
        word = words[i]
        i += 1
        if not word.startswith("-") or word == "-":
            conv.drop(where, word, "not an ssh option (ssh options only; the host is REMOTE_HOST)")
            continue
        for at, letter in enumerate(word[1:], 1):
            if letter in SSH_FLAGS:
                conv.drop(where, f"-{letter}", "tether's SSH link has no such switch")
                continue
            if letter not in SSH_WITH_ARG:
                conv.drop(where, f"-{letter}", "not an ssh option")
                break
            value = word[at + 1 :]
            if not value:
                if i == len(words):
                    conv.drop(where, f"-{letter}", "its value is missing")
                    break
                value, i = words[i], i + 1
            _ssh_setting(letter, value, conv, where)
            break


def _ssh_setting(letter: str, value: str, conv: Conversion, where: str) -> None:
    """One ssh option that takes a value: ``-o Key=Value`` or a letter such as ``-p``."""
    shown = f"-{letter} {value}"
    if letter == "o":
        key, _, rest = value.replace("=", " ", 1).partition(" ")
        letter = {"port": "p", "identityfile": "i", "proxyjump": "J", "user": "l"}.get(
            key.lower(), key.lower()
        )
        value = rest.strip()
        if letter == "connecttimeout":
            if value.isdigit():
                conv.connect_timeout_s = float(value)
            else:
                conv.drop(where, shown, "ConnectTimeout is not a whole number of seconds")
            return
    if letter == "p":
        if value.isdigit() and 0 < int(value) < 65536:
            conv.port = int(value)
        else:
            conv.drop(where, shown, "not a port number")
    elif letter == "i":
        if conv.identity_file is None:
            conv.identity_file = value
        else:
            conv.drop(where, shown, f"tether takes one identity_file ({conv.identity_file})")
    elif letter == "J":
        conv.proxy_jump = value
    elif letter == "l":
        conv.user = value
    elif len(letter) == 1:
        conv.drop(where, shown, "tether's SSH link has no such setting")
    else:
        conv.drop(where, shown, SSH_OPTION_WHY.get(letter, "tether has no such setting"))


RSYNC_COVERED = frozenset("arltpvhPqic")
"""Short rsync switches tether does anyway or that only shape rsync's own output: recursion,
symlinks, mtimes and modes (``-a``), content checks (it always compares SHA-256), progress."""
RSYNC_COVERED_LONG = frozenset(
    [
        "--archive",
        "--recursive",
        "--links",
        "--times",
        "--perms",
        "--verbose",
        "--human-readable",
        "--progress",
        "--partial",
        "--stats",
        "--quiet",
        "--itemize-changes",
        "--checksum",
    ]
)
RSYNC_SHORT_WITH_ARG = frozenset("efTBM")
RSYNC_LONG_WITH_ARG = frozenset(
    [
        "--exclude",
        "--include",
        "--exclude-from",
        "--include-from",
        "--filter",
        "--rsh",
        "--rsync-path",
        "--bwlimit",
        "--timeout",
        "--contimeout",
        "--chmod",
        "--chown",
        "--port",
        "--max-size",
        "--min-size",
        "--partial-dir",
        "--temp-dir",
        "--backup-dir",
        "--suffix",
        "--compare-dest",
        "--copy-dest",
        "--link-dest",
        "--log-file",
        "--out-format",
        "--password-file",
        "--files-from",
        "--max-delete",
        "--modify-window",
        "--iconv",
        "--compress-level",
        "--skip-compress",
        "--usermap",
        "--groupmap",
        "--info",
        "--debug",
        "--block-size",
        "--remote-option",
    ]
)
RSYNC_DELETES = frozenset(
    ["--delete", "--del", "--delete-before", "--delete-during", "--delete-delay", "--delete-after"]
)
RSYNC_WHY = {
    "-z": "tether's SSH link does not compress",
    "--compress": "tether's SSH link does not compress",
    "-n": "use `tether sync --dry-run`",
    "--dry-run": "use `tether sync --dry-run`",
    "--delete-excluded": "tether never deletes ignored files",
    "-f": "rsync filter rules have no tether equivalent; use ignore = [...]",
    "--filter": "rsync filter rules have no tether equivalent; use ignore = [...]",
    "-C": "list the patterns you need in ignore = [...]",
    "--cvs-exclude": "list the patterns you need in ignore = [...]",
}


def parse_rsync_options(text: str, folder: Path, conv: Conversion) -> None:
    """Carry RSYNC_OPTIONS over: ``--delete`` → mirror, filters → rules, ``-e ssh ...`` → ssh.

    ``--exclude-from``/``--include-from`` files are read relative to ``folder`` (the old config's
    folder); like rsync, their ``- X``/``+ X`` lines exclude/include and ``#``/``;`` lines are
    comments.
    """
    where = "RSYNC_OPTIONS"
    words = shlex.split(text)
    i = 0
    while i < len(words):
        word = words[i]
        i += 1
        if word.startswith("--"):
            name, glued, value = word.partition("=")
            if not glued and name in RSYNC_LONG_WITH_ARG:
                if i == len(words):
                    conv.drop(where, word, "its value is missing")
                    continue
                value, i = words[i], i + 1
            _rsync_setting(name, value, folder, conv, f"{name} {value}".strip())
        elif word.startswith("-") and word != "-":
            for at, letter in enumerate(word[1:], 1):
                if letter not in RSYNC_SHORT_WITH_ARG:
                    if letter not in RSYNC_COVERED:
                        why = RSYNC_WHY.get(f"-{letter}", "tether has no equivalent")
                        conv.drop(where, f"-{letter}", why)
                    continue
                value = word[at + 1 :]
                if not value:
                    if i == len(words):
                        conv.drop(where, f"-{letter}", "its value is missing")
                        break
                    value, i = words[i], i + 1
                long = {"e": "--rsh", "f": "--filter"}.get(letter, f"-{letter}")
                _rsync_setting(long, value, folder, conv, f"-{letter} {value}")
                break
        else:
            conv.drop(where, word, "a source or destination; tether's pair names both folders")


def _rsync_setting(name: str, value: str, folder: Path, conv: Conversion, shown: str) -> None:
    where = "RSYNC_OPTIONS"
    if name in ("--exclude", "--include"):
        conv.rules.append((value, name == "--include"))
    elif name in ("--exclude-from", "--include-from"):
        path = (folder / Path(value).expanduser()).resolve()
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as exc:
            conv.drop(where, shown, f"cannot read {path} ({getattr(exc, 'strerror', exc)})")
            return
        for line in lines:
            line = line.strip()
            if not line or line[0] in "#;":
                continue
            if line[:2] in ("- ", "+ "):
                conv.rules.append((line[2:], line[0] == "+"))
            else:
                conv.rules.append((line, name == "--include-from"))
    elif name in RSYNC_DELETES:
        conv.mirror = True
    elif name == "--rsh":
        ssh, *options = shlex.split(value) or [""]
        if Path(ssh).name == "ssh":
            parse_ssh_options(shlex.join(options), conv, f"{where} {shown.split()[0]}")
        else:
            conv.drop(where, shown, "tether connects with its own SSH client")
    elif name not in RSYNC_COVERED_LONG:
        conv.drop(where, shown if value else name, RSYNC_WHY.get(name, "tether has no equivalent"))


def ignore_of(rules: list[tuple[str, bool]], conv: Conversion) -> list[str]:
    """rsync's first-match-wins filter list as gitignore lines, where the last match wins.

    Read backwards, the first rsync rule to match is the last gitignore rule to match, so the
    list is reversed and an include becomes ``!pattern``. Includes after the last exclude decide
    nothing in rsync (unmatched files are sent anyway) and are dropped with a warning; excludes of
    what tether ignores by default are left out. Without includes the order is kept as written.
    """
    last_exclude = max((n for n, (_, inc) in enumerate(rules) if not inc), default=-1)
    kept: list[tuple[str, bool]] = []
    for n, (pattern, included) in enumerate(rules):
        if included and n > last_exclude:
            conv.drop("RSYNC_OPTIONS", f"--include {pattern}", "no --exclude after it to override")
        elif included or pattern not in DEFAULT_EXCLUDES:
            kept.append((pattern, included))
    if not any(included for _, included in kept):
        return [pattern for pattern, _ in kept]
    conv.notes.append(
        "ignore: rsync's --include/--exclude order was turned into gitignore order "
        "(reversed; an include is a `!pattern`)"
    )
    return [f"!{p}" if included else p for p, included in reversed(kept)]


DEFAULT_EXCLUDES = frozenset({".git", ".git/", "__pycache__", "__pycache__/", "*.pyc"})
"""rsync excludes that tether's default ignores already cover."""


def destination(remote_host: str, conv: Conversion) -> str:
    """REMOTE_HOST with ``-l``/``-p`` folded in as ``user@host:port``.

    A user written in REMOTE_HOST wins over ``-l``, as it does for ssh."""
    user, host, port = parse_destination(remote_host)
    user = user or conv.user
    port = conv.port or port
    if ":" in host and port:
        host = f"[{host}]"
    return (f"{user}@" if user else "") + host + (f":{port}" if port else "")


def convert_remote_config(source: Path) -> tuple[str, Conversion]:
    """A tether.toml equivalent to an old remote_tools/.remote_config, and what was (not) kept."""
    try:
        text = source.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{source}: cannot read it: {exc.strerror}") from None
    values = read_remote_config(text, source)
    for required in ("REMOTE_HOST", "REMOTE_CODE_PATH"):
        if not values.get(required):
            raise ConfigError(f"{source}: {required} is missing", f"set {required}=... in it")
    conv = Conversion()
    parse_ssh_options(values.get("SSH_OPTIONS", ""), conv)
    parse_rsync_options(values.get("RSYNC_OPTIONS", ""), source.parent, conv)
    ignore = ignore_of(conv.rules, conv)
    if conv.mirror:
        conv.notes.append(
            'mode = "mirror": RSYNC_OPTIONS has --delete, so the host becomes an exact copy of '
            "this folder (files only on the host are deleted)"
        )
    else:
        conv.notes.append(
            'mode = "push": files only on the host are kept, as rsync without --delete did; '
            "unlike rsync, a synced file you delete here is deleted on the host too"
        )
    known = {"REMOTE_HOST", "REMOTE_CODE_PATH", "REMOTE_VENV_PATH", "SSH_OPTIONS", "RSYNC_OPTIONS"}
    for key in sorted(set(values) - known):
        conv.drop(source.name, f"{key}=...", "tether has no such setting")
    text = starter_config(
        ssh=destination(values["REMOTE_HOST"], conv),
        remote=values["REMOTE_CODE_PATH"],
        venv=values.get("REMOTE_VENV_PATH") or None,
        ignore=ignore,
        connect_timeout_s=conv.connect_timeout_s,
        identity_file=conv.identity_file,
        proxy_jump=conv.proxy_jump,
        mode="mirror" if conv.mirror else "push",
    )
    return text, conv


def write_config(target: Path, text: str, *, force: bool) -> None:
    """Validate, then write ``text`` to ``target`` (never over an existing file unless forced)."""
    parse_config(text, target)
    if target.exists() and not force:
        raise ConfigError(f"{target} already exists", "pass --force to replace it")
    target.write_text(text, encoding="utf-8")
