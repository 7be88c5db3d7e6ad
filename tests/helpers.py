"""Plain helpers shared by the test files: one copy of each, so that a fix to one reaches all.

Fixtures live in conftest.py; these are the functions the tests call themselves: running
`tether` as a user does, writing a project whose host is a test sshd, a daemon in-process, the
one-shot `tether sync`, a probe of what a start of `tether` imports, a sync with a user's edit
raced in before it applies, and waits on a condition with a deadline (never a fixed sleep).
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Coroutine
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pytest
from tether.cli.main import main
from tether.config import load_config
from tether.service.control import serve
from tether.service.control_client import ControlClient
from tether.service.daemon import Daemon
from tether.sync.engine import SyncReport, sync_pair
from tether.transport.endpoints import SSH
from tether.transport.sftp_endpoint import SftpEndpoint
from tether.transport.ssh import open_connection

from tests.sshd import SshServer

T = TypeVar("T")


def tether(
    cwd: Path,
    *args: str,
    env: dict[str, str] | None = None,
    timeout: float = 120,
    module: str = "tether.cli.main",
) -> subprocess.CompletedProcess[str]:
    """`tether ARGS` in ``cwd`` as a user runs it: a separate process, no terminal on stdin.

    ``env`` defaults to this process's environment read now (after any monkeypatching) with a
    wide terminal, so that tables are not wrapped under the assertions' feet."""
    return subprocess.run(
        [sys.executable, "-m", module, *args],
        cwd=cwd,
        env={**os.environ, "COLUMNS": "200"} if env is None else env,
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )


def within(check: Callable[[], Any], timeout_s: float = 30.0) -> Any:
    """``check()``'s first truthy value, polled until ``timeout_s`` is up; falsy on timeout.

    For tests that assert on the outcome themselves (``assert within(...), "why"``)."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = check()
        if value or time.monotonic() >= deadline:
            return value
        time.sleep(0.05)


def until(check: Callable[[], Any], what: str, timeout_s: float = 30.0) -> Any:
    """``check()``'s first truthy value; an AssertionError naming ``what`` if none comes in
    ``timeout_s``."""
    value = within(check, timeout_s)
    assert value, f"not within {timeout_s}s: {what}"
    return value


async def eventually(check: Callable[[], Any], timeout_s: float = 20, what: str = "") -> None:
    """:func:`until` for coroutines: polls without blocking the event loop under test."""
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"not true within {timeout_s}s: {what}")
        await asyncio.sleep(0.05)


def run(coro: Coroutine[Any, Any, T]) -> T:
    """``coro`` run to its end on a fresh event loop; a hang fails after 15 s instead of
    freezing the suite."""
    return asyncio.run(asyncio.wait_for(coro, 15))


def ended(pid: int, wait_s: float = 15.0) -> bool:
    """Whether ``pid`` exits within ``wait_s``: gone, or a zombie nobody reaped yet."""
    deadline = time.monotonic() + wait_s
    while True:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except (FileNotFoundError, ProcessLookupError):
            return True
        if state == "Z":
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.05)


def write_project(
    tmp_path: Path,
    server: SshServer,
    *,
    port: int | None = None,
    extra: str = "",
    mode: str = "two-way",
    host_extra: str = "",
) -> tuple[Path, Path]:
    """A project whose host is ``server`` (reached through ``port`` when a proxy sits between):
    ``tmp_path/proj`` holding tether.toml with one pair ``code`` to ``tmp_path/remote``.

    ``host_extra`` adds settings to the host's table, ``extra`` to the end of the file."""
    local, remote = tmp_path / "proj", tmp_path / "remote"
    local.mkdir(exist_ok=True)
    remote.mkdir(exist_ok=True)
    port = port or server.port
    known = tmp_path / "known_hosts"
    entry = server.known_hosts.read_text().splitlines()[0].split(" ", 1)[1]
    known.write_text(f"[127.0.0.1]:{port} {entry}\n")
    (local / "tether.toml").write_text(
        f'[hosts.gpu]\nssh = "{server.user}@127.0.0.1:{port}"\n'
        f'identity_file = "{server.client_key}"\nknown_hosts = "{known}"\n'
        f'ssh_config = "{server.ssh_config}"\nconnect_timeout = "3s"\n{host_extra}'
        f'[pairs.code]\nhost = "gpu"\nremote = "{remote}"\nmode = "{mode}"\n{extra}'
    )
    return local, remote


def write_cli_project(tmp_path: Path, server: SshServer, *, host: str = "", pair: str = "") -> Path:
    """``tmp_path/proj`` with a tether.toml: host ``gpu`` (plus ``host`` settings) and a pair
    ``code`` to ``tmp_path/remote/code`` (plus ``pair``, which may add further tables)."""
    root = tmp_path / "proj"
    root.mkdir()
    (root / "tether.toml").write_text(
        server.toml_host("gpu")
        + host
        + f'\n[pairs.code]\nhost = "gpu"\nremote = "{tmp_path}/remote/code"\n'
        + pair
    )
    return root


@asynccontextmanager
async def running_daemon() -> AsyncIterator[tuple[Daemon, ControlClient]]:
    """A daemon in this process, serving its control socket, and a client of it."""
    daemon = Daemon()
    async with await serve(daemon) as _server, ControlClient() as client:
        try:
            yield daemon, client
        finally:
            await daemon.close()


def text(path: Path) -> str | None:
    """The file's text, or None while it is not there (yet)."""
    try:
        return path.read_text()
    except OSError:
        return None


def sync(tmp: Path, *extra: str) -> tuple[int, dict]:
    """`tether sync --json` on ``tmp/tether.toml`` in this process: the exit code and the first
    pair's report ({} when the command printed no JSON)."""
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        code = main(["--config", str(tmp / "tether.toml"), "sync", "--json", *extra])
    out = buf.getvalue()
    return code, (json.loads(out)["pairs"][0] if out.strip().startswith("{") else {})


def tree(root: Path) -> dict[str, str]:
    """Every path under ``root``: a file's text, "/" for a folder, "-> target" for a link."""
    out = {}
    for dirpath, dirs, files in os.walk(root):
        for name in dirs + files:
            full = Path(dirpath, name)
            rel = full.relative_to(root).as_posix()
            if full.is_symlink():
                out[rel] = "-> " + os.readlink(full)
            elif full.is_dir():
                out[rel] = "/"
            else:
                out[rel] = full.read_text()
    return out


def write(path: Path, text: str, *, mtime: float | None = None) -> None:
    """Write ``text`` (making the folders), with ``mtime`` set when given."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    if mtime is not None:
        os.utime(path, (mtime, mtime))


@dataclass
class DaemonHome:
    """A private state and runtime folder for one test's daemon, and the daemon's pid once
    `tether start` has spawned it (the `daemon_home` fixture kills a daemon the test left
    running)."""

    env: dict[str, str]
    pid: int | None = None

    def start(self, cwd: Path) -> subprocess.CompletedProcess[str]:
        started = tether(cwd, "start", env=self.env)
        assert started.returncode == 0, started.stderr
        self.pid = json.loads(tether(cwd, "status", "--json", env=self.env).stdout)["pid"]
        return started


FILES = ["a.txt", "b.txt", "d/c.txt", "d/e.txt", "f.txt"]
"""The tree the halt tests fill a side with and then delete most of."""


def fill(root: Path, names: list[str] = FILES, text: str = "x") -> None:
    """Write each of ``names`` under ``root``, its text naming it."""
    for name in names:
        write(root / name, f"{text}:{name}")


def wipe(root: Path) -> None:
    """``rm -rf root/*``."""
    for child in root.iterdir():
        shutil.rmtree(child) if child.is_dir() else child.unlink()


def sync_over_sftp(config_path: Path) -> SyncReport:
    """One sync of pair ``code`` of host ``gpu`` with the host reached over SFTP (as for a host
    without python3) instead of through the agent."""
    config = load_config(config_path)

    async def body() -> SyncReport:
        async with open_connection(config.host("gpu")) as conn:
            endpoint = await SftpEndpoint.start(conn)
            try:
                return await sync_pair(config, config.pair("code"), SSH, client=endpoint)
            finally:
                await endpoint.close()

    return asyncio.run(body())


HEAVY = ("aiohttp", "asyncssh", "rich", "numpy", "matplotlib")
"""Imports a start of `tether` pays for visibly (aiohttp alone ~0.3 s): the verbs run most often
must do without them."""


@dataclass(frozen=True)
class Imports:
    """What one `tether` start did: its exit code, which watched modules it had imported by its
    end, and what it printed (stdout, then stderr)."""

    code: int
    loaded: list[str]
    output: str


def imports_of(
    argv: list[str],
    *,
    watch: tuple[str, ...] = HEAVY,
    first: str = "",
    cwd: Path | None = None,
    env: dict[str, str] | None = None,
) -> Imports:
    """`tether ARGV` through ``main`` in a fresh interpreter (after the statement ``first``),
    and which of ``watch`` it imported: a module loaded at any point is still in
    ``sys.modules`` at the end. Blocking: a test whose daemon runs on its own event loop calls
    it through ``asyncio.to_thread``."""
    probe = (
        f"import sys; from tether.cli.main import main\n{first}\n"
        f"try:\n    code = main({argv!r})\nexcept SystemExit as exit:\n    code = exit.code or 0\n"
        f"print('loaded:', code, *[m for m in {watch!r} if m in sys.modules])"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )
    last = out.stdout.rstrip("\n").rpartition("\n")[2]
    assert out.returncode == 0 and last.startswith("loaded: "), out.stdout + out.stderr
    code, *loaded = last.split()[1:]
    return Imports(int(code), loaded, out.stdout + out.stderr)


def before_first_apply(monkeypatch: pytest.MonkeyPatch, act: Callable[[], object]) -> list[Any]:
    """Run ``act()`` between the sync's first scan and its first apply (as a user saving at that
    instant); returns the outcome of every apply, appended as each ends."""
    from tether.sync import apply as apply_mod

    real = apply_mod.apply_plan
    outcomes: list[Any] = []
    acted: list[bool] = []

    async def racing(*args: Any, **kw: Any) -> Any:
        if not acted:
            acted.append(True)
            act()
        outcome = await real(*args, **kw)
        outcomes.append(outcome)
        return outcome

    monkeypatch.setattr("tether.sync.engine.apply_plan", racing)
    return outcomes
