"""sd_notify from the real `tether daemon` to a real datagram socket standing in for systemd:
READY only once the control socket answers and the registered projects are loaded, WATCHDOG at
half of WATCHDOG_USEC, STOPPING at shutdown, and nothing at all without NOTIFY_SOCKET."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from tether.service.control_lite import request
from tether.service.notify import Notifier, summary

from tests.helpers import write_project
from tests.sshd import SshServer

WATCHDOG_USEC = 200_000  # pings every 0.1 s


class FakeSystemd:
    """A bound SOCK_DGRAM socket; ``messages`` are (monotonic time, {key: value})."""

    def __init__(self, address: str) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind("\0" + address[1:] if address.startswith("@") else address)
        self.address = address
        self.messages: list[tuple[float, dict[str, str]]] = []

    def wait_for(self, key: str, deadline_s: float = 30.0) -> dict[str, str]:
        end = time.monotonic() + deadline_s
        while time.monotonic() < end:
            self.sock.settimeout(max(0.01, end - time.monotonic()))
            try:
                data = self.sock.recv(4096)
            except TimeoutError:
                break
            fields = dict(line.split("=", 1) for line in data.decode().splitlines())
            self.messages.append((time.monotonic(), fields))
            if key in fields:
                return fields
        raise AssertionError(f"no {key} within {deadline_s}s; got {self.messages}")


@pytest.fixture
def short_dir() -> Iterator[Path]:
    """A folder with a short path: a Unix socket path has at most 107 bytes."""
    with tempfile.TemporaryDirectory(prefix="tn-") as name:
        yield Path(name)


def start_daemon(tmp_path: Path, runtime: Path, **extra: str) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "TETHER_STATE_DIR": str(tmp_path / "state"),
        "TETHER_RUNTIME_DIR": str(runtime),
        **extra,
    }
    return subprocess.Popen(
        [sys.executable, "-m", "tether.cli.main", "daemon"],
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


@pytest.mark.parametrize("abstract", [False, True], ids=["path", "abstract"])
def test_ready_watchdog_stopping(
    sshd: SshServer, tmp_path: Path, short_dir: Path, abstract: bool
) -> None:
    local, _remote = write_project(tmp_path, sshd)
    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    (state / "projects.json").write_text(json.dumps({"projects": [str(local / "tether.toml")]}))
    runtime = short_dir / "rt"
    runtime.mkdir(mode=0o700)
    address = f"@tether-notify-{os.getpid()}" if abstract else str(short_dir / "notify")
    systemd = FakeSystemd(address)
    proc = start_daemon(tmp_path, runtime, NOTIFY_SOCKET=address, WATCHDOG_USEC=str(WATCHDOG_USEC))
    try:
        ready = systemd.wait_for("READY")
        # at READY the control socket answers and the registered project is loaded
        _, status = request(runtime / "control.sock", "GET", "/v1/status", {}, 5.0)
        assert [p["project"] for p in status["projects"]] == [str(local / "tether.toml")]
        assert ready["READY"] == "1" and ready["MAINPID"] == str(proc.pid)
        assert ready["STATUS"].startswith("1 project, links ")

        pings: list[float] = []
        while len(pings) < 6:
            systemd.wait_for("WATCHDOG")
            pings.append(systemd.messages[-1][0])
        mean = (pings[-1] - pings[0]) / (len(pings) - 1)
        assert mean >= 0.9 * WATCHDOG_USEC / 2e6  # half the period, never more often

        proc.send_signal(signal.SIGTERM)
        assert systemd.wait_for("STOPPING")["STOPPING"] == "1"
        assert proc.wait(30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        systemd.sock.close()


def test_nothing_without_notify_socket(tmp_path: Path, short_dir: Path) -> None:
    """No NOTIFY_SOCKET: the daemon runs and stops as before, sending and logging nothing."""
    runtime = short_dir / "rt"
    runtime.mkdir(mode=0o700)
    proc = start_daemon(tmp_path, runtime, WATCHDOG_USEC=str(WATCHDOG_USEC))
    try:
        deadline = time.monotonic() + 30
        while not (runtime / "control.sock").exists():
            assert time.monotonic() < deadline and proc.poll() is None
            time.sleep(0.05)
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0
    assert out == b"" and b"notify" not in err.lower() and b"watchdog" not in err.lower()
    assert not Notifier.from_env({}, os.getpid()).enabled


def test_watchdog_of_another_pid_is_not_ours() -> None:
    env = {"NOTIFY_SOCKET": "@x", "WATCHDOG_USEC": "1000000", "WATCHDOG_PID": "1"}
    assert Notifier.from_env(env, 4242).watchdog_s is None
    assert Notifier.from_env({**env, "WATCHDOG_PID": "4242"}, 4242).watchdog_s == 1.0


def test_summary_is_one_line() -> None:
    status = {
        "projects": [
            {
                "hosts": [{"state": "up"}, {"state": "down"}],
                "pairs": [{"state": "syncing"}, {"state": "halted"}],
                "triggers": [{"running": "r1"}],
            }
        ]
    }
    assert summary(status) == "1 project, links 1/2 up, 1/2 pairs syncing, 1 run going, 1 halted"


def test_logs_go_to_the_journal_only_when_stderr_is_its_stream(tmp_path: Path) -> None:
    from tether.cli.commands.daemon import under_journal

    with open(tmp_path / "stream", "wb") as stream, open(tmp_path / "other", "wb") as other:
        info = os.fstat(stream.fileno())
        env = {"JOURNAL_STREAM": f"{info.st_dev}:{info.st_ino}"}
        assert under_journal(env, stream.fileno())
        assert not under_journal(env, other.fileno())  # inherited by a child writing elsewhere
        assert not under_journal({}, stream.fileno())
