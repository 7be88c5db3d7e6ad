"""The daemon against a real sshd: live sync both ways, flush, pause, restore, and real faults
(cut, black hole, killed sshd) with edits before, during and after each."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from tether.cli.main import main
from tether.config import MAX_CONFIG_BYTES, load_config
from tether.errors import ConfigError, HostUnreachable, TetherError
from tether.service.control_client import ControlClient
from tether.service.control_lite import default_socket_path
from tether.sync.state import StateStore

from tests.faultproxy import FaultProxy
from tests.helpers import eventually, running_daemon, text, write_project
from tests.sshd import SshServer, free_port
from tests.store_threads import on_this_thread, record_store_threads

pytestmark = pytest.mark.usefixtures("private_dirs")


def test_live_two_way_sync_and_flush(sshd: SshServer, tmp_path: Path) -> None:
    local, remote = write_project(tmp_path, sshd)
    (local / "before.py").write_text("written before start")

    async def body() -> None:
        async with running_daemon() as (_daemon, client):
            await client.register(local / "tether.toml")
            await client.flush(str(local / "tether.toml"), 30)
            assert text(remote / "before.py") == "written before start"
            # A save made an instant before flush is on the host when flush returns.
            (local / "kernel.py").write_text("v1")
            await client.flush(str(local / "tether.toml"), 30)
            assert text(remote / "kernel.py") == "v1"
            # An edit on the host comes back without asking.
            (remote / "report.txt").write_text("from the host")
            await eventually(lambda: text(local / "report.txt") == "from the host", 20, "pull")
            status = await client.status()
            pair = status["projects"][0]["pairs"][0]
            assert pair["state"] in ("watching", "syncing") and pair["mode"] == "two-way"
            assert status["projects"][0]["hosts"][0]["state"] == "up"
            kinds = {e["kind"] for e in await client.logs(200)}
            assert {"link.up", "pair.synced", "project.started"} <= kinds

    asyncio.run(body())


def test_registry_survives_restart_and_unregister(sshd: SshServer, tmp_path: Path) -> None:
    local, remote = write_project(tmp_path, sshd)

    async def body() -> None:
        async with running_daemon() as (_daemon, client):
            await client.register(local / "tether.toml")
        async with running_daemon() as (daemon, client):
            await daemon.restore()
            assert list(daemon.projects) == [str(local / "tether.toml")]
            (local / "after_restart.txt").write_text("x")
            await client.flush(str(local / "tether.toml"), 30)
            assert text(remote / "after_restart.txt") == "x"
            await client.unregister(local / "tether.toml")
        async with running_daemon() as (daemon, _client):
            await daemon.restore()
            assert daemon.projects == {}

    asyncio.run(body())


def test_a_host_watch_that_cannot_start_delays_the_first_sync_only_briefly(
    sshd: SshServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The first full cycle waits for the host's watch, but not for ever: here the remote root
    is a file (the watch fails, and keeps failing), and the cycle still runs and halts the pair
    with the reason, instead of waiting in silence."""
    monkeypatch.setattr("tether.service.pair_session.HOST_WATCH_WAIT_S", 0.5)
    local, remote = write_project(tmp_path, sshd)
    remote.rmdir()
    remote.write_text("a file where the remote folder should be")
    (local / "k.py").write_text("k")

    async def body() -> None:
        async with running_daemon() as (_daemon, client):
            await client.register(local / "tether.toml")

            async def pair() -> dict:
                return (await client.status())["projects"][0]["pairs"][0]

            deadline = time.monotonic() + 20
            while (await pair())["state"] != "halted":
                assert time.monotonic() < deadline, f"never halted: {await pair()}"
                await asyncio.sleep(0.1)
            assert "remote" in (await pair())["message"]
            kinds = [e["kind"] for e in await client.logs(200)]
            assert "pair.warning" in kinds  # the watch said why it keeps failing
        assert remote.read_text() == "a file where the remote folder should be"

    asyncio.run(body())


def test_pause_collects_and_resume_syncs(sshd: SshServer, tmp_path: Path) -> None:
    local, remote = write_project(tmp_path, sshd)
    config = str(local / "tether.toml")

    async def body() -> None:
        async with running_daemon() as (_daemon, client):
            await client.register(config)
            await client.flush(config, 30)
            await client.pause(config, "code")
            (local / "while_paused.txt").write_text("held")

            async def pending() -> int:
                return int((await client.status())["projects"][0]["pairs"][0]["pending"])

            deadline = time.monotonic() + 20  # the paused pair has seen the save and holds it
            while await pending() == 0:
                assert time.monotonic() < deadline, "the paused pair never collected the save"
                await asyncio.sleep(0.05)
            assert not (remote / "while_paused.txt").exists()
            with pytest.raises(TetherError, match="paused"):
                await client.flush(config, 5)
            await client.resume(config, "code")
            await client.flush(config, 30)
            assert text(remote / "while_paused.txt") == "held"

    asyncio.run(body())


# Known and not yet understood: now and then asyncio.run() takes ~2 minutes to shut down after
# this body has passed (a default-executor thread still blocked); the assertions themselves
# (flush fails within 10 s) are unaffected, so the test gets room rather than a flaky timeout.
@pytest.mark.timeout(300)
def test_flush_fails_fast_with_69_when_host_is_down(
    private_sshd: SshServer, tmp_path: Path
) -> None:
    local, _remote = write_project(tmp_path, private_sshd)
    config = str(local / "tether.toml")

    async def body() -> None:
        async with running_daemon() as (daemon, client):
            await client.register(config)
            await client.flush(config, 30)
            private_sshd.stop()
            next(iter(daemon.projects.values())).links["gpu"].cut()
            (local / "during.txt").write_text("offline edit")
            started = time.monotonic()
            with pytest.raises(HostUnreachable) as info:
                await client.flush(config, 60)
            assert time.monotonic() - started < 10  # promptly, not after the 60 s timeout
            assert info.value.exit_code == 69

    asyncio.run(body())


@pytest.mark.timeout(90)  # a frozen event loop is ended only by a signal
def test_host_down_while_the_agent_starts_fails_fast_then_heals(
    private_sshd: SshServer, tmp_path: Path
) -> None:
    """The host goes down while the link's agent is still starting (a slow login shell makes
    that window seconds long): flush says 69 as it does for a host that went down with its
    agent up, and once the host is back the edit made meanwhile lands."""
    held = tmp_path / "agent-start-held"
    python = tmp_path / "python-held-once"  # the host's python: its first start never ends
    python.write_text(
        f'#!/bin/sh\nif [ ! -e "{held}" ]; then : > "{held}"; while :; do sleep 1; done; fi\n'
        f'exec "{sys.executable}" "$@"\n'
    )
    python.chmod(0o755)
    local, remote = write_project(tmp_path, private_sshd, host_extra=f'python = "{python}"\n')
    config = str(local / "tether.toml")

    async def body() -> None:
        async with running_daemon() as (daemon, client):
            await client.register(config)
            await eventually(held.exists, 20, "the agent's start is under way")
            private_sshd.stop()
            next(iter(daemon.projects.values())).links["gpu"].cut()
            (local / "during.txt").write_text("offline edit")
            started = time.monotonic()
            with pytest.raises(HostUnreachable) as info:
                await client.flush(config, 60)
            assert time.monotonic() - started < 10  # promptly, not after the 60 s timeout
            assert info.value.exit_code == 69
            private_sshd.start()
            await client.flush(config, 30)
            assert text(remote / "during.txt") == "offline edit"

    asyncio.run(body())


@pytest.mark.parametrize("fault", ["cut", "blackhole", "kill-sshd", "refuse"])
def test_edits_before_during_after_a_fault_all_land(
    private_sshd: SshServer, tmp_path: Path, fault: str
) -> None:
    proxy = FaultProxy(private_sshd.port).start()
    local, remote = write_project(tmp_path, private_sshd, port=proxy.port)
    config = str(local / "tether.toml")

    async def body() -> None:
        async with running_daemon() as (daemon, client):
            await client.register(config)
            (local / "before.txt").write_text("before")
            await client.flush(config, 30)
            link = next(iter(daemon.projects.values())).links["gpu"]
            generation = link.generation
            if fault == "cut":
                proxy.cut()
            elif fault == "blackhole":
                proxy.blackhole()
            elif fault == "refuse":
                proxy.refuse()
                proxy.cut()
            else:
                private_sshd.stop()
                proxy.cut()
            await eventually(  # a cut link may be up again between two looks: count connects
                lambda: link.state.value != "up" or link.generation > generation,
                15,
                "link notices the fault",
            )
            (local / "during.txt").write_text("during")
            (remote / "host_during.txt").write_text("host edit during the outage")
            await asyncio.sleep(0.5)  # kept: the outage's length, the fault under test
            if fault == "kill-sshd":
                private_sshd.start()
            else:
                proxy.restore()
            await eventually(lambda: link.state.value == "up", 30, "link heals")
            (local / "after.txt").write_text("after")
            await client.flush(config, 30)
            for name in ("before", "during", "after"):
                assert text(remote / f"{name}.txt") == name
            await eventually(
                lambda: text(local / "host_during.txt") == "host edit during the outage",
                20,
                "host edit made during the outage comes back",
            )

    try:
        asyncio.run(body())
    finally:
        proxy.stop()


def test_tunnel_keep_running_restarts_a_dead_service(sshd: SshServer, tmp_path: Path) -> None:
    service_port, local_port = free_port(), free_port()
    local, _remote = write_project(
        tmp_path,
        sshd,
        extra=f'[tunnels.api]\nhost = "gpu"\nlocal = {local_port}\n'
        f'remote = "127.0.0.1:{service_port}"\n'
        f'keep_running = "python3 -m http.server {service_port} --bind 127.0.0.1"\n',
    )
    config = str(local / "tether.toml")

    async def fetch_root() -> bytes:
        reader, writer = await asyncio.open_connection("127.0.0.1", local_port)
        writer.write(b"GET / HTTP/1.0\r\n\r\n")
        data = await asyncio.wait_for(reader.read(), 10)
        writer.close()
        return data

    async def body() -> None:
        async with running_daemon() as (daemon, client):
            await client.register(config)
            project = next(iter(daemon.projects.values()))
            service = project.services[0]

            async def serving() -> bool:
                try:
                    return (await fetch_root()).startswith(b"HTTP/1.0 200")
                except OSError:
                    return False

            deadline = time.monotonic() + 30
            while not await serving():
                assert time.monotonic() < deadline, "the service never answered"
                await asyncio.sleep(0.2)
            first = service.run_id
            agent = await project.links["gpu"].wait_agent(10)
            await agent.kill(first, signal="KILL", grace_s=0)
            deadline = time.monotonic() + 30
            while service.run_id == first or not await serving():
                assert time.monotonic() < deadline, "the service was not restarted"
                await asyncio.sleep(0.2)
            status = await client.status()
            assert status["projects"][0]["services"][0]["restarts"] >= 1
            assert status["projects"][0]["tunnels"][0]["total_connections"] >= 2
            await agent.kill(service.run_id, signal="KILL", grace_s=0)

    asyncio.run(body())


def test_control_socket_is_user_only(sshd: SshServer, tmp_path: Path) -> None:
    async def body() -> None:
        async with running_daemon() as (_daemon, client):
            mode = os.stat(client.path).st_mode & 0o777
            folder = os.stat(client.path.parent).st_mode & 0o777
            assert (mode, folder) == (0o600, 0o700)

    asyncio.run(body())


def test_config_edits_are_reloaded_and_broken_ones_kept_out(
    sshd: SshServer, tmp_path: Path
) -> None:
    local, remote = write_project(tmp_path, sshd, mode="push")
    config = local / "tether.toml"

    async def body() -> None:
        async with running_daemon() as (daemon, client):
            daemon.config_poll_s = 0.1
            daemon.watch_configs()
            await client.register(config)
            await client.flush(str(config), 30)
            good = config.read_text()
            config.write_text(good + "this is not = [valid toml\n")
            await eventually(
                lambda: any(e["kind"] == "project.error" for e in daemon.bus.recent(100)),
                10,
                "the broken edit is reported",
            )
            (local / "still.txt").write_text("syncing")
            await client.flush(str(config), 30)  # the running config kept working
            assert text(remote / "still.txt") == "syncing"
            config.write_text(good.replace('mode = "push"', 'mode = "two-way"'))
            await eventually(
                lambda: daemon.projects[str(config)].config.pairs["code"].mode.value == "two-way",
                10,
                "the good edit is reloaded",
            )
            (remote / "from_host.txt").write_text("pulled now")
            await eventually(lambda: text(local / "from_host.txt") == "pulled now", 20, "pull")

    asyncio.run(body())


def test_read_only_remote_folder_then_writable_again(sshd: SshServer, tmp_path: Path) -> None:
    """The host's folder turns read-only (a real mount, remounted ro): the pair reports the
    problem and keeps every edit; once the folder is writable again, everything lands."""
    import subprocess

    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    local, remote = write_project(tmp_path, sshd, mode="push")
    if (
        subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(remote)],
            check=False,
            capture_output=True,
        ).returncode
        != 0
    ):
        pytest.skip("cannot mount a tmpfs here (needs CAP_SYS_ADMIN)")
    config = str(local / "tether.toml")

    def remount(mode: str) -> None:
        subprocess.run(["mount", "-o", f"remount,{mode}", str(remote)], check=True)

    async def body() -> None:
        async with running_daemon() as (daemon, client):
            await client.register(config)
            (local / "first.txt").write_text("first")
            await client.flush(config, 30)
            assert text(remote / "first.txt") == "first"
            remount("ro")
            (local / "while_ro.txt").write_text("kept")
            (local / "first.txt").write_text("first, edited")
            session = next(iter(daemon.projects.values())).sessions["code"]
            await eventually(lambda: bool(session.snapshot({})["problems"]), 20, "problem shown")
            assert any("read" in p.lower() for p in session.snapshot({})["problems"])
            assert not (remote / "while_ro.txt").exists()
            with pytest.raises(TetherError, match="could not land"):  # says so, promptly
                await client.flush(config, 30)
            remount("rw")
            # No flush, no new edit: the retry (with backoff) lands them by itself.
            await eventually(lambda: text(remote / "while_ro.txt") == "kept", 40, "retry lands")
            await client.flush(config, 30)
            assert text(remote / "first.txt") == "first, edited"
            assert not [p for p in remote.iterdir() if p.name.endswith(".tmp")]

    try:
        asyncio.run(body())
    finally:
        subprocess.run(["umount", "-l", str(remote)], check=False)


def test_bad_requests_are_400_and_unknown_names_404_not_500(tmp_path: Path) -> None:
    """The real daemon behind the socket: a request it cannot act on is the client's fault (400)
    or names something it does not have (404); neither is an internal error (500)."""
    deep = "[" * 100_000 + "]" * 100_000
    bad: list[tuple[str, str, dict[str, Any] | str]] = [
        ("POST", "/v1/flush", '{"project": ' + deep + "}"),
        ("GET", "/v1/runs?limit=" + "9" * 30, {}),
        ("GET", "/v1/logs?limit=" + "9" * 30, {}),
        ("POST", "/v1/flush", {"timeout_s": 1e308}),
        ("POST", "/v1/flush", '{"timeout_s": NaN}'),
        ("POST", "/v1/projects", {"config_path": f"{tmp_path}/a\0b/tether.toml"}),
        ("POST", "/v1/pause", {"project": "a\0b"}),
        ("POST", "/v1/run", {"project": "p", "argv": ["x\0y"]}),
    ]
    unknown: list[tuple[str, str, dict[str, Any]]] = [
        ("POST", "/v1/pause", {"project": str(tmp_path / "router" / "tether.toml")}),
        ("POST", "/v1/flush", {"project": str(tmp_path / "nowhere")}),
        ("DELETE", "/v1/projects", {"config_path": str(tmp_path / "nowhere")}),
        ("POST", "/v1/run/stop", {"run_id": "no-such-run"}),
        ("POST", "/v1/run", {"project": str(tmp_path / "nowhere"), "argv": ["true"]}),
    ]

    async def main() -> None:
        async with running_daemon():
            connector = aiohttp.UnixConnector(path=str(default_socket_path()))
            async with aiohttp.ClientSession(connector=connector) as raw:
                for cases, want in ((bad, 400), (unknown, 404)):
                    for method, route, body in cases:
                        data = body if isinstance(body, str) else json.dumps(body)
                        async with raw.request(
                            method, "http://tether" + route, data=data
                        ) as response:
                            answer = await response.json()
                        assert response.status == want, (route, body, answer)
                        assert answer["error"]["message"]

    asyncio.run(main())


@pytest.mark.parametrize("kind", ["fifo", "dev-zero"])
def test_registering_a_fifo_or_device_is_a_config_error_at_once(tmp_path: Path, kind: str) -> None:
    """A config_path that is a FIFO would hold a worker until someone wrote to it, and
    /dev/zero would be read until memory ran out: only regular files are read, boundedly."""
    if kind == "fifo":
        path = tmp_path / "tether.toml"
        os.mkfifo(path)
    else:
        path = Path("/dev/zero")

    async def main() -> None:
        async with running_daemon() as (daemon, client):
            with pytest.raises(ConfigError, match="not a regular file"):
                await asyncio.wait_for(client.register(path), 20)
            assert daemon.projects == {}

    try:
        asyncio.run(main())
    finally:
        if kind == "fifo":  # free a reader the old code left blocked, so the test can end
            with contextlib.suppress(OSError):
                os.close(os.open(path, os.O_WRONLY | os.O_NONBLOCK))


def test_a_config_file_past_the_size_bound_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "tether.toml"
    path.write_bytes(b"#" * (MAX_CONFIG_BYTES + 1))
    with pytest.raises(ConfigError, match="bigger than"):
        load_config(path)


def test_a_busy_tunnel_port_shows_in_status(
    sshd: SshServer,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A tunnel whose local port another program holds is not listening, and `tether status`
    says so with the reason, not only the daemon's log."""
    monkeypatch.setenv("COLUMNS", "300")
    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    holder.listen()
    busy = holder.getsockname()[1]
    local, _ = write_project(
        tmp_path,
        sshd,
        extra=f'[tunnels.web]\nhost = "gpu"\nlocal = {busy}\nremote = "127.0.0.1:9"\n',
    )

    async def body() -> None:
        async with running_daemon() as (_daemon, client):
            await client.register(local / "tether.toml")
            [tunnel] = (await client.status())["projects"][0]["tunnels"]
            assert not tunnel["listening"]
            assert "cannot listen" in (tunnel["last_error"] or "")
            assert await asyncio.to_thread(main, ["status"]) == 0

    try:
        asyncio.run(body())
    finally:
        holder.close()
    row = next(line for line in capsys.readouterr().out.splitlines() if line.strip()[:3] == "web")
    assert "failed" in row and "cannot listen" in row


def test_status_counts_unresolved_conflicts_not_the_last_syncs(
    sshd: SshServer, tmp_path: Path
) -> None:
    """A conflict stays counted in status until it is resolved, however many quiet syncs follow."""
    local, remote = write_project(tmp_path, sshd)
    (local / "a.txt").write_text("mine")
    (remote / "a.txt").write_text("theirs")
    config = str(local / "tether.toml")

    async def conflicts(client: ControlClient) -> int:
        return int((await client.status())["projects"][0]["pairs"][0]["conflicts"])

    async def body() -> None:
        async with running_daemon() as (_daemon, client):
            await client.register(config)
            await client.flush(config, 30)
            assert await conflicts(client) == 1
            (local / "b.txt").write_text("later")
            await client.flush(config, 30)
            assert text(remote / "b.txt") == "later"
            assert await conflicts(client) == 1
            with StateStore() as store:
                [record] = store.conflicts()
                store.drop_conflict(record.pair, record.path)  # as `tether conflicts` resolves
            assert await conflicts(client) == 0

    asyncio.run(body())


def test_the_daemon_keeps_sqlite_off_its_loop(
    sshd: SshServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A pair's cycles (full and incremental, with a conflict) and status's conflict count use
    the state database on its own thread: a big base's save never stops the other pairs, the
    tunnels or the control API, which share the daemon's loop."""
    local, remote = write_project(tmp_path, sshd)
    (local / "a.txt").write_text("mine")
    (remote / "a.txt").write_text("theirs")
    config = str(local / "tether.toml")
    calls = record_store_threads(monkeypatch)

    async def body() -> None:
        async with running_daemon() as (_daemon, client):
            await client.register(config)
            await client.flush(config, 30)
            (local / "b.txt").write_text("later")
            # The watcher's own cycle lands it, not a flush (a flush asks this two-way pair for
            # a full cycle): the incremental path is one of those under test.
            await eventually(lambda: text(remote / "b.txt") == "later", 30, "b.txt landed")
            await client.flush(config, 30)
            assert (await client.status())["projects"][0]["pairs"][0]["conflicts"] == 1

    asyncio.run(body())
    assert on_this_thread(calls) == []
    used = {name for name, _ in calls}
    assert {"halt", "save_base", "load_base_scope", "add_conflicts", "conflict_counts"} <= used
