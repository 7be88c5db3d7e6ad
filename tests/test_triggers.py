"""Triggers on the daemon against a real sshd: once per landed burst, on_busy, timeout, fetch."""

from __future__ import annotations

import asyncio
import os
import subprocess
from pathlib import Path

import pytest
from tether.runs.history import RunHistory

from tests.helpers import eventually, running_daemon, write_project
from tests.sshd import SshServer

pytestmark = pytest.mark.usefixtures("private_dirs")


def trigger_toml(run: str, *, on_busy: str = "restart", extra: str = "") -> str:
    return (
        f'ignore = ["results/"]\n[triggers.bench]\npair = "code"\non = ["src/**/*.py"]\n'
        f'run = {run!r}\non_busy = "{on_busy}"\n{extra}'
    )


def runs(tmp_path: Path) -> list:
    with RunHistory(tmp_path / "state" / "runs.sqlite3") as history:
        return list(reversed(history.recent(50)))


async def setup(client, local: Path) -> str:  # type: ignore[no-untyped-def]
    config = str(local / "tether.toml")
    (local / "src").mkdir(exist_ok=True)
    await client.register(config)
    await client.flush(config, 30)
    return config


def test_one_run_per_burst_and_only_for_matching_paths(sshd: SshServer, tmp_path: Path) -> None:
    local, _ = write_project(tmp_path, sshd, extra=trigger_toml("ls src > listing.txt"))

    async def body() -> None:
        async with running_daemon() as (daemon, client):
            config = await setup(client, local)
            runner = next(iter(daemon.projects.values())).triggers[0]
            (local / "notes.md").write_text("not a kernel")
            await client.flush(config, 30)
            assert runner.fired == 0
            for i in range(5):
                (local / "src" / f"k{i}.py").write_text(f"# kernel {i}")
            await client.flush(config, 30)
            await eventually(lambda: runner.fired >= 1 and not runner.busy, 20, "run ends")
            # The daemon has had its chance to fire again: the run's output came back from the
            # host and a full cycle ran after it (a landing notifies the trigger in its cycle).
            await eventually(lambda: (local / "listing.txt").exists(), 20, "listing comes back")
            await client.flush(config, 30)
            assert runner.fired == 1
            record = runs(tmp_path)[-1]
            assert record.trigger == "bench" and record.exit_code == 0
            assert sorted(record.changed) == [f"src/k{i}.py" for i in range(5)]

    asyncio.run(body())


def test_restart_kills_the_whole_group(sshd: SshServer, tmp_path: Path) -> None:
    marker = f"sleep {5000 + os.getpid() % 1000}"
    local, _ = write_project(
        tmp_path, sshd, extra=trigger_toml(f"{marker} & wait", on_busy="restart")
    )

    async def body() -> None:
        async with running_daemon() as (daemon, client):
            config = await setup(client, local)
            runner = next(iter(daemon.projects.values())).triggers[0]
            (local / "src" / "a.py").write_text("1")
            await client.flush(config, 30)
            await eventually(lambda: runner.busy, 10, "first run starts")
            await eventually(
                lambda: (
                    subprocess.run(["pgrep", "-f", f"^{marker}$"], capture_output=True).returncode
                    == 0
                ),
                10,
                "child sleeping",
            )
            (local / "src" / "a.py").write_text("2")
            await client.flush(config, 30)
            await eventually(lambda: runner.fired == 2, 20, "restarted")
            history = runs(tmp_path)
            assert history[0].reason == "stopped" and history[0].signal in (2, 9, 15)
            await runner.cancel()
            await eventually(
                lambda: (
                    subprocess.run(["pgrep", "-f", f"^{marker}$"], capture_output=True).returncode
                    != 0
                ),
                15,
                "no orphan left",
            )

    asyncio.run(body())


@pytest.mark.parametrize(("policy", "expected_runs"), [("queue", 2), ("ignore", 1)])
def test_queue_and_ignore(sshd: SshServer, tmp_path: Path, policy: str, expected_runs: int) -> None:
    local, _ = write_project(tmp_path, sshd, extra=trigger_toml("sleep 1.5", on_busy=policy))

    async def body() -> None:
        async with running_daemon() as (daemon, client):
            config = await setup(client, local)
            runner = next(iter(daemon.projects.values())).triggers[0]
            (local / "src" / "a.py").write_text("1")
            await client.flush(config, 30)
            await eventually(lambda: runner.busy, 10, "first run starts")
            for value in ("2", "3"):  # two bursts while busy: queue keeps one more run
                (local / "src" / "a.py").write_text(value)
                await client.flush(config, 30)
            await eventually(lambda: runner.fired == expected_runs and not runner.busy, 30, "done")
            # A queued run starts before the one ahead of it ends (never idle in between); a
            # full cycle after that is the daemon's chance to fire once more for the bursts.
            await client.flush(config, 30)
            assert runner.fired == expected_runs
            assert all(r.reason == "exited" and r.exit_code == 0 for r in runs(tmp_path))

    asyncio.run(body())


def test_timeout_kills_and_is_recorded(sshd: SshServer, tmp_path: Path) -> None:
    local, _ = write_project(
        tmp_path, sshd, extra=trigger_toml("sleep 60", extra='timeout = "1s"\n')
    )

    async def body() -> None:
        async with running_daemon() as (daemon, client):
            config = await setup(client, local)
            runner = next(iter(daemon.projects.values())).triggers[0]
            (local / "src" / "a.py").write_text("1")
            await client.flush(config, 30)
            await eventually(lambda: runner.fired == 1 and not runner.busy, 20, "timed out")
            record = runs(tmp_path)[-1]
            assert record.reason == "timeout" and record.signal == 15

    asyncio.run(body())


def test_fetches_results_after_the_run(sshd: SshServer, tmp_path: Path) -> None:
    script = "mkdir -p results && cp src/a.py results/copy.txt"
    local, _ = write_project(
        tmp_path, sshd, extra=trigger_toml(script, extra='fetch = ["results/"]\n')
    )

    async def body() -> None:
        async with running_daemon() as (_daemon, client):
            config = await setup(client, local)
            (local / "src" / "a.py").write_text("measured 42")
            await client.flush(config, 30)
            target = local / "results" / "copy.txt"
            await eventually(
                lambda: target.is_file() and target.read_text() == "measured 42",
                30,
                "artifact fetched",
            )
            deadline = asyncio.get_running_loop().time() + 10
            while "trigger.fetched" not in [e["kind"] for e in await client.logs(200)]:
                assert asyncio.get_running_loop().time() < deadline, "no trigger.fetched event"
                await asyncio.sleep(0.05)

    asyncio.run(body())


def test_auto_fetch_pulls_the_reports_the_run_made(sshd: SshServer, tmp_path: Path) -> None:
    """A trigger with ``auto_fetch = true`` pulls, when its run ends, the report folders under
    the configured roots that the run created; one that was there before is left alone."""
    reports = tmp_path / "host-reports"
    (reports / "old").mkdir(parents=True)
    (reports / "old" / "db.sqlite").write_text("before the run")
    script = f"mkdir -p {reports}/new && echo fresh > {reports}/new/db.sqlite"
    extra = trigger_toml(script, extra="auto_fetch = true\n")
    extra += f'\n[reports.tt]\nhost = "gpu"\nmemory = "{reports}"\n'
    local, _ = write_project(tmp_path, sshd, extra=extra)
    pulled = local / "reports" / "gpu" / "memory"

    async def body() -> None:
        async with running_daemon() as (_daemon, client):
            config = await setup(client, local)
            (local / "src" / "a.py").write_text("x = 1\n")
            await client.flush(config, 30)
            target = pulled / "new" / "db.sqlite"
            await eventually(
                lambda: target.is_file() and target.read_text() == "fresh\n",
                60,
                "the run's report pulled",
            )

    asyncio.run(body())
    assert not (pulled / "old").exists()


def test_run_now_and_reconnect_through_the_control_api(sshd: SshServer, tmp_path: Path) -> None:
    """The tray's "Run trigger now" and "Reconnect" reach the daemon: /v1/trigger runs the
    trigger with nothing changed, an unknown trigger is a 404 (NotFound), and /v1/reconnect
    drops the link that looks up and makes it again."""
    from tether.errors import NotFound

    local, _ = write_project(tmp_path, sshd, extra=trigger_toml("echo fired"))

    async def body() -> None:
        async with running_daemon() as (_daemon, client):
            config = await setup(client, local)
            assert await client.request(
                "POST", "/v1/trigger", {"project": config, "trigger": "bench"}
            ) == {"fired": "bench"}
            await eventually(lambda: any(r.ended for r in runs(tmp_path)), 30, "the run ended")
            with pytest.raises(NotFound):
                await client.request("POST", "/v1/trigger", {"project": config, "trigger": "nope"})

            status = await client.status()
            before = status["projects"][0]["hosts"][0]["reconnects"]
            answer = await client.request("POST", "/v1/reconnect", {"project": config})
            assert answer == {"reconnecting": ["gpu"]}

            async def reconnected() -> bool:
                doc = await client.status()
                link = doc["projects"][0]["hosts"][0]
                return link["reconnects"] > before and link["state"] == "up"

            deadline = asyncio.get_running_loop().time() + 30
            while not await reconnected():
                assert asyncio.get_running_loop().time() < deadline, "no reconnect"
                await asyncio.sleep(0.1)

    asyncio.run(body())
    assert [r.command for r in runs(tmp_path)] == ["echo fired"]
