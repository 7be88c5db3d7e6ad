"""Shared fixtures: a real sshd on loopback, hosts built from it, private state folders, and the
projects the sync and daemon tests work in."""

from __future__ import annotations

import os
import signal
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.helpers import DaemonHome, ended
from tests.sshd import SshServer, start_sshd


@pytest.fixture(scope="session")
def sshd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SshServer]:
    """One shared, well-behaved sshd for tests that do not break it."""
    server = start_sshd(tmp_path_factory.mktemp("sshd"))
    yield server
    server.stop()


@pytest.fixture
def private_sshd(tmp_path: Path) -> Iterator[SshServer]:
    """An sshd of this test's own, free to be killed, restarted or reconfigured."""
    server = start_sshd(tmp_path / "sshd")
    yield server
    server.stop()


@pytest.fixture
def state_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """This test's own state folder (pair bases, halts, run history), for tether run in this
    process and in the `tether` processes it starts."""
    state = tmp_path / "state"
    monkeypatch.setenv("TETHER_STATE_DIR", str(state))
    return state


@pytest.fixture
def private_dirs(state_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """This test's own state folder and runtime folder (the control socket), so that an
    in-process daemon neither sees nor disturbs the user's or another test's."""
    runtime = tmp_path / "rt"
    runtime.mkdir(mode=0o700)
    monkeypatch.setenv("TETHER_RUNTIME_DIR", str(runtime))


@pytest.fixture
def daemon_home(tmp_path: Path) -> Iterator[DaemonHome]:
    """Private folders for a daemon started as a user starts it (`tether start`), passed in the
    environment of the `tether` processes; a daemon the test left running is killed after."""
    runtime = tmp_path / "rt"
    runtime.mkdir(mode=0o700)
    env = {
        **os.environ,
        "TETHER_STATE_DIR": str(tmp_path / "state"),
        "TETHER_RUNTIME_DIR": str(runtime),
    }
    home = DaemonHome(env)
    yield home
    if home.pid is not None and not ended(home.pid, wait_s=5):
        os.kill(home.pid, signal.SIGKILL)


@pytest.fixture
def sync_project(
    tmp_path: Path, sshd: SshServer, state_dir: Path
) -> tuple[Path, Path, Path, Callable[..., Path]]:
    """A two-way pair ``code`` from ``tmp_path/local`` to ``tmp_path/remote`` (not created: the
    first sync makes it) with its config in ``tmp_path/tether.toml`` and a private state folder.

    Returns (tmp_path, local, remote, configure); ``configure(mode, ignore)`` rewrites the
    config with another mode or ignore list (a TOML array, as text)."""
    local, remote = tmp_path / "local", tmp_path / "remote"
    local.mkdir()

    def configure(mode: str = "two-way", ignore: str = "") -> Path:
        extra = f"ignore = {ignore}\n" if ignore else ""
        (tmp_path / "tether.toml").write_text(
            sshd.toml_host()
            + f'\n[pairs.code]\nhost = "test"\nlocal = "local"\nremote = "{remote}"\n'
            f'mode = "{mode}"\n{extra}'
        )
        return tmp_path / "tether.toml"

    configure()
    return tmp_path, local, remote, configure


@pytest.fixture
def agent_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A home of the test's own, so that an agent's caches (digests, scans, runs) stay inside
    the test's folder."""
    folder = tmp_path / "home"
    folder.mkdir()
    monkeypatch.setenv("HOME", str(folder))
    return folder


@pytest.fixture
def root(tmp_path: Path) -> Path:
    """An empty folder for an agent to sync into or scan."""
    folder = tmp_path / "root"
    folder.mkdir()
    return folder
