"""daemon/control.py: a real Unix socket in a private runtime folder, served by a stand-in
DaemonAPI (fake_api.py)."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from tether.dirs import RUNTIME_ENV, InsecureFolder, runtime_dir
from tether.errors import HostUnreachable, TetherError, UsageError
from tether.service import control_lite
from tether.service.control import SOCKET_NAME, ControlServer, DaemonAlreadyRunning, serve
from tether.service.control_client import ControlClient
from tether.service.control_lite import DaemonNotRunning, daemon_running, default_socket_path
from tether.service.control_protocol import EX_SOFTWARE

from tests.fake_api import FakeAPI
from tests.helpers import eventually, imports_of, run

REPO = Path(__file__).resolve().parent.parent


def call(method: str, route: str, body: dict[str, Any] | None = None) -> Any:
    """One request through the aiohttp client, blocking: the twin of ``control_lite.call``."""

    async def once() -> Any:
        async with ControlClient() as client:
            return await client.request(method, route, body)

    return asyncio.run(once())


class GpuGone(HostUnreachable):
    """A subclass with its own constructor: the client must still rebuild it."""

    def __init__(self, host: str) -> None:
        super().__init__(f"{host} stopped answering", f"check that {host} is up")


@pytest.fixture
def runtime(monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A short runtime folder path (sun_path is ~104 bytes; pytest's tmp_path can be longer)."""
    base = Path(tempfile.mkdtemp(prefix="tt-", dir="/tmp"))
    path = base / "run"
    monkeypatch.setenv(RUNTIME_ENV, str(path))
    yield path
    shutil.rmtree(base, ignore_errors=True)


async def started(api: FakeAPI, runtime: Path, **kwargs: Any) -> ControlServer:
    server = await serve(api, runtime / SOCKET_NAME, **kwargs)
    api.server = server
    return server


# -- the socket and its folder --------------------------------------------------------------------


def test_runtime_dir_and_socket_are_private(runtime: Path) -> None:
    assert runtime_dir() == runtime
    assert default_socket_path() == runtime / SOCKET_NAME

    async def main() -> None:
        api = FakeAPI()
        async with await serve(api) as server:
            assert server.path == runtime / SOCKET_NAME
            folder, sock = os.stat(runtime), os.stat(server.path)
            assert stat.S_IMODE(folder.st_mode) == 0o700
            assert stat.S_ISSOCK(sock.st_mode)
            assert stat.S_IMODE(sock.st_mode) == 0o600
            assert folder.st_uid == sock.st_uid == os.getuid()
            assert daemon_running()
        assert not server.path.exists()  # removed on close
        assert not daemon_running()

    run(main())


def test_group_writable_runtime_folder_is_refused(runtime: Path) -> None:
    runtime.mkdir()
    runtime.chmod(0o770)
    with pytest.raises(InsecureFolder) as caught:
        run(serve(FakeAPI()))
    assert "0770" in caught.value.message
    assert f"chmod 700 {runtime}" in caught.value.hint
    assert caught.value.exit_code == 77
    assert not (runtime / SOCKET_NAME).exists()


def test_symlinked_runtime_folder_is_refused(runtime: Path) -> None:
    real = runtime.parent / "real"
    real.mkdir(mode=0o700)
    runtime.symlink_to(real)
    with pytest.raises(InsecureFolder, match="not a plain folder"):
        run(serve(FakeAPI()))


@pytest.mark.skipif(os.getuid() != 0, reason="needs root to give a folder to another user")
def test_runtime_folder_of_another_user_is_refused(runtime: Path) -> None:
    runtime.mkdir(mode=0o700)
    os.chown(runtime, 65534, 65534)
    with pytest.raises(InsecureFolder, match="belongs to user id 65534"):
        run(serve(FakeAPI()))


def test_too_long_socket_path_is_a_clear_error(runtime: Path) -> None:
    long_path = runtime / ("x" * 120) / SOCKET_NAME
    with pytest.raises(TetherError, match="too long") as caught:
        run(serve(FakeAPI(), long_path))
    assert RUNTIME_ENV in caught.value.hint


def test_stale_socket_is_replaced(runtime: Path) -> None:
    runtime.mkdir(mode=0o700)
    path = runtime / SOCKET_NAME
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as dead:
        dead.bind(str(path))  # bound, never listening, closed: the file stays behind
    assert path.exists() and not daemon_running()
    with pytest.raises(DaemonNotRunning, match="nothing answers"):
        call("GET", "/v1/status")
    with pytest.raises(DaemonNotRunning, match="nothing answers"):
        control_lite.call("GET", "/v1/status")

    async def main() -> None:
        async with await started(FakeAPI(), runtime), ControlClient() as client:
            assert (await client.status())["projects"][0]["name"] == "demo"

    run(main())


def test_second_server_refuses_while_the_first_runs(runtime: Path) -> None:
    async def main() -> None:
        async with await started(FakeAPI(), runtime) as first:
            with pytest.raises(DaemonAlreadyRunning) as caught:
                await serve(FakeAPI(), runtime / SOCKET_NAME)
            assert f"pid {os.getpid()}" in caught.value.message
            assert first.path.exists()  # the refused one removed nothing
            async with ControlClient() as client:
                await client.status()
        async with await started(FakeAPI(), runtime):  # the lock went with the first
            pass

    run(main())


def test_a_foreign_live_socket_is_not_stolen(runtime: Path) -> None:
    runtime.mkdir(mode=0o700)
    path = runtime / SOCKET_NAME

    async def main() -> None:
        other = await asyncio.start_unix_server(lambda r, w: w.close(), path=str(path))
        try:
            with pytest.raises(DaemonAlreadyRunning, match="already answers"):
                await serve(FakeAPI(), path)
        finally:
            other.close()
            await other.wait_closed()

    run(main())


def test_a_file_in_the_sockets_place_is_refused(runtime: Path) -> None:
    runtime.mkdir(mode=0o700)
    (runtime / SOCKET_NAME).write_text("not a socket")
    with pytest.raises(TetherError, match="not a socket"):
        run(serve(FakeAPI()))


def test_lite_call_says_when_the_daemon_hangs_or_hangs_up(runtime: Path) -> None:
    """A socket that takes the connection but never answers, then one that hangs up: the CLI's
    stdlib client ends with DaemonNotRunning (exit 69) either way, never a traceback or a hang."""
    runtime.mkdir(mode=0o700)
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as server:
        server.bind(str(runtime / SOCKET_NAME))
        server.listen()
        with pytest.raises(DaemonNotRunning, match=r"did not answer POST /v1/flush within 0\.3 s"):
            control_lite.call("POST", "/v1/flush", {}, timeout=0.3)  # queued, never answered
        server.accept()[0].close()

        def hang_up() -> None:
            conn, _ = server.accept()
            conn.recv(65536)
            conn.close()

        peer = threading.Thread(target=hang_up)
        peer.start()
        try:
            with pytest.raises(DaemonNotRunning, match="went away") as gone:
                control_lite.call("POST", "/v1/pause", {}, timeout=5)
        finally:
            peer.join()
    assert gone.value.exit_code == 69


def answering(path: Path, *answers: bytes) -> threading.Thread:
    """A peer on ``path`` that sends one canned answer per connection as the request starts,
    then stops writing and reads on until the client hangs up (closing at once could cut the
    client off while it still sends the request's body: a broken pipe, not the answer)."""
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(path))
    server.listen()

    def serve_all() -> None:
        with server:
            for answer in answers:
                conn, _ = server.accept()
                with conn:
                    conn.recv(65536)
                    conn.sendall(answer)
                    conn.shutdown(socket.SHUT_WR)
                    while conn.recv(65536):
                        pass

    peer = threading.Thread(target=serve_all, daemon=True)
    peer.start()
    return peer


def test_lite_client_turns_a_garbled_or_cut_answer_into_daemon_not_running(
    runtime: Path,
) -> None:
    """Something that is not HTTP on the socket, or a run's event stream cut off mid-chunk: an
    OSError from the stdlib client (what its callers fall back or report on), and `tether run`
    through the daemon says which run it lost, in one line (exit 69), never a traceback; so it
    does when the stream ends cleanly but without the run's exit status."""
    from tether.cli.commands import run as run_command

    runtime.mkdir(mode=0o700)
    started = b'{"event": "started", "run_id": "r-42"}\n'
    cut_stream = (
        b"HTTP/1.1 200 OK\r\nContent-Type: application/x-ndjson\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n"
        + b"%x\r\n" % len(started)
        + started
        + b'\r\n40\r\n{"event": "out'  # a chunk promised 64 bytes; the daemon died
    )
    unfinished_run = cut_stream.rpartition(b"\r\n40\r\n")[0] + b"\r\n0\r\n\r\n"
    peer = answering(
        runtime / SOCKET_NAME, b"hello, not http\r\n", cut_stream, cut_stream, unfinished_run
    )
    with pytest.raises(OSError, match="not HTTP"):
        control_lite.request(runtime / SOCKET_NAME, "POST", "/v1/sync", {}, 5)
    events = control_lite.stream(runtime / SOCKET_NAME, "/v1/run", {}, 5)
    assert events is not None and next(events)["run_id"] == "r-42"
    with pytest.raises(OSError, match="not HTTP"):
        next(events)

    project = type("Project", (), {"path": runtime / "tether.toml"})()
    pair = type("Pair", (), {"name": "code"})()
    with pytest.raises(DaemonNotRunning, match=r"went away .* during run r-42") as lost:
        run_command._via_daemon(project, pair, ["true"], sync=False, fetch=[])  # type: ignore[arg-type]
    assert lost.value.exit_code == 69 and "tether runs" in lost.value.hint
    with pytest.raises(DaemonNotRunning, match="without the exit status of run r-42"):
        run_command._via_daemon(project, pair, ["true"], sync=False, fetch=[])  # type: ignore[arg-type]
    peer.join(timeout=5)


def test_lite_client_imports_http_only_to_make_a_request(runtime: Path) -> None:
    """`tether sync` with no daemon running asks the socket's path and stops there: the HTTP
    client (email, ssl: ~25 ms of every start) is never imported; `tether status` with no
    daemon says so (exit 69) without importing aiohttp (~0.3 s) for the error."""
    asked_the_path = (  # the probe fails (and says why) if this alone imported http.client
        "from tether.service import control_lite; control_lite.socket_path()\n"
        "assert 'http.client' not in sys.modules, 'asking the path imported the HTTP client'"
    )
    started = imports_of(["status"], watch=("aiohttp",), first=asked_the_path)
    assert (started.code, started.loaded) == (69, []), started.output
    assert "no control socket" in started.output


def test_no_daemon_is_daemon_not_running_with_a_start_hint(runtime: Path) -> None:
    with pytest.raises(DaemonNotRunning) as caught:
        call("GET", "/v1/status")
    assert caught.value.exit_code == 69
    assert "tether start" in caught.value.hint
    assert "no control socket" in caught.value.message
    with pytest.raises(DaemonNotRunning) as lite:
        control_lite.call("POST", "/v1/flush")
    assert (lite.value.message, lite.value.hint) == (caught.value.message, caught.value.hint)

    async def follow() -> None:
        async with ControlClient() as client:
            async for _ in client.follow_events():
                pass

    with pytest.raises(DaemonNotRunning):
        run(follow())


# -- routes ---------------------------------------------------------------------------------------


def test_every_route_round_trips(runtime: Path, tmp_path: Path) -> None:
    config = tmp_path / "tether.toml"

    async def main() -> FakeAPI:
        api = FakeAPI()
        api.history = [{"n": i} for i in range(5)]
        async with await started(api, runtime), ControlClient() as client:
            assert (await client.status())["pid"] == os.getpid()
            assert await client.register(config) == {"registered": str(config)}
            assert await client.unregister(str(config)) == {"unregistered": str(config)}
            assert await client.pause("demo", "code") == {"paused": ["code"]}
            assert await client.resume() == {"resumed": ["*"]}
            assert await client.flush("demo", timeout_s=2.5) == {
                "flushed": "demo",
                "timeout_s": 2.5,
            }
            assert len((await client.runs("demo", limit=3))["runs"]) == 3
            assert await client.logs(limit=2) == [{"n": 3}, {"n": 4}]
            assert await client.shutdown() == {"ok": True, "message": "the daemon is stopping"}
            await asyncio.wait_for(api.shut_down.wait(), 5)
        return api

    api = run(main())
    assert api.calls == [
        ("status",),
        ("register", str(config)),
        ("unregister", str(config)),
        ("pause", "demo", "code"),
        ("resume", None, None),
        ("flush", "demo", 2.5),
        ("runs", "demo", 3),
        ("recent_events", 2),
        ("shutdown",),
    ]
    assert not (runtime / SOCKET_NAME).exists()


def test_register_sends_an_absolute_path(runtime: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(runtime.parent)

    async def main() -> FakeAPI:
        api = FakeAPI()
        async with await started(api, runtime), ControlClient() as client:
            await client.register("proj/tether.toml")
        return api

    assert run(main()).calls == [("register", str(runtime.parent / "proj" / "tether.toml"))]


def test_sync_facades(runtime: Path) -> None:
    """ControlClient (aiohttp) and the stdlib client the CLI's verbs use: same answers, same
    errors."""

    async def main() -> None:
        api = FakeAPI()
        loop = asyncio.get_running_loop()
        async with await started(api, runtime):
            for facade in (call, control_lite.call):
                answer = await loop.run_in_executor(
                    None, lambda f=facade: f("POST", "/v1/pause", {"pair": "code"})
                )
                assert answer == {"paused": ["code"]}
            api.flush_error = GpuGone("gb10")
            with pytest.raises(GpuGone, match="gb10 stopped answering") as gone:
                await loop.run_in_executor(
                    None, lambda: control_lite.call("POST", "/v1/flush", {"timeout_s": 1})
                )
            assert gone.value.exit_code == 69
            with pytest.raises(TetherError, match="older than this tether"):
                await loop.run_in_executor(None, lambda: control_lite.call("POST", "/v1/nope"))

    run(main())


def test_tether_error_reaches_the_client_as_the_same_class(runtime: Path) -> None:
    async def main() -> None:
        api = FakeAPI()
        async with await started(api, runtime), ControlClient() as client:
            api.flush_error = HostUnreachable("gpu did not answer in 10 s", "check the VPN")
            with pytest.raises(HostUnreachable) as caught:
                await client.flush("demo")
            assert caught.value.exit_code == 69
            assert caught.value.message == "gpu did not answer in 10 s"
            assert caught.value.hint == "check the VPN"
            assert caught.value.one_line() == "gpu did not answer in 10 s (check the VPN)"

            api.flush_error = GpuGone("gb10")
            with pytest.raises(GpuGone) as gone:
                await client.flush()
            assert (gone.value.message, gone.value.hint) == (
                "gb10 stopped answering",
                "check that gb10 is up",
            )
            assert gone.value.exit_code == 69

            api.flush_error = TetherError("odd", "do this", exit_code=13)
            with pytest.raises(TetherError) as odd:
                await client.flush()
            assert (odd.value.exit_code, odd.value.hint) == (13, "do this")

    run(main())


def test_bad_requests_are_400_with_a_message(runtime: Path) -> None:
    async def main() -> None:
        api = FakeAPI()
        async with await started(api, runtime), ControlClient() as client:
            with pytest.raises(UsageError, match="no such route: GET /v1/nope") as caught:
                await client.request("GET", "/v1/nope")
            assert caught.value.exit_code == 2
            with pytest.raises(UsageError, match="no such route"):
                await client.request("PUT", "/v1/status")
            with pytest.raises(UsageError, match="'project' must be a string"):
                await client.request("POST", "/v1/pause", {"project": 5})
            with pytest.raises(UsageError, match="'config_path' is required"):
                await client.request("POST", "/v1/projects", {})
            with pytest.raises(UsageError, match="'limit' must be an integer"):
                await client.request("GET", "/v1/runs", params={"limit": "many"})

            connector = aiohttp.UnixConnector(path=str(runtime / SOCKET_NAME))
            async with aiohttp.ClientSession(connector=connector) as raw:
                for body in (b"{nope", b"[1, 2]"):
                    async with raw.post("http://tether/v1/flush", data=body) as response:
                        assert response.status == 400
                        error = (await response.json())["error"]
                        assert error["exit_code"] == 2 and error["message"]
                async with raw.get("http://tether/v1/unknown") as response:
                    assert response.status == 400
            assert ("flush", None, 60.0) not in api.calls

    run(main())


def test_unexpected_exception_is_500_and_the_server_keeps_serving(
    runtime: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async def main() -> None:
        api = FakeAPI()
        async with await started(api, runtime), ControlClient() as client:
            api.flush_error = ZeroDivisionError("oops")
            with pytest.raises(TetherError, match=r"internal error.*ZeroDivisionError") as caught:
                await client.flush()
            assert caught.value.exit_code == EX_SOFTWARE
            assert await client.status()

    run(main())
    assert "ZeroDivisionError" in caplog.text  # logged with its traceback


def test_concurrent_requests(runtime: Path) -> None:
    async def main() -> None:
        api = FakeAPI()
        api.flush_delay_s = 0.3
        async with await started(api, runtime):
            clients = [ControlClient() for _ in range(4)]
            try:
                began = time.monotonic()
                answers = await asyncio.gather(
                    *(c.flush(f"p{i}") for i, c in enumerate(clients * 5)),
                    *(c.status() for c in clients * 5),
                )
                took = time.monotonic() - began
            finally:
                for c in clients:
                    await c.close()
            assert took < 1.5, f"20 flushes of 0.3 s took {took:.2f} s: not concurrent"
            assert sorted(a["flushed"] for a in answers[:20]) == sorted(f"p{i}" for i in range(20))
            assert all("projects" in a for a in answers[20:])

    run(main())


# -- event stream ---------------------------------------------------------------------------------


def test_events_arrive_in_order_without_heartbeats(runtime: Path) -> None:
    async def main() -> None:
        api = FakeAPI()
        async with await started(api, runtime, heartbeat_s=0.02), ControlClient() as client:
            got: list[dict[str, Any]] = []

            async def follow() -> None:
                async for event in client.follow_events(idle_timeout_s=1):
                    got.append(event)
                    if len(got) == 60:
                        return

            follower = asyncio.create_task(follow())
            await api.wait_subscribers()
            for n in range(30):
                api.publish(n)
            await asyncio.sleep(0.1)  # heartbeats flow meanwhile; the client hides them
            for n in range(30, 60):
                api.publish(n)
            await asyncio.wait_for(follower, 5)
            assert [e["n"] for e in got] == list(range(60))
            assert got[0]["message"] == "event 0" and got[0]["project"] == "demo"
        assert api.subscribers == []  # the stream's iterator was closed

    run(main())


def test_several_followers_and_a_client_leaving(runtime: Path) -> None:
    async def main() -> None:
        api = FakeAPI()
        async with await started(api, runtime, heartbeat_s=0.02):
            async with ControlClient() as a, ControlClient() as b:

                async def first(client: ControlClient, k: int) -> list[int]:
                    out = []
                    async for event in client.follow_events(idle_timeout_s=1):
                        out.append(event["n"])
                        if len(out) == k:
                            break
                    return out

                ta = asyncio.create_task(first(a, 3))
                tb = asyncio.create_task(first(b, 6))
                await api.wait_subscribers(2)
                for n in range(6):
                    api.publish(n)
                assert await ta == [0, 1, 2]
                assert await tb == list(range(6))
            for _ in range(100):  # the server notices the clients left (at the next write)
                if not api.subscribers:
                    break
                await asyncio.sleep(0.01)
            assert api.subscribers == []

    run(main())


def test_closing_the_server_ends_the_stream(runtime: Path) -> None:
    async def main() -> None:
        api = FakeAPI()
        server = await started(api, runtime, heartbeat_s=10)
        async with ControlClient() as client:
            got: list[int] = []

            async def follow() -> None:
                async for event in client.follow_events(idle_timeout_s=30):
                    got.append(event["n"])

            follower = asyncio.create_task(follow())
            await api.wait_subscribers()
            api.publish(1)
            await eventually(lambda: got == [1], 5, "the event before the close arrives")
            began = time.monotonic()
            server.close()
            await server.wait_closed()
            await asyncio.wait_for(follower, 3)  # ends cleanly, promptly
            assert time.monotonic() - began < 1.5
            assert got == [1]

    run(main())


SERVE_SCRIPT = """
import asyncio, sys, time
from pathlib import Path
from tests.fake_api import FakeAPI
from tether.service.control import serve

async def main():
    api = FakeAPI()
    server = await serve(api, Path(sys.argv[1]), heartbeat_s=0.05)
    n = 0
    while True:
        api.publish(n)
        n += 1
        await asyncio.sleep(0.02)

asyncio.run(main())
"""


@pytest.fixture
def daemon_process(runtime: Path) -> Iterator[subprocess.Popen[bytes]]:
    runtime.mkdir(mode=0o700)
    proc = subprocess.Popen(
        [sys.executable, "-c", SERVE_SCRIPT, str(runtime / SOCKET_NAME)], cwd=REPO
    )
    try:
        deadline = time.monotonic() + 10
        while not daemon_running(runtime / SOCKET_NAME):
            assert proc.poll() is None, "the test daemon died"
            assert time.monotonic() < deadline, "the test daemon did not start"
            time.sleep(0.02)
        yield proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGCONT)
            proc.kill()
        proc.wait()


async def follow_until_error(path: Path, during: Any) -> tuple[list[int], DaemonNotRunning]:
    got: list[int] = []
    async with ControlClient(path) as client:
        try:
            async for event in client.follow_events(idle_timeout_s=0.5):
                got.append(event["n"])
                if len(got) == 5:
                    during()
        except DaemonNotRunning as exc:
            return got, exc
    raise AssertionError("the stream ended without an error")


def test_client_notices_a_killed_daemon(
    runtime: Path, daemon_process: subprocess.Popen[bytes]
) -> None:
    got, error = run(follow_until_error(runtime / SOCKET_NAME, daemon_process.kill))
    assert got[:5] == list(range(got[0], got[0] + 5))  # in order
    assert error.exit_code == 69 and "went away" in error.message


def test_client_notices_a_hung_daemon(
    runtime: Path, daemon_process: subprocess.Popen[bytes]
) -> None:
    began = time.monotonic()
    _, error = run(
        follow_until_error(
            runtime / SOCKET_NAME, lambda: daemon_process.send_signal(signal.SIGSTOP)
        )
    )
    assert "stopped answering" in error.message
    assert time.monotonic() - began < 5


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="XDG runtime folders are Linux's")
def test_runtime_dir_precedence(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv(RUNTIME_ENV, raising=False)
    monkeypatch.delenv("XDG_RUNTIME_DIR", raising=False)
    assert runtime_dir() == Path(tempfile.gettempdir()) / f"tether-{os.getuid()}"
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path))
    assert runtime_dir() == tmp_path / "tether"
    monkeypatch.setenv(RUNTIME_ENV, str(tmp_path / "mine"))
    assert runtime_dir() == tmp_path / "mine"
