"""A pair session does its file work off the event loop: making the local root, reading its
``.gitignore`` (at start and on every reconnect of the host's watch), writing and removing
flush's barrier. The loop serves every pair, the tunnels and the control API, and a slow disk
(a network home folder, a sleeping USB drive) must not stop them.

Python's audit hooks see every real ``open``, ``mkdir`` and ``remove`` with its path, on the
thread that makes it: one with a running event loop is the loop's."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path
from typing import Any

import pytest
from tether.sync.tempnames import barrier_token

from tests.helpers import running_daemon, text, write_project
from tests.sshd import SshServer

Seen = list[tuple[str, str, bool]]
"""(event, path, whether it ran on the event loop's thread)"""

_recorders: list[Seen] = []
"""Where the hook notes what it sees (empty: it notes nothing). A hook cannot be removed, so
one is added for the whole run and made inert between tests."""


def _hook(event: str, args: tuple[Any, ...]) -> None:
    if _recorders and event in ("open", "os.mkdir", "os.remove") and args:
        path = args[0]
        if isinstance(path, (str, bytes, os.PathLike)):
            _recorders[-1].append((event, os.fsdecode(path), _on_loop()))


def _on_loop() -> bool:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


_hooked: list[bool] = []


@pytest.fixture
def file_calls(private_dirs: None, monkeypatch: pytest.MonkeyPatch) -> Any:
    """Every open, mkdir and remove made while the test runs."""
    monkeypatch.delenv("TETHER_FORCE_POLLING", raising=False)  # the barrier needs inotify
    if not _hooked:
        sys.addaudithook(_hook)
        _hooked.append(True)
    seen: Seen = []
    _recorders.append(seen)
    try:
        yield seen
    finally:
        _recorders.remove(seen)


def test_the_session_touches_files_off_the_loop(
    sshd: SshServer, tmp_path: Path, file_calls: Seen
) -> None:
    local, remote = write_project(tmp_path, sshd, mode="push")
    (local / ".gitignore").write_text("*.log\n")
    config = local / "tether.toml"

    async def body() -> str:
        async with running_daemon() as (daemon, client):
            await client.register(config)
            await client.flush(str(config), 30)
            session = next(iter(daemon.projects.values())).sessions["code"]
            (local / "a.py").write_text("a")
            await client.flush(str(config), 30)  # in push mode with inotify: a barrier
            assert text(remote / "a.py") == "a"
            return session.watch_mode

    mode = asyncio.run(body())

    def session_file(path: str) -> bool:
        name = Path(path)
        return name == local or name == local / ".gitignore" or _is_barrier(name, local)

    touched = [(event, path, loop) for event, path, loop in file_calls if session_file(path)]
    on_loop = sorted({(event, path) for event, path, loop in touched if loop})
    assert on_loop == []
    made = {(event, path) for event, path, _ in touched}
    assert ("os.mkdir", str(local)) in made
    # Read at the local watch's start and at the host watch's: the scans' own reads aside,
    # which the sync engine makes on its own threads.
    assert sum(path == str(local / ".gitignore") for _, path, _ in touched) >= 2
    if mode == "inotify":
        assert {event for event, path, _ in touched if _is_barrier(Path(path), local)} == {
            "open",
            "os.remove",
        }


def _is_barrier(path: Path, local: Path) -> bool:
    return path.parent == local and barrier_token(path.name) is not None
