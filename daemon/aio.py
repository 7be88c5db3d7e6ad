"""Small asyncio tools the daemon's layers share."""

from __future__ import annotations

import asyncio
from typing import Any

CANCEL_AGAIN_S = 0.2
"""How long :func:`cancel_and_wait` gives a cancelled task to end before cancelling it again."""


async def cancel_and_wait(task: asyncio.Task[Any]) -> None:
    """Cancel ``task`` and wait until it has ended, cancelling it again while it has not.

    One cancel is not always enough: before Python 3.12, ``asyncio.wait_for`` drops a cancel
    that arrives just as the call it waits on finishes (it returns that call's result or raises
    its error instead), and asyncssh's connect, the agent's calls and the link's port probes
    wait that way. A task that lost its cancel goes on (a link's supervisor reconnecting to a
    host that is down, a pair's session waiting for its agent), and whoever closes it (the
    daemon, on unregister or shutdown) would wait for it forever.
    """
    while not task.done():
        task.cancel()
        await asyncio.wait({task}, timeout=CANCEL_AGAIN_S)
    await asyncio.gather(task, return_exceptions=True)  # its end is ours: take what it raised
