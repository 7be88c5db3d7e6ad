"""No run is orphaned on the host: however tether's side of a run ends (a signal, a hang-up, a
kill -9), the remote process group goes, and the history says how the run ended. Real `tether`
processes against the real sshd; the host's processes are found by marker arguments."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from itertools import count
from pathlib import Path

import pytest

from tests.helpers import ended, tether, within, write_project
from tests.sshd import SshServer

_markers = count(1)


def marker() -> str:
    """A `sleep` argument no other process on this machine uses: `3xx.<pid><n>`."""
    return f"3{next(_markers):02d}.{os.getpid()}"


def host_pids(*args: str) -> list[int]:
    """Processes whose command line is exactly `sleep ARG` for one of ``args``."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")[:-1]
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except (FileNotFoundError, ProcessLookupError, IndexError):
            continue
        if state != "Z" and argv[:1] == [b"sleep"] and argv[1:] and argv[1].decode() in args:
            found.append(int(entry.name))
    return found


def project(tmp_path: Path, server: SshServer, orphan_timeout: str = "2s") -> tuple[Path, dict]:
    local, _remote = write_project(
        tmp_path, server, host_extra=f'orphan_timeout = "{orphan_timeout}"\n'
    )
    env = {**os.environ, "TETHER_STATE_DIR": str(tmp_path / "state")}
    env["TETHER_RUNTIME_DIR"] = str(tmp_path / "rt")  # no daemon there: runs are one-shot
    return local, env


def start_run(cwd: Path, env: dict, *markers: str) -> subprocess.Popen:
    """`tether run` of a shell whose children sleep on the markers; returns once they run."""
    sleeps = " & ".join(f"sleep {m}" for m in markers)
    proc = subprocess.Popen(
        [sys.executable, "-m", "tether.cli.main", "run", "--no-sync", "--", "sh", "-c",
         f"{sleeps} & echo started; wait"],
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
    )  # fmt: skip
    assert proc.stdout is not None and proc.stdout.readline() == b"started\n"
    assert within(lambda: len(host_pids(*markers)) == len(markers), 10)
    return proc


def runs(cwd: Path, env: dict) -> list[dict]:
    listed = tether(cwd, "runs", "--json", env=env)
    assert listed.returncode == 0, listed.stderr
    return json.loads(listed.stdout)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP, signal.SIGKILL], ids=str)
def test_a_killed_tether_run_leaves_nothing_on_the_host(
    sshd: SshServer, tmp_path: Path, sig: signal.Signals
) -> None:
    """SIGTERM and SIGHUP stop the run as Ctrl-C does; after SIGKILL nobody is attached any
    more and the host stops the group after orphan_timeout. Children die with the parent, and
    `tether runs` then says the run ended instead of "running" for ever."""
    local, env = project(tmp_path, sshd)
    markers = (marker(), marker())
    proc = start_run(local, env, *markers)
    proc.send_signal(sig)
    proc.communicate(timeout=60)
    assert within(lambda: not host_pids(*markers)), f"still on the host after {sig!r}"
    [record] = runs(local, env)
    assert record["ended"] is not None, record
    expected = "orphaned" if sig == signal.SIGKILL else "stopped"
    assert record["reason"] == expected, record


def test_a_run_reattached_within_orphan_timeout_goes_on(sshd: SshServer, tmp_path: Path) -> None:
    """The orphan rule spares a run someone follows: `tether logs -f RUN` reattaches to a live
    run, streams its host log from the start and keeps it going after its `tether run` was
    killed; `tether runs stop RUN` then stops it (whoever started it) and the follower exits
    with the run's status."""
    local, env = project(tmp_path, sshd, orphan_timeout="3s")
    (tmp_path / "twin").mkdir()  # the same run that nobody follows, orphaned a second later
    twin_local, twin_env = project(tmp_path / "twin", sshd, orphan_timeout="4s")
    mark, twin_mark = marker(), marker()
    proc = start_run(local, env, mark)
    twin = start_run(twin_local, twin_env, twin_mark)
    [record] = runs(local, env)
    follower = subprocess.Popen(
        [sys.executable, "-m", "tether.cli.main", "logs", "-f", record["id"]],
        cwd=local,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
    )
    assert follower.stdout is not None and follower.stdout.readline() == b"started\n"
    proc.kill()
    proc.communicate(timeout=30)
    twin.kill()
    twin.communicate(timeout=30)
    # Only the follower keeps the run alive now. Once the host has stopped the twin (let go
    # later, with the longer orphan_timeout), this run's own orphan_timeout has run out too.
    assert within(lambda: not host_pids(twin_mark), 30), "the twin nobody follows was kept"
    assert host_pids(mark), "the run was stopped while someone followed it"
    assert runs(local, env)[0]["ended"] is None  # the host says it goes on
    stopped = tether(local, "runs", "stop", record["id"][:12], env=env)
    assert stopped.returncode == 0, stopped.stderr
    assert f"stopped run {record['id']}" in stopped.stdout
    _out, err = follower.communicate(timeout=30)
    assert follower.returncode == 128 + signal.SIGINT, err
    assert not host_pids(mark)
    [record] = runs(local, env)
    assert record["reason"] == "stopped" and record["status"] == 128 + signal.SIGINT, record


def test_stop_all_stops_keep_running_services(sshd: SshServer, tmp_path: Path) -> None:
    """`tether stop --all` ends the daemon and the keep_running service it kept on the host
    (a daemon that is merely restarted would adopt it again)."""
    from tests.sshd import free_port

    mark = marker()
    local, env = project(tmp_path, sshd, orphan_timeout="10m")
    (tmp_path / "rt").mkdir(mode=0o700)
    with (local / "tether.toml").open("a") as toml:
        toml.write(
            f'[tunnels.svc]\nhost = "gpu"\nlocal = {free_port()}\n'
            f'remote = "localhost:{free_port()}"\nkeep_running = "sleep {mark}"\n'
        )
    started = tether(local, "start", env=env)
    assert started.returncode == 0, started.stderr
    pid = json.loads(tether(local, "status", "--json", env=env).stdout)["pid"]
    try:
        assert within(lambda: bool(host_pids(mark))), "the service never started"
        stopped = tether(local, "stop", "--all", env=env)
        assert stopped.returncode == 0, stopped.stderr
        assert ended(pid)
        assert within(lambda: not host_pids(mark)), "the service outlived stop --all"
    finally:
        if not ended(pid, wait_s=0):
            os.kill(pid, signal.SIGKILL)
