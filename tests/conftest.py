"""Shared fixtures: a real sshd on loopback, and hosts built from it."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.sshd import SshServer, start_sshd


@pytest.fixture(scope="session")
def sshd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SshServer]:
    """One shared, well-behaved sshd for tests that do not break it."""
    server = start_sshd(tmp_path_factory.mktemp("sshd"))
    yield server
    server.stop()


@pytest.fixture
def private_sshd(tmp_path: Path) -> Iterator[SshServer]:
    """An sshd of this test's own, free to be killed, restarted or reconfigured."""
    server = start_sshd(tmp_path / "sshd")
    yield server
    server.stop()
