"""The link heals itself and the tunnels keep their ports, under real faults against real sshd."""

from __future__ import annotations

import asyncio
import socket
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from tether.config import HostConfig, TunnelConfig
from tether.errors import AuthRefused, HostUnreachable
from tether.transport.link import Link, LinkState, cancel_and_wait
from tether.transport.tunnel import Tunnel

from tests.faultproxy import FaultProxy
from tests.helpers import eventually
from tests.sshd import SshServer, free_port, keygen


def via(server: SshServer, port: int) -> HostConfig:
    """A host config that reaches ``server`` through ``port`` (a fault proxy in front of it)."""
    entry = server.known_hosts.read_text().splitlines()[0].split(" ", 1)[1]
    with server.known_hosts.open("a") as fh:
        fh.write(f"[127.0.0.1]:{port} {entry}\n")
    return server.host_config(ssh=f"{server.user}@127.0.0.1:{port}")


@pytest.fixture
def proxy(private_sshd: SshServer) -> Iterator[FaultProxy]:
    p = FaultProxy(private_sshd.port).start()
    yield p
    p.stop()


async def wait_state(link: Link, state: LinkState, timeout_s: float) -> float:
    started = time.monotonic()
    while link.state is not state:
        if time.monotonic() - started > timeout_s:
            raise AssertionError(f"link stayed {link.state} for {timeout_s}s, wanted {state}")
        await asyncio.sleep(0.02)
    return time.monotonic() - started


async def ssh_banner(port: int) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        return await asyncio.wait_for(reader.readline(), 10)
    finally:
        writer.close()


def test_link_comes_up_with_agent(private_sshd: SshServer) -> None:
    async def body() -> None:
        events: list[dict] = []
        async with Link(private_sshd.host_config(), on_event=events.append) as link:
            conn = await link.wait_up(10)
            assert (await conn.run("echo hi", check=True)).stdout == "hi\n"
            agent = await link.wait_agent(20)
            assert (await agent.hello())["version"]
            snap = link.snapshot()
            assert snap["state"] == "up" and snap["reconnects"] == 0 and snap["agent"]
            deadline = time.monotonic() + 10
            while link.snapshot()["rtt_ms"] is None:  # the first ping follows the agent's start
                assert time.monotonic() < deadline, "no round trip measured within 10 s"
                await asyncio.sleep(0.01)
            assert 0 < link.snapshot()["rtt_ms"] < 10_000
        assert link.state is LinkState.STOPPED
        assert any(e["kind"] == "link.up" for e in events)

    asyncio.run(body())


@pytest.mark.timeout(60)  # today's failure is a frozen event loop: only a signal ends it
def test_agent_that_dies_as_it_starts_gets_a_new_connection(
    private_sshd: SshServer, tmp_path: Path
) -> None:
    """The agent's first start on a live connection fails (its process ends right after the
    bootstrap's go-ahead, as a host that kills it would): the link replaces the connection and
    the next start works. Waiting callers must not loop on the failed start without yielding."""
    started_once = tmp_path / "started-once"
    python = tmp_path / "python-dies-first"
    python.write_text(
        "#!/bin/sh\n"
        f'if [ ! -e "{started_once}" ]; then\n'
        f'  : > "{started_once}"; echo "TETHER-RUN /gone/agent.py"; exit 0\n'
        "fi\n"
        f'exec "{sys.executable}" "$@"\n'
    )
    python.chmod(0o755)

    async def body() -> None:
        events: list[dict] = []
        config = private_sshd.host_config(python=str(python))
        async with Link(config, on_event=events.append) as link:
            agent = await asyncio.wait_for(link.wait_agent(), 30)  # as the sessions wait
            assert (await agent.hello())["version"]
            assert started_once.exists() and link.generation == 2
        assert any("the agent did not start" in e["message"] for e in events), events

    asyncio.run(body())


def test_close_ends_a_supervisor_that_lost_its_cancel() -> None:
    """Before Python 3.12, asyncio.wait_for drops a cancel that lands as the call it waits on
    ends (asyncssh's connect and the link's probes wait that way): a link closed at that moment
    went on reconnecting to a host that was down, and close() never returned. Here the cancel is
    made to land at that moment; closing must still end the task."""

    async def body() -> None:
        answered = asyncio.get_running_loop().create_future()

        async def supervisor() -> None:
            await asyncio.wait_for(answered, 10)
            await asyncio.sleep(3600)  # reconnecting on and on, as if never cancelled

        task = asyncio.create_task(supervisor())
        await asyncio.sleep(0)  # the task now waits inside wait_for
        answered.set_result(None)  # the call ends, and in the same turn the close begins:
        closing = asyncio.ensure_future(cancel_and_wait(task))
        done, _ = await asyncio.wait({closing}, timeout=10)
        assert done, "the task outlived its cancel"
        assert task.cancelled()

    asyncio.run(body())


def test_link_prefers_aes_gcm_unless_ssh_config_names_ciphers(
    sshd: SshServer, tmp_path: Path
) -> None:
    """asyncssh's default, chacha20-poly1305, costs Python calls per packet; a user's own
    ``Ciphers`` line still wins."""
    own = tmp_path / "ssh_config"
    own.write_text("Host *\n    Ciphers aes256-ctr\n")

    async def body() -> tuple[str, str]:
        async with Link(sshd.host_config(), start_agent=False) as link:
            ours = (await link.wait_up(10)).get_extra_info("send_cipher")
        async with Link(sshd.host_config(ssh_config=own), start_agent=False) as link:
            theirs = (await link.wait_up(10)).get_extra_info("send_cipher")
        return ours, theirs

    assert asyncio.run(body()) == ("aes128-gcm@openssh.com", "aes256-ctr")


def test_cut_connection_reconnects(private_sshd: SshServer, proxy: FaultProxy) -> None:
    async def body() -> None:
        async with Link(via(private_sshd, proxy.port)) as link:
            first = await link.wait_up(10)
            proxy.cut()
            await wait_state(link, LinkState.DOWN, 5)
            second = await link.wait_up(10)
            assert second is not first
            assert (await second.run("echo back", check=True)).stdout == "back\n"
            assert link.reconnects == 1

    asyncio.run(body())


def test_blackhole_is_detected_by_keepalive(private_sshd: SshServer, proxy: FaultProxy) -> None:
    async def body() -> None:
        async with Link(via(private_sshd, proxy.port), start_agent=False) as link:
            await link.wait_up(10)
            proxy.blackhole()
            # keepalive every 1 s, 3 unanswered: the link notices within a few seconds.
            await wait_state(link, LinkState.DOWN, 8)
            proxy.restore()
            await link.wait_up(30)

    asyncio.run(body())


def test_killed_sshd_then_restarted_on_same_port(private_sshd: SshServer) -> None:
    async def body() -> None:
        events: list[dict] = []
        async with Link(
            private_sshd.host_config(), start_agent=False, on_event=events.append
        ) as link:
            await link.wait_up(10)
            private_sshd.stop()
            link.cut()  # sshd -D killed with its sessions: the client sees the reset
            await wait_state(link, LinkState.DOWN, 5)
            await eventually(
                lambda: any(e["kind"] == "link.retry" for e in events), 15, "a retry fails"
            )
            with pytest.raises(HostUnreachable):
                await link.wait_up(0.2)
            private_sshd.start()
            conn = await link.wait_up(10)
            assert (await conn.run("echo alive", check=True)).stdout == "alive\n"

    asyncio.run(body())


def test_refused_key_is_permanent_until_retry(private_sshd: SshServer, tmp_path: Path) -> None:
    stranger = keygen(tmp_path / "id_new")
    stranger_pub = Path(f"{stranger}.pub").read_text()
    host = private_sshd.host_config(identity_file=stranger)

    async def body() -> None:
        events: list[dict] = []
        async with Link(host, start_agent=False, on_event=events.append) as link:
            with pytest.raises(AuthRefused):
                await link.wait_up(10)
            assert link.state is LinkState.FAILED
            attempts = link.snapshot()
            # Not retrying: parked until someone calls retry() (nothing else sets that event).
            await eventually(lambda: link._retry._waiters, 10, "the link to wait for retry()")
            assert link.snapshot()["reconnects"] == attempts["reconnects"]
            assert link.state is LinkState.FAILED
            assert [e["kind"] for e in events] == ["link.error"]  # one attempt, no retry
            assert "refused the key" in (link.snapshot()["last_error"] or "")
            # The user installs the key, then asks again.
            authorized = private_sshd.root / "authorized_keys"
            authorized.write_text(authorized.read_text() + stranger_pub)
            link.retry()
            await wait_state(link, LinkState.UP, 10)

    asyncio.run(body())


def test_flapping_link_backs_off_more(private_sshd: SshServer, proxy: FaultProxy) -> None:
    async def body() -> None:
        link = Link(via(private_sshd, proxy.port), start_agent=False, gate_s=60)
        async with link:
            await link.wait_up(10)
            base = link.initial_backoff()
            proxy.cut()
            await wait_state(link, LinkState.DOWN, 5)
            await link.wait_up(15)
            assert link.initial_backoff() == pytest.approx(base * 2)

    asyncio.run(body())


def tunnel_cfg(remote_port: int, local: int = 0) -> TunnelConfig:
    return TunnelConfig("t", "test", local, "127.0.0.1", remote_port)


def test_tunnel_binds_loopback_and_keeps_port_across_outage(private_sshd: SshServer) -> None:
    async def body() -> None:
        local = free_port()
        async with Link(private_sshd.host_config(), start_agent=False) as link:
            tunnel = Tunnel(tunnel_cfg(private_sshd.port, local), link, wait_for_link_s=15)
            async with tunnel:
                assert tunnel.port == local
                sock = tunnel._server.sockets[0]  # type: ignore[union-attr]
                assert sock.getsockname()[0] == "127.0.0.1"
                assert (await ssh_banner(local)).startswith(b"SSH-2.0")

                private_sshd.stop()
                link.cut()
                await wait_state(link, LinkState.DOWN, 5)
                # The port stays bound during the outage ...
                with socket.create_connection(("127.0.0.1", local), timeout=2):
                    pass
                # ... and a client arriving now is served once the host is back.
                waiting = asyncio.create_task(ssh_banner(local))
                await eventually(
                    lambda: tunnel.snapshot()["total_connections"] >= 3, 10, "the client arrives"
                )
                private_sshd.start()
                assert (await waiting).startswith(b"SSH-2.0")
                snap = tunnel.snapshot()
                assert snap["listening"] and snap["total_connections"] >= 3
                assert snap["bytes_in"] > 0

    asyncio.run(body())


def test_tunnel_client_during_long_outage_is_closed_cleanly(private_sshd: SshServer) -> None:
    async def body() -> None:
        link = Link(private_sshd.host_config(), start_agent=False)
        tunnel = Tunnel(tunnel_cfg(private_sshd.port), link, wait_for_link_s=0.5)
        async with link, tunnel:
            await link.wait_up(10)
            private_sshd.stop()
            link.cut()
            await wait_state(link, LinkState.DOWN, 5)
            reader, writer = await asyncio.open_connection("127.0.0.1", tunnel.port)
            assert await asyncio.wait_for(reader.read(), 5) == b""  # EOF, not a hang
            writer.close()
            assert tunnel.snapshot()["refused_connections"] == 1

    asyncio.run(body())


def test_tunnel_refuses_taken_port_with_one_line(private_sshd: SshServer) -> None:
    async def body() -> None:
        with socket.socket() as taken:
            taken.bind(("127.0.0.1", 0))
            taken.listen()
            port = taken.getsockname()[1]
            link = Link(private_sshd.host_config(), start_agent=False)
            with pytest.raises(Exception) as info:
                await Tunnel(tunnel_cfg(private_sshd.port, port), link).start()
            assert "cannot listen on 127.0.0.1" in str(info.value)

    asyncio.run(body())
