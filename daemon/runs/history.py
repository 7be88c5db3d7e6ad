"""Run history: every run tether started, kept in SQLite beside the sync state.

A record is written when a run starts and completed when it ends, so a daemon that dies mid-run
leaves a record that says so ("running" with no end) rather than nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from ..dirs import open_private, state_dir
from ..store import OffLoop, SqliteStore
from .remote import RunOutcome, exit_status, local_log_path

DB_NAME = "runs.sqlite3"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    id TEXT PRIMARY KEY, project TEXT NOT NULL, host TEXT NOT NULL, pair TEXT NOT NULL,
    trigger TEXT, command TEXT NOT NULL, changed TEXT NOT NULL, started REAL NOT NULL,
    ended REAL, exit_code INTEGER, signal INTEGER, reason TEXT NOT NULL, log TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS runs_started ON runs (started);
"""


@dataclass
class RunRecord:
    id: str
    project: str
    host: str
    pair: str
    command: str
    log: str
    trigger: str | None = None
    changed: list[str] = field(default_factory=list)
    started: float = field(default_factory=time.time)
    ended: float | None = None
    exit_code: int | None = None
    signal: int | None = None
    reason: str = "running"

    @property
    def status(self) -> int | None:
        if self.ended is None:
            return None
        return exit_status(self.exit_code, self.signal)

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        out["status"] = self.status
        out["duration_s"] = round(self.ended - self.started, 3) if self.ended else None
        return out


class RunHistory(SqliteStore):
    """The runs table (file 0600 in the 0700 state folder)."""

    SCHEMA = _SCHEMA

    def __init__(self, path: Path | None = None) -> None:
        super().__init__(path or state_dir() / DB_NAME)

    def __enter__(self) -> RunHistory:
        return self

    def begin(self, record: RunRecord) -> None:
        with self._tx() as db:
            db.execute(
                "INSERT INTO runs VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)",
                (
                    record.id, record.project, record.host, record.pair, record.trigger,
                    record.command, json.dumps(record.changed), record.started, record.ended,
                    record.exit_code, record.signal, record.reason, record.log,
                ),
            )  # fmt: skip

    def finish(
        self, run_id: str, *, exit_code: int | None, signal: int | None, reason: str
    ) -> None:
        with self._tx() as db:
            db.execute(
                "UPDATE runs SET ended=?, exit_code=?, signal=?, reason=? WHERE id=?",
                (time.time(), exit_code, signal, reason, run_id),
            )

    def get(self, run_id: str) -> RunRecord | None:
        rows = self._select("WHERE id = ? OR id LIKE ? ORDER BY started DESC LIMIT 2",
                            (run_id, f"{run_id}%"))  # fmt: skip
        return rows[0] if len(rows) == 1 or (rows and rows[0].id == run_id) else None

    def recent(self, limit: int = 20, project: str | None = None) -> list[RunRecord]:
        if project is None:
            return self._select("ORDER BY started DESC LIMIT ?", (limit,))
        return self._select("WHERE project = ? ORDER BY started DESC LIMIT ?", (project, limit))

    def _select(self, tail: str, args: tuple[Any, ...]) -> list[RunRecord]:
        cursor = self._db.execute(
            "SELECT id, project, host, pair, command, log, trigger, changed, started, ended, "
            f"exit_code, signal, reason FROM runs {tail}",
            args,
        )
        return [_record(row) for row in cursor.fetchall()]


def _record(row: tuple[Any, ...]) -> RunRecord:
    """A RunRecord from one row of `_select`'s columns (changed is stored as JSON text)."""
    (run_id, project, host, pair, command, log, trigger, changed,
     started, ended, exit_code, signal, reason) = row  # fmt: skip
    return RunRecord(
        run_id, project, host, pair, command, log, trigger, json.loads(changed),
        started, ended, exit_code, signal, reason,
    )  # fmt: skip


def _ended(history: RunHistory, run_id: str, outcome: RunOutcome | None, reason: str) -> None:
    """Complete a record with how the run ended; without an outcome, with ``reason`` alone."""
    if outcome is None:
        history.finish(run_id, exit_code=None, signal=None, reason=reason)
    else:
        history.finish(
            run_id, exit_code=outcome.exit_code, signal=outcome.signal, reason=outcome.reason
        )


def cut_reason(exc: BaseException | None) -> str:
    """What a record says when its block ends without an outcome: "interrupted" when tether's
    side was cancelled, closed or interrupted (a client that went away, Ctrl-C, a shutdown),
    "error" otherwise (tether's side failed before the run had an outcome)."""
    if isinstance(exc, (asyncio.CancelledError, GeneratorExit, KeyboardInterrupt)):
        return "interrupted"
    return "error"


def _append(log: BinaryIO, chunk: bytes) -> None:
    log.write(chunk)
    log.flush()  # `tether logs RUN` reads it while the run goes on


class RecordedRun:
    """A run being recorded: write its output with :meth:`write`, and set :attr:`outcome` once
    it has one; :func:`record_run` writes the end."""

    def __init__(self, record: RunRecord, log: OffLoop[BinaryIO]) -> None:
        self.record = record
        self.outcome: RunOutcome | None = None
        """How the run ended; left None, the record ends as "error" or "interrupted"."""
        self._log = log

    async def write(self, chunk: bytes) -> None:
        """Append ``chunk`` to the run's log (and flush it) on the log's own thread; chunks
        land in the order they were written."""
        await self._log.run(_append, chunk)


def _new_record(
    run_id: str,
    project: str,
    host: str,
    pair: str,
    command: str,
    trigger: str | None,
    changed: list[str] | None,
) -> RunRecord:
    """A run's "running" record, its log in the state folder's runs/ (made 0700 if missing)."""
    log_path = local_log_path(state_dir(), run_id)
    return RunRecord(
        id=run_id,
        project=project,
        host=host,
        pair=pair,
        command=command,
        log=str(log_path),
        trigger=trigger,
        changed=list(changed or []),
    )


@contextlib.asynccontextmanager
async def record_run(
    run_id: str,
    *,
    project: str,
    host: str,
    pair: str,
    command: str,
    trigger: str | None = None,
    changed: list[str] | None = None,
    history_path: Path | None = None,
) -> AsyncIterator[RecordedRun]:
    """Open the run's private log and write its "running" record, for the block that follows
    the run; on leaving the block, write how it ended, whatever happened.

    Every way tether starts a run (the daemon, a trigger, `tether run`, `tether bench`) goes
    through here, so each leaves the same record. The block sets :attr:`RecordedRun.outcome`;
    one that leaves without it (an exception, a cancellation, a closed generator) ends the
    record as :func:`cut_reason` says. Only a process killed outright leaves "running" behind,
    and `tether runs` settles that with the host. The folder, the log and SQLite are all
    touched off the event loop: each has a thread of its own, so the loop never waits on disk.
    """
    record = await asyncio.to_thread(
        _new_record, run_id, project, host, pair, command, trigger, changed
    )
    async with (
        OffLoop(lambda: RunHistory(history_path)) as history,
        OffLoop(lambda: open_private(Path(record.log), "wb")) as log,
    ):
        await history.run(RunHistory.begin, record)
        recorded = RecordedRun(record, log)
        try:
            yield recorded
        except BaseException as exc:
            await history.run(_ended, record.id, recorded.outcome, cut_reason(exc))
            raise
        await history.run(_ended, record.id, recorded.outcome, cut_reason(None))
