"""The sync engine's memory: per-pair bases, digest caches and open conflicts, in one SQLite file.

The file lives in the user's state folder (``platformdirs.user_state_dir("tether")``, or
``$TETHER_STATE_DIR``), folder 0700, file 0600. A pair is keyed by its tether.toml path and name,
so two projects with a pair called "code" never share a base. Every save is one transaction: a
sync killed while saving leaves the previous base intact, never half of each.

The base belongs to the pair's identity (host and both roots, :mod:`.identity`), stamped in the
``pairs`` table: when the identity changes, :meth:`StateStore.adopt_identity` forgets everything
agreed for the old one. A base from before identities were recorded has none, and is forgotten
the same way (its next sync is a first sync, which never deletes). A halt is kept in ``halts``
with its reason, so it outlives the daemon.

Coroutines reach the store through :func:`off_loop` (its calls run on a thread of its own); a
one-shot command that has no event loop may use a :class:`StateStore` directly.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import AsyncIterator, Iterable, Iterator, Sequence
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..dirs import state_dir
from ..store import OffLoop, open_private_db
from .entry import Entry, EntryKind, Snapshot
from .paths import from_stored, to_stored
from .scan import DigestCache

_SYNCABLE = "kind IN ('file', 'dir', 'symlink')"
DB_NAME = "sync.sqlite3"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS base (
    pair TEXT NOT NULL, path TEXT NOT NULL, kind TEXT NOT NULL, size INTEGER NOT NULL,
    mtime_ns INTEGER NOT NULL, mode INTEGER NOT NULL, digest TEXT NOT NULL, target TEXT NOT NULL,
    PRIMARY KEY (pair, path)
) WITHOUT ROWID;
DROP TABLE IF EXISTS digests;
CREATE TABLE IF NOT EXISTS file_digests (
    pair TEXT NOT NULL, path TEXT NOT NULL, size INTEGER NOT NULL, mtime_ns INTEGER NOT NULL,
    ino INTEGER NOT NULL, ctime_ns INTEGER NOT NULL, digest TEXT NOT NULL,
    PRIMARY KEY (pair, path)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS conflicts (
    pair TEXT NOT NULL, path TEXT NOT NULL, copy TEXT NOT NULL, winner TEXT NOT NULL,
    copy_sides TEXT NOT NULL, detail TEXT NOT NULL, created REAL NOT NULL,
    PRIMARY KEY (pair, path)
);
CREATE TABLE IF NOT EXISTS rules (
    pair TEXT PRIMARY KEY, wire TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS remote_scans (
    pair TEXT PRIMARY KEY, root TEXT NOT NULL, token TEXT NOT NULL, entries TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS pairs (
    pair TEXT PRIMARY KEY, synced REAL NOT NULL, status TEXT NOT NULL, identity TEXT
);
CREATE TABLE IF NOT EXISTS halts (
    pair TEXT PRIMARY KEY, status TEXT NOT NULL, message TEXT NOT NULL, plan TEXT NOT NULL,
    accepted INTEGER NOT NULL, created REAL NOT NULL
);
"""
_PER_PAIR = ("base", "file_digests", "rules", "remote_scans", "halts")
"""What was agreed or learnt for one identity of a pair (conflict records stay: their copies
are still on disk)."""


def pair_key(config_path: Path | str, pair_name: str) -> str:
    return f"{Path(config_path).resolve()}::{pair_name}"


@dataclass(frozen=True)
class Halt:
    """A pair stopped by a safety check, as stored (it survives restarts)."""

    status: str
    message: str
    plan: str
    """The fingerprint of the deletions it halted (:func:`.safety.plan_fingerprint`); "" for a
    root that vanished, emptied or changed type (judged again on every sync)."""
    accepted: bool
    """The user accepted it (`tether resume`): the next sync goes ahead with the same plan."""


@dataclass(frozen=True)
class ConflictRecord:
    """An unresolved conflict as ``tether conflicts`` shows it."""

    pair: str
    path: str
    copy: str
    winner: str
    copy_sides: tuple[str, ...]
    detail: str
    created: float


@asynccontextmanager
async def off_loop(store: OffLoop[StateStore] | None = None) -> AsyncIterator[OffLoop[StateStore]]:
    """``store`` (a caller's, left open), or the user's state database opened for this block
    alone: either way used through its own thread, never on the event loop."""
    if store is not None:
        yield store
        return
    async with OffLoop(StateStore) as own:
        yield own


def _add_identity_column(db: sqlite3.Connection) -> None:
    """Give a database from before identities its ``identity`` column (none recorded). Run by
    :func:`~tether.store.open_private_db` under its schema lock: two connections that both saw
    the column missing would both add it, and the second would fail ("duplicate column name"),
    which ended that pair's sync loop."""
    if "identity" not in _columns(db, "pairs"):
        with db:
            db.execute("ALTER TABLE pairs ADD COLUMN identity TEXT")


def _columns(db: sqlite3.Connection, table: str) -> set[str]:
    return {row[1] for row in db.execute(f"PRAGMA table_info({table})")}


class StateStore:
    """One connection to the state database. Use as a context manager, or call :meth:`close`."""

    def __init__(self, path: Path | None = None) -> None:
        self.path = path or state_dir() / DB_NAME
        self.db = open_private_db(
            self.path, _SCHEMA, autocommit=False, migrate=_add_identity_column
        )
        self.db.execute("PRAGMA synchronous=NORMAL")

    def __enter__(self) -> StateStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.db.close()

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        with self.db:
            yield self.db

    # -- bases ------------------------------------------------------------------------------------

    def load_base(self, pair: str) -> Snapshot:
        rows = self.db.execute(
            "SELECT path, kind, size, mtime_ns, mode, digest, target FROM base WHERE pair = ?",
            (pair,),
        )
        kinds = {k.value: k for k in EntryKind}
        return {
            from_stored(path): Entry(kinds[kind], size, mtime_ns, mode, digest, from_stored(target))
            for path, kind, size, mtime_ns, mode, digest, target in rows
        }

    def load_base_scope(self, pair: str, roots: Iterable[str]) -> Snapshot:
        """The part of the base an incremental sync of ``roots`` needs: every row at or below a
        root, and the roots' ancestors (so the snapshot is a tree)."""
        kinds = {k.value: k for k in EntryKind}
        out: Snapshot = {}
        for path, kind, size, mtime_ns, mode, digest, target in self._scoped(
            "SELECT path, kind, size, mtime_ns, mode, digest, target FROM base", pair, roots, True
        ):
            out[from_stored(path)] = Entry(
                kinds[kind], size, mtime_ns, mode, digest, from_stored(target)
            )
        return out

    def count_syncable(self, pair: str) -> int:
        """Files, folders and links in the base (a scan of the pair's rows: call it rarely)."""
        query = f"SELECT count(*) FROM base WHERE pair = ? AND {_SYNCABLE}"
        return int(self.db.execute(query, (pair,)).fetchone()[0])

    def has_base(self, pair: str) -> bool:
        """Is there any file, folder or link in the base? (Stops at the first one.)"""
        query = f"SELECT 1 FROM base WHERE pair = ? AND {_SYNCABLE} LIMIT 1"
        return self.db.execute(query, (pair,)).fetchone() is not None

    def _scoped(
        self, select: str, pair: str, roots: Iterable[str], ancestors: bool
    ) -> Iterator[tuple[Any, ...]]:
        """Rows of ``select`` for ``pair`` whose path is a root or below one ('/' + 1 is '0',
        so ``path >= 'r/' AND path < 'r0'`` is exactly the subtree, with any characters in r;
        r in its stored form, see :func:`~tether.sync.paths.to_stored`).

        The root and its subtree are two queries: SQLite plans ``path = ? OR (range)`` as a
        scan of all the pair's rows (~9 ms at 20,000), each half alone as a primary-key search.
        """
        exact = " WHERE pair = ? AND path = ?"
        below = " WHERE pair = ? AND path >= ? AND path < ?"
        wanted: set[str] = set()
        for root in map(to_stored, roots):
            yield from self.db.execute(select + exact, (pair, root))
            yield from self.db.execute(select + below, (pair, root + "/", root + "0"))
            if ancestors:
                parts = root.split("/")
                wanted.update("/".join(parts[:i]) for i in range(1, len(parts)))
        for path in sorted(wanted):
            yield from self.db.execute(select + " WHERE pair = ? AND path = ?", (pair, path))

    def save_base(
        self, pair: str, old: Snapshot, new: Snapshot, *, status: str = "ok"
    ) -> list[str]:
        """Write ``new`` as the pair's base, touching only the rows that differ from ``old``
        (rows of paths in neither stay as they are). Returns the paths whose base moved."""
        gone = [p for p in old.keys() - new.keys()]
        changed = [p for p, e in new.items() if old.get(p) != e]
        rows = []
        for p in changed:
            e = new[p]
            stored = (to_stored(p), e.kind.value, e.size, e.mtime_ns, e.mode, e.digest)
            rows.append((pair, *stored, to_stored(e.target)))
        with self.transaction() as db:
            db.executemany(
                "DELETE FROM base WHERE pair = ? AND path = ?", [(pair, to_stored(p)) for p in gone]
            )
            db.executemany("INSERT OR REPLACE INTO base VALUES (?, ?, ?, ?, ?, ?, ?, ?)", rows)
            db.execute(
                "INSERT INTO pairs (pair, synced, status) VALUES (?, ?, ?) ON CONFLICT (pair) "
                "DO UPDATE SET synced = excluded.synced, status = excluded.status",
                (pair, time.time(), status),
            )
        return gone + changed

    # -- identity ---------------------------------------------------------------------------------

    def identity(self, pair: str) -> str | None:
        """The identity the pair's state was agreed for (None: none recorded)."""
        row = self.db.execute("SELECT identity FROM pairs WHERE pair = ?", (pair,)).fetchone()
        return row[0] if row else None

    def adopt_identity(self, pair: str, identity: str) -> None:
        """Forget the base, caches and halt agreed for another identity; record ``identity``."""
        with self.transaction() as db:
            for table in _PER_PAIR:
                db.execute(f"DELETE FROM {table} WHERE pair = ?", (pair,))
            db.execute(
                "INSERT INTO pairs (pair, synced, status, identity) VALUES (?, 0, 'new', ?) "
                "ON CONFLICT (pair) DO UPDATE SET identity = excluded.identity",
                (pair, identity),
            )

    # -- halts ------------------------------------------------------------------------------------

    def halt(self, pair: str) -> Halt | None:
        row = self.db.execute(
            "SELECT status, message, plan, accepted FROM halts WHERE pair = ?", (pair,)
        ).fetchone()
        return Halt(row[0], row[1], row[2], bool(row[3])) if row else None

    def record_halt(self, pair: str, status: str, message: str, plan: str = "") -> None:
        """Keep a halt (not accepted) until the user accepts it or a sync goes through."""
        with self.transaction() as db:
            db.execute(
                "INSERT OR REPLACE INTO halts VALUES (?, ?, ?, ?, 0, ?)",
                (pair, status, message, plan, time.time()),
            )

    def accept_halt(self, pair: str) -> bool:
        """The user accepts the stored halt's plan. False when there was none."""
        with self.transaction() as db:
            cur = db.execute("UPDATE halts SET accepted = 1 WHERE pair = ?", (pair,))
        return cur.rowcount > 0

    def clear_halt(self, pair: str) -> None:
        with self.transaction() as db:
            db.execute("DELETE FROM halts WHERE pair = ?", (pair,))

    # -- ignore rules last sent to the host (lets the remote scan start before the local one) --

    def load_rules(self, pair: str) -> list[tuple[str, bool]] | None:
        """The ignore rules last sent to the host, ``[(regex, ignored)]``; None if none (or if
        the stored ones are not rules: they are only a head start, sent again after the scan)."""
        row = self.db.execute("SELECT wire FROM rules WHERE pair = ?", (pair,)).fetchone()
        raw = json.loads(row[0]) if row else None
        if not isinstance(raw, list) or not all(
            isinstance(r, list) and len(r) == 2 and isinstance(r[0], str) and isinstance(r[1], bool)
            for r in raw
        ):
            return None
        return [(r[0], r[1]) for r in raw]

    def save_rules(self, pair: str, wire: Sequence[tuple[str, bool]]) -> None:
        with self.transaction() as db:
            db.execute("INSERT OR REPLACE INTO rules VALUES (?, ?)", (pair, json.dumps(wire)))

    # -- the host's last scan, named by the host's token (lets the next scan send only changes)

    def load_remote_scan(self, pair: str, root: str) -> tuple[str, Snapshot] | None:
        row = self.db.execute(
            "SELECT root, token, entries FROM remote_scans WHERE pair = ?", (pair,)
        ).fetchone()
        if row is None or row[0] != root:
            return None
        kinds = {k.value: k for k in EntryKind}
        try:
            rows = json.loads(row[2])
            return row[1], {
                path: Entry(kinds[kind], size, mtime_ns, mode, digest, target, problem)
                for path, (kind, size, mtime_ns, mode, digest, target, problem) in rows.items()
            }
        except (ValueError, KeyError, TypeError, AttributeError):
            return None  # unreadable: the next scan is a full one

    def save_remote_scan(self, pair: str, root: str, token: str, entries: Snapshot) -> None:
        data = {
            p: (e.kind.value, e.size, e.mtime_ns, e.mode, e.digest, e.target, e.problem)
            for p, e in entries.items()
        }
        with self.transaction() as db:
            db.execute(
                "INSERT OR REPLACE INTO remote_scans VALUES (?, ?, ?, ?)",
                (pair, root, token, json.dumps(data, separators=(",", ":"))),
            )

    def forget_remote_scan(self, pair: str) -> None:
        with self.transaction() as db:
            db.execute("DELETE FROM remote_scans WHERE pair = ?", (pair,))

    # -- digest cache -----------------------------------------------------------------------------

    # (The table was ``digests`` before ctime_ns joined its key: the old one is dropped, which
    # costs one rehash of each pair, never a change missed.)

    def load_digests(self, pair: str) -> DigestCache:
        rows = self.db.execute(
            "SELECT path, size, mtime_ns, ino, ctime_ns, digest FROM file_digests WHERE pair = ?",
            (pair,),
        )
        return {from_stored(path): tuple(row) for path, *row in rows}

    def load_digests_scope(self, pair: str, roots: Iterable[str]) -> DigestCache:
        """The digest cache rows at or below ``roots``."""
        rows = self._scoped(
            "SELECT path, size, mtime_ns, ino, ctime_ns, digest FROM file_digests",
            pair,
            roots,
            False,
        )
        return {from_stored(path): tuple(row) for path, *row in rows}

    def save_digests(self, pair: str, old: DigestCache, new: DigestCache) -> None:
        gone = [(pair, to_stored(p)) for p in old.keys() - new.keys()]
        changed = [(pair, to_stored(p), *v) for p, v in new.items() if old.get(p) != v]
        if not gone and not changed:
            return
        with self.transaction() as db:
            db.executemany("DELETE FROM file_digests WHERE pair = ? AND path = ?", gone)
            db.executemany(
                "INSERT OR REPLACE INTO file_digests VALUES (?, ?, ?, ?, ?, ?, ?)", changed
            )

    # -- conflicts --------------------------------------------------------------------------------

    def add_conflicts(self, records: list[ConflictRecord]) -> None:
        with self.transaction() as db:
            db.executemany(
                "INSERT OR REPLACE INTO conflicts VALUES (?, ?, ?, ?, ?, ?, ?)",
                [
                    (
                        r.pair,
                        to_stored(r.path),
                        to_stored(r.copy),
                        r.winner,
                        json.dumps(list(r.copy_sides)),
                        r.detail,
                        r.created,
                    )
                    for r in records
                ],
            )

    def conflict_counts(self) -> dict[str, int]:
        """How many conflicts each pair has unresolved (one query for `tether status`)."""
        rows = self.db.execute("SELECT pair, count(*) FROM conflicts GROUP BY pair")
        return {pair: int(count) for pair, count in rows}

    def conflicts(self, pair: str | None = None) -> list[ConflictRecord]:
        query = "SELECT pair, path, copy, winner, copy_sides, detail, created FROM conflicts"
        rows = (
            self.db.execute(query + " WHERE pair = ? ORDER BY path", (pair,))
            if pair is not None
            else self.db.execute(query + " ORDER BY pair, path")
        )
        return [
            ConflictRecord(
                p,
                from_stored(path),
                from_stored(copy),
                winner,
                tuple(json.loads(sides)),
                detail,
                created,
            )
            for p, path, copy, winner, sides, detail, created in rows
        ]

    def drop_conflict(self, pair: str, path: str) -> None:
        with self.transaction() as db:
            db.execute("DELETE FROM conflicts WHERE pair = ? AND path = ?", (pair, to_stored(path)))
