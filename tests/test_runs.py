"""`tether run` against a real sshd: exact arguments, exact statuses, no orphans, no lost output."""

from __future__ import annotations

import asyncio
import os
import signal
import stat
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from tether.config import load_config
from tether.errors import BadHostData, UsageError
from tether.runs.history import RecordedRun, RunHistory, RunRecord, record_run
from tether.runs.remote import (
    RunOutcome,
    RunSpec,
    command_argv,
    exit_status,
    follow,
    signal_number,
    start,
)
from tether.transport.link import Link

from tests.faultproxy import FaultProxy
from tests.helpers import tether, write_cli_project
from tests.sshd import SshServer


@pytest.fixture
def project(sshd: SshServer, tmp_path: Path, state_dir: Path) -> Path:
    return write_cli_project(tmp_path, sshd, pair='ignore = ["results/"]\n')


@pytest.mark.parametrize(
    ("words", "expected"),
    [
        (["x.py", "a"], ["python3", "x.py", "a"]),
        (["-m", "pytest", "-q"], ["python3", "-m", "pytest", "-q"]),
        (["nvidia-smi", "-L"], ["nvidia-smi", "-L"]),
    ],
)
def test_command_argv(words: list[str], expected: list[str]) -> None:
    assert command_argv(words, "python3") == expected


def test_command_argv_with_python_args() -> None:
    assert command_argv(["x.py"], "python3 -X dev") == ["python3", "-X", "dev", "x.py"]


def test_signal_numbers_are_validated() -> None:
    assert signal_number("SIGKILL") == 9 and signal_number("TERM") == 15 and signal_number(2) == 2
    assert exit_status(None, 9) == 137 and exit_status(7, None) == 7
    with pytest.raises(BadHostData):
        signal_number("SIGNOPE")
    with pytest.raises(BadHostData):
        signal_number(True)


@pytest.mark.parametrize("code", [0, 1, 7])
def test_exit_status_is_the_remote_one(project: Path, code: int) -> None:
    result = tether(project, "run", "--", "sh", "-c", f"echo out; echo err >&2; exit {code}")
    assert result.returncode == code, result.stderr
    assert "out" in result.stdout and "err" in result.stdout


def test_killed_by_signal_is_128_plus_n(project: Path) -> None:
    result = tether(project, "run", "--", "sh", "-c", "kill -9 $$")
    assert result.returncode == 137, result.stderr


TORTURE = ["a b", "$HOME", "it's", 'say "hi"', "back\\slash", "ünïcødé ✓", "*", "`id`", "", "-n"]


def test_arguments_arrive_exactly_as_typed(project: Path) -> None:
    (project / "echo_args.py").write_text(
        "import json, sys\nprint(json.dumps(sys.argv[1:], ensure_ascii=False))\n"
    )
    result = tether(project, "run", "--", "echo_args.py", *TORTURE)
    assert result.returncode == 0, result.stderr
    import json

    assert json.loads(result.stdout.strip().splitlines()[-1]) == TORTURE


def test_runs_in_pair_root_with_synced_files_and_fetches(project: Path) -> None:
    (project / "make_results.py").write_text(
        "import os, pathlib\nos.makedirs('results', exist_ok=True)\n"
        "pathlib.Path('results/r.json').write_text(open('input.txt').read().upper())\n"
    )
    (project / "input.txt").write_text("measured")
    result = tether(project, "run", "--fetch", "results/", "--", "make_results.py")
    assert result.returncode == 0, result.stderr
    assert (project / "results" / "r.json").read_text() == "MEASURED"
    listing = tether(project, "runs", "--json")
    assert '"exit_code": 0' in listing.stdout and "make_results.py" in listing.stdout


def test_fetch_of_missing_path_is_one_line(project: Path) -> None:
    result = tether(project, "run", "--fetch", "nope/", "--", "true")
    assert result.returncode == 1
    assert "--fetch nope/: nothing there on the host" in result.stderr
    assert "Traceback" not in result.stderr


def test_nothing_to_run_is_usage(project: Path) -> None:
    result = tether(project, "run", "--")
    assert result.returncode == UsageError.exit_code
    assert "nothing to run" in result.stderr


def test_ctrl_c_stops_the_whole_process_group(project: Path) -> None:
    marker = f"sleep {4000 + os.getpid() % 1000}"
    proc = subprocess.Popen(
        [sys.executable, "-m", "tether.cli.main", "run", "--", "sh", "-c",
         f"{marker} & echo started; wait"],
        cwd=project, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    assert proc.stdout is not None
    assert proc.stdout.readline() == b"started\n"
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode in (130, 137), err  # SIGINT, or SIGKILL after the grace period
    left = subprocess.run(["pgrep", "-f", f"^{marker}$"], capture_output=True, text=True)
    assert left.stdout.strip() == "", "a child of the run survived"


def test_link_cut_mid_run_reattaches_without_losing_output(
    sshd: SshServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TETHER_STATE_DIR", str(tmp_path / "state"))
    proxy = FaultProxy(sshd.port).start()
    entry = sshd.known_hosts.read_text().splitlines()[0].split(" ", 1)[1]
    (tmp_path / "known_hosts").write_text(f"[127.0.0.1]:{proxy.port} {entry}\n")
    (tmp_path / "remote").mkdir()
    (tmp_path / "tether.toml").write_text(
        f'[hosts.gpu]\nssh = "{sshd.user}@127.0.0.1:{proxy.port}"\n'
        f'identity_file = "{sshd.client_key}"\nknown_hosts = "{tmp_path}/known_hosts"\n'
        f'ssh_config = "{sshd.ssh_config}"\n'
        f'[pairs.code]\nhost = "gpu"\nremote = "{tmp_path}/remote"\n'
    )
    config = load_config(tmp_path / "tether.toml")
    pair = config.pair("code")
    script = "for i in $(seq 1 30); do echo line $i; sleep 0.1; done; exit 3"
    spec = RunSpec(host=config.host("gpu"), pair=pair, shell=script)

    async def body() -> tuple[bytes, object]:
        seen = bytearray()
        fifth = asyncio.Event()

        def output(chunk: bytes) -> None:
            seen.extend(chunk)
            if b"line 5\n" in seen:
                fifth.set()

        async with Link(spec.host) as link:
            await start(link, spec)
            follower = asyncio.create_task(follow(link, spec, output))
            await asyncio.wait_for(fifth.wait(), 30)
            proxy.cut()
            outcome = await asyncio.wait_for(follower, 60)
            return bytes(seen), outcome

    try:
        output, outcome = asyncio.run(body())
    finally:
        proxy.stop()
    expected = "".join(f"line {i}\n" for i in range(1, 31)).encode()
    assert output == expected, outcome  # nothing lost, nothing repeated
    assert outcome.exit_code == 3 and outcome.reattached >= 1  # type: ignore[attr-defined]


def test_history_records_start_and_end(project: Path, tmp_path: Path) -> None:
    started = time.time()
    assert tether(project, "run", "--", "sh", "-c", "exit 5").returncode == 5
    with RunHistory(tmp_path / "state" / "runs.sqlite3") as history:
        record = history.recent(1)[0]
    assert record.exit_code == 5 and record.reason == "exited" and record.started >= started - 1
    assert record.ended is not None and Path(record.log).exists()


def test_run_log_is_private_under_a_loose_umask(project: Path, tmp_path: Path) -> None:
    """A one-shot run's log holds its output: 0600 in a 0700 folder whatever the umask, and a
    state folder left 0755 is narrowed."""
    state = tmp_path / "state"
    state.mkdir(mode=0o755)
    os.chmod(state, 0o755)
    result = subprocess.run(
        [sys.executable, "-m", "tether.cli.main", "run", "--", "sh", "-c", "echo secret"],
        cwd=project,
        capture_output=True,
        text=True,
        timeout=60,
        umask=0o022,
    )
    assert result.returncode == 0, result.stderr
    [run_log] = (state / "runs").glob("*.log")
    assert run_log.read_text() == "secret\n"
    modes = [stat.S_IMODE(os.stat(p).st_mode) for p in (state, state / "runs", run_log)]
    assert modes == [0o700, 0o700, 0o600]


def test_a_venv_missing_on_the_host_is_a_one_line_error(
    sshd: SshServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """hosts.X.venv names a folder the host lacks: the run does not start without it."""
    monkeypatch.setenv("TETHER_STATE_DIR", str(tmp_path / "state"))
    root = tmp_path / "proj"
    root.mkdir()
    (tmp_path / "remote" / "code").mkdir(parents=True)
    (root / "tether.toml").write_text(
        sshd.toml_host("gpu") + f'venv = "{tmp_path}/no-venv"\n'
        f'[pairs.code]\nhost = "gpu"\nremote = "{tmp_path}/remote/code"\n'
    )
    result = tether(root, "run", "--no-sync", "--", "sh", "-c", "echo ran")
    assert result.returncode == 1 and "ran" not in result.stdout
    assert f"venv {tmp_path}/no-venv does not exist" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr


KILLED_IN_A_RUN = """
import asyncio, os, signal
from tether.runs.history import record_run

async def main():
    async with record_run("r3", project="p", host="h", pair="main", command="y"):
        os.kill(os.getpid(), signal.SIGKILL)

asyncio.run(main())
"""


def test_record_run_keeps_a_running_record_and_a_private_log_and_always_ends_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The record says "running" while its block goes on and is ended however the block ends:
    with the outcome it set; "error" when tether's side failed first; "interrupted" when it was
    cancelled or its generator closed (a client that went away). Only a process killed
    outright leaves "running" behind (for `tether runs` to settle with the host)."""
    monkeypatch.setenv("TETHER_STATE_DIR", str(tmp_path / "state"))
    entered = asyncio.Event()

    async def cancelled() -> None:
        async with record_run("r4", project="p", host="h", pair="main", command="z"):
            entered.set()
            await asyncio.Event().wait()

    async def streamed() -> AsyncIterator[None]:
        async with record_run("r5", project="p", host="h", pair="main", command="w"):
            yield

    async def body() -> tuple[RunRecord | None, RecordedRun]:
        async with record_run("r1", project="p", host="h", pair="main", command="echo hi") as run:
            await run.write(b"hi\n")
            with RunHistory() as history:
                begun = history.get("r1")
            run.outcome = RunOutcome("r1", exit_code=3, signal=None, duration_s=0.1)
        with pytest.raises(UsageError):
            async with record_run(
                "r2", project="p", host="h", pair="main", command="x", trigger="t",
                changed=["a.py"],
            ):  # fmt: skip
                raise UsageError("tether's side failed before the run had an outcome")
        task = asyncio.create_task(cancelled())
        await entered.wait()
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        stream = streamed()
        await anext(stream)
        await stream.aclose()  # closed at its yield, as the control API closes a run's stream
        return begun, run

    begun, run = asyncio.run(body())
    killed = subprocess.run([sys.executable, "-c", KILLED_IN_A_RUN], timeout=60)

    assert killed.returncode == -signal.SIGKILL
    assert begun is not None and begun.reason == "running" and begun.ended is None
    log = Path(run.record.log)
    assert log.read_bytes() == b"hi\n"
    assert stat.S_IMODE(log.stat().st_mode) == 0o600
    with RunHistory() as history:
        done, error, cut = history.get("r1"), history.get("r2"), history.get("r3")
        interrupted, closed = history.get("r4"), history.get("r5")
    assert done is not None and (done.reason, done.exit_code, done.status) == ("exited", 3, 3)
    assert done.log == str(log) and done.command == "echo hi" and done.ended is not None
    assert error is not None and (error.reason, error.exit_code) == ("error", None)
    assert (error.trigger, error.changed) == ("t", ["a.py"])
    assert cut is not None and (cut.reason, cut.ended) == ("running", None)
    for record in (interrupted, closed):
        assert record is not None and record.reason == "interrupted" and record.ended is not None
