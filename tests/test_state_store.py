"""The state database opened by many connections at once, as the daemon does at its start (a
session per pair, status, the report watcher, each on a thread of its own)."""

from __future__ import annotations

import sqlite3
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from tether.sync.state import StateStore

OPENERS = 8


def open_at_once(path: Path) -> list[BaseException]:
    """Open ``OPENERS`` stores on ``path`` from as many threads, released together."""
    start = threading.Barrier(OPENERS)

    def one() -> None:
        start.wait()
        StateStore(path).close()

    with ThreadPoolExecutor(OPENERS) as pool:
        futures = [pool.submit(one) for _ in range(OPENERS)]
    return [f.exception() for f in futures if f.exception() is not None]


@pytest.mark.parametrize("round_no", range(10))
def test_a_new_database_opened_by_many_at_once(tmp_path: Path, round_no: int) -> None:
    path = tmp_path / "state.sqlite3"
    assert open_at_once(path) == []
    with StateStore(path) as store:
        store.adopt_identity("p", "host:/a:/b")
        assert store.identity("p") == "host:/a:/b"


@pytest.mark.parametrize("round_no", range(10))
def test_a_database_from_before_identities_migrates_once_under_many_openers(
    tmp_path: Path, round_no: int
) -> None:
    """Its ``pairs`` rows stay and gain an identity column; no opener fails because another
    added the column first (that error ended a pair's sync loop, silently)."""
    path = tmp_path / "state.sqlite3"
    with sqlite3.connect(path) as db:
        db.execute(
            "CREATE TABLE pairs (pair TEXT PRIMARY KEY, synced REAL NOT NULL, status TEXT NOT NULL)"
        )
        db.execute("INSERT INTO pairs VALUES ('old', 1.0, 'ok')")
    db.close()
    assert open_at_once(path) == []
    with StateStore(path) as store:
        assert store.identity("old") is None
        columns = [row[1] for row in store.db.execute("PRAGMA table_info(pairs)")]
        assert columns.count("identity") == 1
