"""A local agent process for the tests that talk to the agent directly: run a body against a
fresh one, and the small checks those tests share (a digest, the temporary files left behind)."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

from tether.transport.agent_client import AgentClient

T = TypeVar("T")
OLD_NS = 1_600_000_000 * 10**9
"""An mtime well in the past (2020): older than any racy-clean window."""


def arun(body: Callable[[AgentClient], Awaitable[T]], **spawn: Any) -> T:
    """Run ``body(client)`` against a fresh local agent, closing it afterwards."""

    async def main() -> T:
        client = await AgentClient.spawn_local(**spawn)
        try:
            return await asyncio.wait_for(body(client), 30)
        finally:
            await client.close()

    return asyncio.run(main())


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def leftovers(folder: Path) -> list[str]:
    """Temporary files under ``folder``: a landing that failed or finished leaves none."""
    return sorted(p.name for p in folder.rglob("*.tmp"))
