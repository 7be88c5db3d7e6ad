"""The results store: every ``tether.bench/1`` document tether fetched, one row per point.

SQLite in :func:`~tether.dirs.state_dir` (file 0600). A document is validated with
:func:`tether_kernels.report.validate` before anything is stored: a malformed one raises
:class:`~tether.errors.BadHostData` (exit 65) and leaves the store untouched. Ingesting the same
run again replaces it, so a re-fetch never duplicates points.

Besides the points, the whole document is kept (the roofline needs its peaks), so any stored run
can be listed, exported as CSV, compared with another or drawn with :mod:`tether_kernels.plot`.
"""

from __future__ import annotations

import csv
import io
import json
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ..dirs import state_dir
from ..errors import BadHostData, TetherError, UsageError
from ..store import SqliteStore

DB_NAME = "results.sqlite3"
REGRESSION = 0.05
"""B is a regression when its median time is more than 5% above A's."""

_SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    run_id TEXT PRIMARY KEY, created TEXT NOT NULL, ingested REAL NOT NULL, host TEXT NOT NULL,
    device TEXT NOT NULL, simulator INTEGER NOT NULL, source TEXT NOT NULL, doc TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS runs_ingested ON runs (ingested);
CREATE TABLE IF NOT EXISTS points (
    run_id TEXT NOT NULL REFERENCES runs (run_id) ON DELETE CASCADE, idx INTEGER NOT NULL,
    family TEXT, kernel TEXT NOT NULL, variant TEXT NOT NULL, precision TEXT NOT NULL,
    compute_precision TEXT, shape TEXT NOT NULL, time_median REAL, time_min REAL, time_max REAL,
    time_n INTEGER, flops INTEGER, bytes INTEGER, flops_per_s REAL, bytes_per_s REAL, ai REAL,
    roofline_fraction REAL, bound TEXT, verified INTEGER NOT NULL, simulated INTEGER NOT NULL,
    max_rel_err REAL, error TEXT, PRIMARY KEY (run_id, idx)
);
"""


@dataclass(frozen=True)
class Point:
    """One stored result point (a row of ``points`` joined with its run)."""

    run_id: str
    created: str
    host: str
    device: str
    simulated: bool
    kernel: str
    variant: str
    precision: str
    shape: str
    time_median: float | None
    time_min: float | None
    time_max: float | None
    flops_per_s: float | None
    bytes_per_s: float | None
    ai: float | None
    roofline_fraction: float | None
    verified: bool
    family: str | None = None
    bound: str | None = None

    @property
    def label(self) -> str:
        return f"{self.kernel}/{self.variant}" if self.variant else self.kernel

    @property
    def key(self) -> tuple[str, str, str, str]:
        """What identifies "the same benchmark" across runs."""
        return (self.kernel, self.variant, self.precision, self.shape)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class RunInfo:
    run_id: str
    created: str
    host: str
    device: str
    simulator: bool
    points: int
    source: str


@dataclass(frozen=True)
class Comparison:
    """One benchmark present in both runs: ``speedup`` = time(A) / time(B) (>1: B is faster)."""

    kernel: str
    variant: str
    precision: str
    shape: str
    time_a: float | None
    time_b: float | None
    speedup: float | None
    regression: bool
    note: str = ""

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


CSV_FIELDS = (
    "run_id", "created", "host", "device", "simulated", "kernel", "variant", "precision",
    "shape", "time_median", "time_min", "time_max", "flops_per_s", "bytes_per_s", "ai",
    "roofline_fraction", "verified",
)  # fmt: skip


def check_document(doc: Any, origin: str) -> dict[str, Any]:
    """``doc`` if it is a valid ``tether.bench/1`` document, else :class:`BadHostData`."""
    from tether_kernels.report import validate

    problems = validate(doc)
    if problems:
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise BadHostData(
            f"{origin} is not a tether.bench/1 document: {problems[0]}{more}",
            "nothing was stored; check the kernels version on the host",
        )
    return doc


def load_document(data: bytes | str, origin: str) -> dict[str, Any]:
    """Parse and validate the bytes of a results file (:class:`BadHostData` when malformed)."""
    try:
        doc = json.loads(data)
    except (UnicodeDecodeError, ValueError) as exc:
        raise BadHostData(
            f"{origin} is not JSON: {exc}", "nothing was stored; look at the file on the host"
        ) from None
    return check_document(doc, origin)


def _shape(value: Sequence[int]) -> str:
    return "x".join(str(int(v)) for v in value)


class ResultsStore(SqliteStore):
    """The results database (file 0600 in the user's 0700 state folder)."""

    SCHEMA = "PRAGMA foreign_keys=ON;\n" + _SCHEMA

    def __init__(self, path: Path | None = None) -> None:
        super().__init__(path or state_dir() / DB_NAME)

    def __enter__(self) -> ResultsStore:
        return self

    # -------------------------------------------------------------- writing

    def ingest(
        self, doc: Any, *, run_id: str, host: str, source: str = "", validate: bool = True
    ) -> int:
        """Store one document (replacing an earlier ingest of ``run_id``); returns its points."""
        if validate:
            check_document(doc, source or f"run {run_id}")
        rows = []
        for i, r in enumerate(doc["results"]):
            t = r.get("time_s") or {}
            rows.append(
                (
                    run_id, i, r.get("family"), r["kernel"], r["variant"], r["precision"],
                    r.get("compute_precision"), _shape(r["shape"]), t.get("median"),
                    t.get("min"), t.get("max"), t.get("n"), r["flops"], r["bytes"],
                    r["flops_per_s"], r["bytes_per_s"], r["ai"], r["roofline_fraction"],
                    r["bound"], int(bool(r["verified"])), int(bool(r["simulated"])),
                    r["max_rel_err"], r.get("error"),
                )
            )  # fmt: skip
        with self._tx() as db:
            db.execute("DELETE FROM points WHERE run_id = ?", (run_id,))
            db.execute("DELETE FROM runs WHERE run_id = ?", (run_id,))
            db.execute(
                "INSERT INTO runs VALUES (?,?,?,?,?,?,?,?)",
                (
                    run_id, str(doc["created"]), time.time(), host,
                    str(doc["device"].get("name")), int(bool(doc["simulator"])), source,
                    json.dumps(doc, allow_nan=False),
                ),
            )  # fmt: skip
            db.executemany(f"INSERT INTO points VALUES ({','.join('?' * 23)})", rows)
        return len(rows)

    # -------------------------------------------------------------- reading

    def runs(self, limit: int | None = None) -> list[RunInfo]:
        """Stored runs, newest first."""
        sql = (
            "SELECT r.run_id, r.created, r.host, r.device, r.simulator, "
            "(SELECT COUNT(*) FROM points p WHERE p.run_id = r.run_id), r.source "
            "FROM runs r ORDER BY r.ingested DESC, r.run_id DESC"
        )
        if limit is not None:
            sql += f" LIMIT {int(limit)}"
        return [RunInfo(a, b, c, d, bool(e), f, g) for a, b, c, d, e, f, g in self._db.execute(sql)]

    def resolve(self, ref: str | None = None) -> str:
        """A run id from ``ref``: an id, a unique prefix of one, or None/"latest" (newest).

        Raises:
            UsageError: nothing stored, no such run, or an ambiguous prefix.
        """
        if ref in (None, "", "latest"):
            latest = self.runs(1)
            if not latest:
                raise UsageError("no results stored yet", "run `tether bench` first")
            return latest[0].run_id
        assert ref is not None
        found = [
            row[0]
            for row in self._db.execute(
                "SELECT run_id FROM runs WHERE run_id = ? OR run_id LIKE ? ESCAPE '\\' "
                "ORDER BY run_id",
                (ref, ref.replace("%", r"\%").replace("_", r"\_") + "%"),
            )
        ]
        if ref in found:
            return ref
        if len(found) == 1:
            return found[0]
        if not found:
            raise UsageError(f"no stored run {ref!r}", "see `tether results --list`")
        raise UsageError(f"run {ref!r} is ambiguous: {', '.join(found[:5])}", "give more of it")

    def points(self, run_id: str) -> list[Point]:
        cur = self._db.execute(
            "SELECT p.run_id, r.created, r.host, r.device, p.simulated, p.kernel, p.variant, "
            "p.precision, p.shape, p.time_median, p.time_min, p.time_max, p.flops_per_s, "
            "p.bytes_per_s, p.ai, p.roofline_fraction, p.verified, p.family, p.bound "
            "FROM points p JOIN runs r ON r.run_id = p.run_id WHERE p.run_id = ? ORDER BY p.idx",
            (run_id,),
        )
        out = []
        for row in cur:
            values = list(row)
            values[4] = bool(values[4])
            values[16] = bool(values[16])
            out.append(Point(*values))
        return out

    def document(self, run_id: str) -> dict[str, Any]:
        row = self._db.execute("SELECT doc FROM runs WHERE run_id = ?", (run_id,)).fetchone()
        if row is None:
            raise UsageError(f"no stored run {run_id!r}", "see `tether results --list`")
        return json.loads(row[0])

    def compare(self, run_a: str, run_b: str) -> list[Comparison]:
        """Per benchmark in both runs: speedup = time(A)/time(B); >5% slower is a regression."""
        a = {p.key: p for p in self.points(run_a)}
        out = []
        for p in self.points(run_b):
            q = a.get(p.key)
            if q is None:
                continue
            ta, tb = q.time_median, p.time_median
            speedup = ta / tb if ta and tb else None
            regression = bool(ta and tb and tb > ta * (1 + REGRESSION))
            notes = []
            if not (q.verified and p.verified):
                notes.append("check failed")
            if q.simulated or p.simulated:
                notes.append("simulated")
            out.append(
                Comparison(
                    p.kernel, p.variant, p.precision, p.shape, ta, tb, speedup, regression,
                    ", ".join(notes),
                )
            )  # fmt: skip
        return out


def ingest_file(
    path: str | Path, *, run_id: str, host: str, store: ResultsStore | None = None
) -> int:
    """Validate and store the results file ``path`` fetched from ``host``; returns its points.

    For the trigger runner and ``tether bench``: call it after the file landed locally.

    Raises:
        BadHostData: unreadable, not JSON, or not a valid ``tether.bench/1`` document (nothing
            stored).
    """
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise BadHostData(f"{path}: cannot read the fetched results: {exc.strerror}") from None
    doc = load_document(data, str(path))
    if store is not None:
        return store.ingest(doc, run_id=run_id, host=host, source=str(path), validate=False)
    with ResultsStore() as own:
        return own.ingest(doc, run_id=run_id, host=host, source=str(path), validate=False)


def to_csv(points: Sequence[Point]) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(CSV_FIELDS)
    for p in points:
        row = p.to_json()
        writer.writerow(["" if row[f] is None else row[f] for f in CSV_FIELDS])
    return buf.getvalue()


def plot_runs(docs: Mapping[str, Mapping[str, Any]], out: str | Path) -> dict[str, int]:
    """Draw the runs (run id → document) on one roofline with :mod:`tether_kernels.plot`.

    Simulated results are never drawn (kernels.plot skips them and says how many)."""
    from tether_kernels import plot

    suffix = Path(out).suffix.lower()
    if suffix not in (".png", ".svg", ".pdf"):
        raise UsageError(f"--plot must end in .png, .svg or .pdf, got {str(out)!r}")
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    try:
        return plot.render(list(docs.values()), out, labels=list(docs))
    except ImportError as exc:
        raise TetherError(
            f"cannot plot: {exc}", "install matplotlib (pip install 'tether[gpu]')"
        ) from None


__all__ = [
    "Comparison",
    "Point",
    "ResultsStore",
    "RunInfo",
    "check_document",
    "ingest_file",
    "load_document",
    "plot_runs",
    "to_csv",
]
