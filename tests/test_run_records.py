"""A run's record and its results, written by the daemon against a real sshd: the record always
ends (a client that goes away included), and its SQLite work stays off the daemon's loop."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest
from tether.results.store import ResultsStore
from tether.runs.history import RunHistory
from tether.service import control_lite
from tether.service import daemon as daemon_module
from tether.service.control_client import ControlClient

from tests.bench_documents import document
from tests.helpers import eventually, running_daemon, write_project
from tests.sshd import SshServer
from tests.store_threads import on_this_thread, record_run_store_threads, record_threads

pytestmark = pytest.mark.usefixtures("private_dirs")

TRIGGER = (
    'ignore = ["results/"]\n[triggers.bench]\npair = "code"\non = ["src/**/*.py"]\n'
    'run = "mkdir -p results && cp src/doc.json results/out.tether.json"\n'
    'fetch = ["results/"]\n'
)


def test_a_triggers_fetched_results_are_stored_off_the_daemons_loop(
    sshd: SshServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A trigger's run, its record and the results file it fetched: the file is read and
    stored, and the record begun and ended, on threads of their own, never on the loop that
    serves every pair, tunnel and the control API; so are resolving a project's path, its
    config's stat and saving the registry."""
    local, _ = write_project(tmp_path, sshd, extra=TRIGGER)
    (local / "src").mkdir()
    (local / "src" / "doc.json").write_text(json.dumps(document()))
    config = str(local / "tether.toml")
    calls = record_run_store_threads(monkeypatch)
    disk = ["_real_path", "_stamp", "_write_registry"]  # resolve, stat and save the registry
    record_threads(monkeypatch, daemon_module, disk, calls)

    async def body() -> None:
        async with running_daemon() as (daemon, client):
            await client.register(config)
            await client.flush(config, 30)
            runner = next(iter(daemon.projects.values())).triggers[0]
            (local / "src" / "a.py").write_text("x = 1\n")
            await client.flush(config, 30)
            # busy until the fetched results are stored: the ingest is part of the run's task
            await eventually(lambda: runner.fired == 1 and not runner.busy, 30, "run ends")

    asyncio.run(body())
    on_loop = on_this_thread(calls)  # before this test's own reads below, on this thread
    used = {name for name, _ in calls}
    with RunHistory() as history, ResultsStore() as store:
        [record], stored = history.recent(5), store.runs()
    assert record.trigger == "bench" and record.reason == "exited" and record.exit_code == 0
    assert [r.run_id for r in stored] == [record.id]
    assert str(local / "results" / "out.tether.json") == stored[0].source
    assert on_loop == []
    assert {"ResultsStore.ingest", "RunHistory.begin", "RunHistory.finish", *disk} <= used


def test_a_daemon_run_whose_client_goes_away_ends_its_record(
    sshd: SshServer, tmp_path: Path
) -> None:
    """`tether run` through the daemon, its client gone mid-run (the control stream is closed
    at a yield): the run is stopped on the host and its record says so, never "running"."""
    local, _ = write_project(tmp_path, sshd)
    config = str(local / "tether.toml")
    ticking = ["sh", "-c", "while true; do echo tick; sleep 0.05; done"]

    def client_leaves_after_output(socket: Path) -> str:
        body = {"project": config, "pair": "code", "argv": ticking, "sync": False, "fetch": []}
        events = control_lite.stream(socket, "/v1/run", body, 30)
        assert events is not None
        run_id = ""
        for event in events:
            if event["event"] == "started":
                run_id = event["run_id"]
            elif event["event"] == "output":
                break
        events.close()  # the client goes away: its socket closes
        return run_id

    async def ended(client: ControlClient, run_id: str) -> dict[str, Any]:
        deadline = asyncio.get_running_loop().time() + 30
        while True:
            [run] = [r for r in (await client.runs(limit=5))["runs"] if r["id"] == run_id]
            if run["ended"] is not None:
                return run
            assert asyncio.get_running_loop().time() < deadline, f"still running: {run}"
            await asyncio.sleep(0.05)

    async def body() -> dict[str, Any]:
        async with running_daemon() as (_daemon, client):
            await client.register(config)
            socket = control_lite.socket_path()
            assert socket is not None
            run_id = await asyncio.to_thread(client_leaves_after_output, socket)
            assert run_id
            return await ended(client, run_id)

    run = asyncio.run(body())
    assert run["reason"] == "stopped" and run["status"] is not None
    assert Path(run["log"]).read_bytes().startswith(b"tick\n")
