"""A pair whose sync loop fails on an error it was not written for says so and comes back: it
never looks started while it will never sync again (a state database that could not be opened
once ended a pair's loop with no word)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from tether.errors import TetherError
from tether.sync.state import DB_NAME

from tests.helpers import eventually, running_daemon, text, write_project
from tests.sshd import SshServer

pytestmark = pytest.mark.usefixtures("private_dirs")


def test_a_failed_sync_loop_is_shown_and_resumed(
    sshd: SshServer, tmp_path: Path, state_dir: Path
) -> None:
    local, remote = write_project(tmp_path, sshd)
    config = str(local / "tether.toml")
    broken = state_dir / DB_NAME
    broken.mkdir(parents=True)  # a real fault: the state database cannot be opened

    async def body() -> None:
        async with running_daemon() as (_daemon, client):
            await client.register(config)

            async def pair() -> dict:
                return (await client.status())["projects"][0]["pairs"][0]

            deadline = asyncio.get_running_loop().time() + 30
            while (await pair())["state"] != "failed":
                assert asyncio.get_running_loop().time() < deadline, await pair()
                await asyncio.sleep(0.05)
            assert "sync loop failed" in (await pair())["message"]
            assert "cannot be read" in (await client.status())["state_error"]
            with pytest.raises(TetherError, match="sync loop failed"):
                await client.flush(config, 30)  # at once, not after its 30 s

            broken.rmdir()
            (local / "after.txt").write_text("landed")
            await client.resume(config)
            await client.flush(config, 30)
            assert text(remote / "after.txt") == "landed"

    asyncio.run(body())


def test_a_failed_sync_loop_starts_again_by_itself(
    sshd: SshServer, tmp_path: Path, state_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Nobody resumes it: once the fault is gone, the loop comes back after its pause."""
    monkeypatch.setattr("tether.service.pair_session.LOOP_RESTART_S", 0.3)
    local, remote = write_project(tmp_path, sshd)
    config = str(local / "tether.toml")
    broken = state_dir / DB_NAME
    broken.mkdir(parents=True)

    async def body() -> None:
        async with running_daemon() as (_daemon, client):
            await client.register(config)
            deadline = asyncio.get_running_loop().time() + 30
            while (await client.status())["projects"][0]["pairs"][0]["state"] != "failed":
                assert asyncio.get_running_loop().time() < deadline
                await asyncio.sleep(0.05)
            broken.rmdir()
            (local / "later.txt").write_text("by itself")
            await eventually(lambda: text(remote / "later.txt") == "by itself", 30, "restarted")

    asyncio.run(body())
