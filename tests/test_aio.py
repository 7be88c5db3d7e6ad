"""tether.aio: timeouts that never swallow their caller's cancel."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import pytest
from tether.aio import condition_within, within


async def cancelled_as_it_ends(
    wait: Callable[[], Awaitable[None]], end_it: Callable[[], Awaitable[None]]
) -> list[str]:
    """Start ``wait`` in a task, then end what it waits for and cancel the task in the same
    turn of the loop; the task must end cancelled. What it did after its wait (nothing, when
    the cancel was kept)."""
    after: list[str] = []

    async def waiter() -> None:
        await wait()
        after.append("carried on")
        await asyncio.sleep(3600)

    task = asyncio.create_task(waiter())
    await asyncio.sleep(0)  # it is waiting now
    await end_it()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(task, 5)
    return after


def test_a_cancel_that_lands_as_the_wait_ends_is_kept() -> None:
    """``asyncio.wait_for`` before 3.12 returned here instead, and a pair session went on
    waiting for its next change while the daemon closing it waited for it."""

    async def main() -> None:
        event = asyncio.Event()

        async def wait() -> None:
            await within(event.wait(), 5)

        async def end_it() -> None:
            event.set()

        assert await cancelled_as_it_ends(wait, end_it) == []

    asyncio.run(main())


def test_a_condition_wait_keeps_a_cancel_that_lands_as_it_is_notified() -> None:
    """The link's waits (``wait_up``, ``wait_agent``) hold the condition's lock in the caller's
    task; a close that cancels one as the link comes up must end it, not let it carry on."""

    async def main() -> None:
        changed = asyncio.Condition()
        ready: list[bool] = []

        async def wait() -> None:
            async with changed:
                await condition_within(changed, lambda: bool(ready), 5)

        async def end_it() -> None:
            async with changed:
                ready.append(True)
                changed.notify_all()

        assert await cancelled_as_it_ends(wait, end_it) == []

    asyncio.run(main())


def test_it_says_whether_the_wait_ended_in_time() -> None:
    async def main() -> None:
        event = asyncio.Event()
        assert await within(event.wait(), 0.01) is False
        event.set()
        assert await within(event.wait(), 5) is True

        async def fails() -> None:
            raise ValueError("its own error")

        with pytest.raises(ValueError, match="its own error"):
            await within(fails(), 5)

    asyncio.run(main())


def test_a_condition_wait_times_out() -> None:
    async def main() -> None:
        changed = asyncio.Condition()
        async with changed:
            with pytest.raises(asyncio.TimeoutError):
                await condition_within(changed, lambda: False, 0.01)
            await condition_within(changed, lambda: True, None)

    asyncio.run(main())
