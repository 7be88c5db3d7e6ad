"""A private SQLite file in tether's state folder, shared by every store tether keeps.

The file is created 0600 (in a 0700 folder) *before* SQLite opens it, so there is no moment when
another user could read it; WAL lets the daemon and a CLI read and write side by side.

Coroutines use a store through :class:`OffLoop`, never directly: a write can wait up to 30 s on
another process's lock, and the event loop must not wait with it.
"""

from __future__ import annotations

import asyncio
import fcntl
import os
import sqlite3
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Concatenate, Generic, ParamSpec, Protocol, TypeVar


def open_private_db(
    path: Path,
    schema: str,
    *,
    autocommit: bool = True,
    migrate: Callable[[sqlite3.Connection], None] | None = None,
) -> sqlite3.Connection:
    """Open (creating it user-only) the database at ``path``, apply ``schema``, then
    ``migrate`` (bring an older file's tables up to date).

    The daemon opens several connections at once (a session per pair, status, the report
    watcher) and a CLI may open one beside it. Setting WAL and creating tables on a new file
    from two connections at once can fail at once with "database is locked" (a connection whose
    snapshot went stale cannot wait for the lock), and a migration checked by two can be made
    twice: so the schema step runs under an exclusive ``flock`` on a lock file beside the
    database, held for those few statements only."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    if not path.exists():
        os.close(os.open(path, os.O_CREAT | os.O_WRONLY, 0o600))
    db = sqlite3.connect(path, timeout=30.0, isolation_level=None if autocommit else "DEFERRED")
    try:
        with _schema_lock(path):
            db.execute("PRAGMA journal_mode=WAL")
            db.executescript(schema)
            if migrate is not None:
                migrate(db)
    except BaseException:
        db.close()
        raise
    os.chmod(path, 0o600)
    return db


@contextmanager
def _schema_lock(path: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``<path>.lock`` (created 0600) for the block."""
    fd = os.open(path.with_name(path.name + ".lock"), os.O_CREAT | os.O_RDWR, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


class SqliteStore:
    """One connection to one store; a context manager; explicit write transactions."""

    SCHEMA = ""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._db = open_private_db(path, self.SCHEMA)

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> SqliteStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield self._db
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")


class _Closable(Protocol):
    def close(self) -> None: ...


S = TypeVar("S", bound=_Closable)
R = TypeVar("R")
P = ParamSpec("P")


class OffLoop(Generic[S]):
    """A store opened, used and closed on a thread of its own, for coroutines.

    ``async with OffLoop(RunHistory) as history: await history.run(RunHistory.begin, record)``.
    One single-thread executor per store rather than ``check_same_thread=False`` and a lock: the
    connection never leaves the thread that made it, so SQLite's own check still fails loudly if
    a call slips back onto the loop, and the store's calls keep their order without a lock.
    """

    def __init__(self, factory: Callable[[], S]) -> None:
        self._factory = factory
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="tether-store")
        self._store: S | None = None

    async def run(
        self, call: Callable[Concatenate[S, P], R], *args: P.args, **kwargs: P.kwargs
    ) -> R:
        """``call(store, *args, **kwargs)`` on the store's thread; the loop goes on meanwhile.
        The arguments are bound now, so a call made in a loop sees that round's values."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(
            self._thread, lambda: call(self._opened(), *args, **kwargs)
        )

    def _opened(self) -> S:
        if self._store is None:
            self._store = self._factory()
        return self._store

    async def __aenter__(self) -> OffLoop[S]:
        await self.run(lambda store: None)  # open it now: a broken store fails at the `with`
        return self

    async def __aexit__(self, *exc: object) -> None:
        try:
            await self.run(lambda store: store.close())
        finally:
            self._thread.shutdown(wait=False)
