"""asyncio waits that never lose a cancel.

Before Python 3.12, ``asyncio.wait_for`` drops a cancel of its caller that lands in the same
turn of the loop as the awaited thing finishing: it returns that result instead, and the caller
carries on as if nobody had asked it to stop. A pair session closed at that moment went back to
waiting for changes, and the daemon closing it waited for it forever.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable


async def within(awaitable: Awaitable[object], timeout_s: float) -> bool:
    """Wait up to ``timeout_s`` for ``awaitable``: True when it finished (raising what it
    raised), False when the time ran out (it is cancelled then). A cancel of the caller always
    propagates, and takes the awaited work with it."""
    inner = asyncio.ensure_future(awaitable)
    try:
        done, _ = await asyncio.wait({inner}, timeout=timeout_s)
    finally:
        if not inner.done():
            inner.cancel()
    if done:
        inner.result()
    return bool(done)
