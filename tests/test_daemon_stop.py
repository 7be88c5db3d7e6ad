"""A daemon stopped at any moment of its start stops cleanly: a service manager may send SIGTERM
the moment the control socket appears, or while registered projects are still coming back."""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path

import pytest
from tether.service import daemon as daemon_module
from tether.service.control import DaemonAlreadyRunning
from tether.service.daemon import Daemon, Project, run_daemon

from tests.helpers import running_daemon, write_project
from tests.sshd import SshServer

pytestmark = pytest.mark.usefixtures("private_dirs")


def test_the_stop_signals_are_handled_before_the_socket_is_bound(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """What SIGTERM and SIGINT do when the socket is bound: anything but Python's defaults
    (SIGTERM's kills the process with no cleanup; SIGINT's raises KeyboardInterrupt)."""
    seen: dict[str, object] = {}

    async def serve_that_stops(*args: object, **kwargs: object) -> None:
        seen.update(term=signal.getsignal(signal.SIGTERM), int=signal.getsignal(signal.SIGINT))
        raise DaemonAlreadyRunning("stop here")  # the bind, as far as this test goes

    monkeypatch.setattr(daemon_module, "serve", serve_that_stops)
    with pytest.raises(DaemonAlreadyRunning):
        asyncio.run(run_daemon())
    assert seen["term"] not in (signal.SIG_DFL, signal.SIG_IGN, None)
    assert seen["int"] is not signal.default_int_handler


def test_a_stop_while_restoring_brings_back_no_more_projects(
    sshd: SshServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SIGTERM after the first of two registered projects came back: the second is not
    started, and the first is closed with the rest, none left running past the shutdown."""
    configs = []
    for name in ("one", "two"):
        (tmp_path / name).mkdir()
        local, _ = write_project(tmp_path / name, sshd)
        configs.append(str(local / "tether.toml"))

    async def body() -> None:
        async with running_daemon() as (_daemon, client):
            for config in configs:
                await client.register(config)
        daemon = Daemon()
        started = []
        start = Project.start

        async def start_then_sigterm(project: Project) -> None:
            await start(project)
            started.append(project)
            daemon.request_stop()  # what the SIGTERM handler does

        monkeypatch.setattr(Project, "start", start_then_sigterm)
        await daemon.restore()
        await asyncio.wait_for(daemon.wait_stopped(), 30)
        assert len(started) == 1
        assert daemon.projects == {}

    asyncio.run(body())
