"""The daemon's verbs as a user runs them: `tether start` spawns the agent detached, the other
verbs talk to it over its socket, `tether stop --all` ends it."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from tether.cli import main as cli
from tether.cli.commands import daemon as daemon_command

from tests.helpers import DaemonHome, ended, imports_of, tether, write_project
from tests.sshd import SshServer


def test_start_status_flush_stop(sshd: SshServer, tmp_path: Path, daemon_home: DaemonHome) -> None:
    local, remote = write_project(tmp_path, sshd)
    env = daemon_home.env
    assert "started the daemon" in daemon_home.start(local).stdout
    status = json.loads(tether(local, "status", "--json", env=env).stdout)
    assert status["projects"][0]["project"] == str(local / "tether.toml")
    # The verbs run most often stay on the stdlib client: no 0.3 s import.
    probe = imports_of(["status", "--json"], cwd=local, env=env)
    assert (probe.code, probe.loaded) == (0, []), probe.output
    pid = daemon_home.pid
    if glibc_linux() and "PYTHONMALLOC" not in env:  # started again on glibc's malloc
        assert b"PYTHONMALLOC=malloc" in Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")

    (local / "k.py").write_text("x = 1\n")
    flushed = tether(local, "flush", "--timeout", "30s", env=env)
    assert flushed.returncode == 0, flushed.stderr
    assert (remote / "k.py").read_text() == "x = 1\n"

    text = tether(local, "status", env=env).stdout
    assert "up" in text and "code" in text and "two-way" in text
    logs = tether(local, "logs", "-n", "50", env=env).stdout
    assert "link.up" in logs and "pair.synced" in logs

    assert tether(local, "pause", env=env).returncode == 0
    paused = tether(local, "flush", "--timeout", "5s", env=env)
    assert paused.returncode == 1 and "paused" in paused.stderr
    assert tether(local, "resume", env=env).returncode == 0

    assert "already" not in tether(local, "start", env=env).stdout  # idempotent re-register
    assert tether(local, "stop", "--all", env=env).returncode == 0
    gone = tether(local, "status", env=env)
    assert gone.returncode == 69 and "tether start" in gone.stderr
    assert "Traceback" not in gone.stderr
    assert pid is not None and ended(pid), "stop --all left the daemon running"


def glibc_linux() -> bool:
    try:
        return sys.platform.startswith("linux") and bool(os.confstr("CS_GNU_LIBC_VERSION"))
    except (ValueError, OSError):
        return False


def test_daemon_execs_itself_again_on_glibc_malloc(monkeypatch: pytest.MonkeyPatch) -> None:
    """`tether daemon` starts its own command line again with PYTHONMALLOC=malloc (glibc only),
    once: not when PYTHONMALLOC is set, nor when called with arguments in-process."""
    execs: list[tuple[str, list[str], dict[str, str]]] = []

    def execve(path: str, argv: list[str], env: dict[str, str]) -> None:
        execs.append((path, argv, env))
        raise OSError("not here")  # as a failed exec: the daemon goes on as it is

    ran: list[bool] = []
    monkeypatch.setattr(os, "execve", execve)
    monkeypatch.setattr(
        "tether.service.daemon.run_daemon", lambda: asyncio.sleep(0, ran.append(True))
    )
    monkeypatch.setattr(sys, "orig_argv", [sys.executable, "-m", "tether.cli.main", "daemon"])
    monkeypatch.setattr(sys, "argv", ["cli.py", "daemon"])
    monkeypatch.delenv("PYTHONMALLOC", raising=False)
    assert cli.main(["daemon"]) == 0 and execs == []  # explicit arguments: not this process's
    assert cli.main() == 0 and ran == [True, True]
    if not glibc_linux():
        assert execs == []
        return
    [(path, argv, env)] = execs
    assert path == sys.executable and argv == [sys.executable, "-m", "tether.cli.main", "daemon"]
    assert env["PYTHONMALLOC"] == "malloc"
    monkeypatch.setenv("PYTHONMALLOC", "pymalloc")  # a choice made is kept
    daemon_command.use_system_malloc()
    assert len(execs) == 1


def test_run_goes_through_a_running_daemon(
    sshd: SshServer, tmp_path: Path, daemon_home: DaemonHome
) -> None:
    """With the daemon watching the project, `tether run` uses its link and warm agent: the
    run shows up in the daemon's own events, output and exit status arrive intact, Ctrl-C stops
    the remote process group."""
    local, _remote = write_project(tmp_path, sshd)
    env = daemon_home.env
    daemon_home.start(local)
    (local / "echo_args.py").write_text("import sys\nprint(sys.argv[1:])\nsys.exit(4)\n")
    result = tether(local, "run", "--", "echo_args.py", "a b", "$HOME", "ü", env=env)
    assert result.returncode == 4, result.stderr
    assert result.stdout.strip() == "['a b', '$HOME', 'ü']"
    logs = tether(local, "logs", "-n", "100", env=env).stdout
    assert "run.started" in logs and "echo_args.py" in logs  # the daemon ran it

    marker = f"sleep {6000 + os.getpid() % 1000}"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tether.cli.main",
            "run",
            "--",
            "sh",
            "-c",
            f"{marker} & echo started; wait",
        ],
        cwd=local,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert proc.stdout is not None and proc.stdout.readline() == b"started\n"
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode in (130, 137), err
    left = subprocess.run(["pgrep", "-f", f"^{marker}$"], capture_output=True, text=True)
    assert left.stdout.strip() == ""
    tether(local, "stop", "--all", env=env)


def test_run_in_a_project_the_daemon_does_not_watch_goes_one_shot(
    sshd: SshServer, tmp_path: Path, daemon_home: DaemonHome
) -> None:
    """The daemon runs for project A; `tether run` in project B still works, on its own."""
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
    watched, _ = write_project(tmp_path / "a", sshd)
    other, _ = write_project(tmp_path / "b", sshd)
    env = daemon_home.env
    daemon_home.start(watched)
    result = tether(other, "run", "--", "sh", "-c", "echo from-b; exit 6", env=env)
    assert result.returncode == 6, result.stderr
    assert result.stdout.strip() == "from-b"
    logs = tether(watched, "logs", "-n", "100", env=env).stdout
    assert "run.started" not in logs  # not the daemon's: B is not registered there
    tether(watched, "stop", "--all", env=env)


def test_logs_and_state_folder_are_private_under_a_loose_umask(
    sshd: SshServer, tmp_path: Path, daemon_home: DaemonHome
) -> None:
    """Under umask 022 the daemon's log, a run's log and the folders holding them are the user's
    alone; a state folder made 0755 before tether ran is narrowed to 0700."""
    local, _remote = write_project(tmp_path, sshd)
    state = Path(daemon_home.env["TETHER_STATE_DIR"])
    (state / "runs").mkdir(mode=0o755, parents=True)
    os.chmod(state, 0o755)
    os.chmod(state / "runs", 0o755)

    def loose(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "tether.cli.main", *args],
            cwd=local,
            env=daemon_home.env,
            capture_output=True,
            text=True,
            timeout=60,
            stdin=subprocess.DEVNULL,
            umask=0o022,
        )

    assert loose("start").returncode == 0
    daemon_home.pid = json.loads(loose("status", "--json").stdout)["pid"]
    result = loose("run", "--", "sh", "-c", "echo secret")
    assert result.returncode == 0, result.stderr
    [run_log] = (state / "runs").glob("*.log")
    modes = {p.name: stat.S_IMODE(os.stat(p).st_mode) for p in (state, state / "runs", run_log)}
    modes["daemon.log"] = stat.S_IMODE(os.stat(state / "daemon.log").st_mode)
    assert modes == {"state": 0o700, "runs": 0o700, run_log.name: 0o600, "daemon.log": 0o600}
    loose("stop", "--all")
