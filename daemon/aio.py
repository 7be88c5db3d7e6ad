"""asyncio waits that never lose a cancel.

Before Python 3.12, ``asyncio.wait_for`` drops a cancel of its caller that lands in the same
turn of the loop as the awaited thing finishing: it returns that result instead, and the caller
carries on as if nobody had asked it to stop. A pair session closed at that moment went back to
waiting for changes, and the daemon closing it waited for it forever.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Awaitable, Callable


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


async def condition_within(
    condition: asyncio.Condition, predicate: Callable[[], bool], timeout_s: float | None
) -> None:
    """``condition.wait_for(predicate)`` for up to ``timeout_s`` (None: no limit), with the
    condition's lock held by the caller; :class:`TimeoutError` when the time ran out. The wait
    must stay in the caller's task (the lock is the caller's), so :func:`within` does not fit:
    on Python 3.11 and later ``asyncio.timeout`` keeps the cancel; 3.10 has only ``wait_for``."""
    if sys.version_info >= (3, 11):
        async with asyncio.timeout(timeout_s):
            await condition.wait_for(predicate)
    else:  # pragma: no cover - Python 3.10
        await asyncio.wait_for(condition.wait_for(predicate), timeout_s)
