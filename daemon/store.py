"""A private SQLite file in tether's state folder, shared by every store tether keeps.

The file is created 0600 (in a 0700 folder) *before* SQLite opens it, so there is no moment when
another user could read it; WAL lets the daemon and a CLI read and write side by side.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def open_private_db(path: Path, schema: str, *, autocommit: bool = True) -> sqlite3.Connection:
    """Open (creating it user-only) the database at ``path`` and apply ``schema``."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    if not path.exists():
        os.close(os.open(path, os.O_CREAT | os.O_WRONLY, 0o600))
    db = sqlite3.connect(path, timeout=30.0, isolation_level=None if autocommit else "DEFERRED")
    db.execute("PRAGMA journal_mode=WAL")
    db.executescript(schema)
    os.chmod(path, 0o600)
    return db


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
