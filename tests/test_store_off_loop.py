"""SQLite work leaves the event loop: a store used from coroutines runs on a thread of its own,
so a write waiting on another process's lock (up to 30 s) never stops the loop."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from pathlib import Path

import pytest
from tether.runs.history import RunHistory, RunRecord
from tether.store import OffLoop


def record(run_id: str) -> RunRecord:
    return RunRecord(id=run_id, project="p", host="h", pair="c", command="true", log="x.log")


def test_a_write_waiting_on_a_lock_leaves_the_loop_running(tmp_path: Path) -> None:
    db = tmp_path / "runs.db"
    RunHistory(db).close()
    other = sqlite3.connect(db, isolation_level=None)  # another process's writer, in effect
    other.execute("BEGIN IMMEDIATE")

    async def body() -> list[str]:
        async with OffLoop(lambda: RunHistory(db)) as history:
            write = asyncio.create_task(history.run(lambda h: h.begin(record("r-1"))))
            ticks = 0
            while ticks < 5:  # the loop goes round while the write waits on the lock
                await asyncio.sleep(0)
                ticks += 1
            assert not write.done()
            other.execute("COMMIT")
            await asyncio.wait_for(write, 30)
            return [r.id for r in await history.run(lambda h: h.recent())]

    try:
        assert asyncio.run(body()) == ["r-1"]
    finally:
        other.close()


def test_the_connection_stays_on_the_store_thread(tmp_path: Path) -> None:
    """The connection never crosses threads, so SQLite's own check still refuses a call that
    slips back onto the loop's thread."""

    async def body() -> None:
        async with OffLoop(lambda: RunHistory(tmp_path / "runs.db")) as history:
            thread = await history.run(lambda h: threading.get_ident())
            assert thread != threading.get_ident()
            store = await history.run(lambda h: h)
            with pytest.raises(sqlite3.ProgrammingError, match="thread"):
                store.recent()

    asyncio.run(body())
