"""`tether results [RUN...] [--list] [--csv] [--json] [--plot FILE] [--compare A B]`

Stored benchmark results (from `tether bench` and triggers). Without RUN: the latest run. RUN is a
run id or a unique prefix of one. ``--plot`` overlays the chosen runs on one roofline;
``--compare A B`` shows per-kernel speedup of B over A and flags regressions (B >5% slower).
"""

from __future__ import annotations

import argparse
import sys

from rich.console import Console
from rich.table import Table

from ...console import console, print_json
from ...errors import UsageError
from ...results.store import REGRESSION, Point, ResultsStore, plot_runs, to_csv


def add_arguments(p: argparse.ArgumentParser, verb: str) -> None:
    p.usage = "tether results [RUN...] [--list] [--csv | --json] [--plot FILE] [--compare RUN RUN]"
    p.add_argument("runs", nargs="*", metavar="RUN", help="run ids or prefixes (default: latest)")
    p.add_argument("--list", action="store_true", help="list the stored runs")
    out = p.add_mutually_exclusive_group()
    out.add_argument("--csv", action="store_true", help="print the points as CSV")
    out.add_argument("--json", action="store_true", help="print JSON")
    p.add_argument("--plot", metavar="FILE", help="draw the runs on one roofline (.png/.svg/.pdf)")
    p.add_argument(
        "--compare", nargs=2, metavar=("A", "B"), help="speedup of run B over run A per kernel"
    )
    p.set_defaults(handler=run)


def _num(v: float | None, scale: float = 1.0, fmt: str = ".1f") -> str:
    return "-" if v is None else format(v / scale, fmt)


def _time(v: float | None) -> str:
    if v is None:
        return "-"
    return f"{v * 1e6:.1f} us" if v < 1e-3 else f"{v * 1e3:.3f} ms"


def points_table(points: list[Point], title: str) -> Table:
    table = Table(title=title)
    for name in ("kernel", "precision", "shape", "time (median)", "GFLOP/s", "GB/s", "AI",
                 "% of roofline", "check"):  # fmt: skip
        table.add_column(name, justify="left" if name in ("kernel", "precision") else "right")
    for p in points:
        table.add_row(
            p.label,
            p.precision,
            p.shape,
            _time(p.time_median) + (" (sim)" if p.simulated else ""),
            _num(p.flops_per_s, 1e9),
            _num(p.bytes_per_s, 1e9),
            _num(p.ai, fmt=".3g"),
            "-" if p.roofline_fraction is None else f"{100 * p.roofline_fraction:.1f}%",
            "ok" if p.verified else "FAILED",
            style=None if p.verified else "red",
        )
    return table


def _wide() -> Console:
    """stdout; a pipe gets 160 columns so the tables stay readable in logs."""
    out = console()
    if not out.is_terminal:
        out.width = 160
    return out


def run(args: argparse.Namespace) -> int:
    out = _wide()
    with ResultsStore() as store:
        if args.list:
            infos = store.runs()
            if args.json:
                print_json([vars(info) for info in infos])
                return 0
            table = Table(title="stored results")
            for name in ("run", "created", "host", "device", "points"):
                table.add_column(name)
            for info in infos:
                device = info.device + (" (simulator)" if info.simulator else "")
                table.add_row(info.run_id, info.created, info.host, device, str(info.points))
            out.print(table)
            return 0
        if args.compare:
            return _compare(store, *args.compare, as_json=args.json, as_csv=args.csv)
        if not args.runs and not store.runs(1):
            console(stderr=True).print("no results stored yet (run `tether bench`)")
            return 0
        ids = list(dict.fromkeys(store.resolve(r) for r in (args.runs or ["latest"])))
        if args.plot:
            summary = plot_runs({i: store.document(i) for i in ids}, args.plot)
            note = f"wrote {args.plot}: {summary['points']} points"
            if summary["simulated_skipped"]:
                note += f"; {summary['simulated_skipped']} simulated results not plotted"
            console(stderr=True).print(note)
        points = [p for i in ids for p in store.points(i)]
        if args.csv:
            sys.stdout.write(to_csv(points))
        elif args.json:
            print_json([p.to_json() for p in points])
        elif not args.plot:
            for i in ids:
                run_points = [p for p in points if p.run_id == i]
                head = run_points[0] if run_points else None
                title = f"run {i}"
                if head is not None:
                    title += f" on {head.host} ({head.device}), {head.created}"
                    if head.simulated:
                        title += " — SIMULATOR: not GPU figures"
                out.print(points_table(run_points, title))
    return 0


def _compare(store: ResultsStore, a: str, b: str, *, as_json: bool, as_csv: bool) -> int:
    run_a, run_b = store.resolve(a), store.resolve(b)
    rows = store.compare(run_a, run_b)
    if not rows:
        raise UsageError(
            f"runs {run_a} and {run_b} have no benchmark in common",
            "compare runs of the same kernels, precisions and shapes",
        )
    regressions = [r for r in rows if r.regression]
    if as_json:
        print_json({"a": run_a, "b": run_b, "rows": [r.to_json() for r in rows]})
    elif as_csv:
        import csv

        writer = csv.writer(sys.stdout, lineterminator="\n")
        writer.writerow(["kernel", "variant", "precision", "shape", "time_a", "time_b",
                         "speedup", "regression", "note"])  # fmt: skip
        for r in rows:
            writer.writerow([r.kernel, r.variant, r.precision, r.shape, r.time_a, r.time_b,
                             r.speedup, int(r.regression), r.note])  # fmt: skip
    else:
        table = Table(title=f"{run_b} vs {run_a}: speedup = time(A) / time(B)")
        for name in ("kernel", "precision", "shape", "A", "B", "speedup", ""):
            table.add_column(name, justify="left" if name in ("kernel", "precision") else "right")
        for r in rows:
            flag = "REGRESSION" if r.regression else ""
            if r.note:
                flag = f"{flag} ({r.note})".strip()
            table.add_row(
                f"{r.kernel}/{r.variant}" if r.variant else r.kernel,
                r.precision,
                r.shape,
                _time(r.time_a),
                _time(r.time_b),
                "-" if r.speedup is None else f"{r.speedup:.2f}x",
                flag,
                style="red" if r.regression else None,
            )
        out = _wide()
        out.print(table)
        if regressions:
            out.print(
                f"[red]{len(regressions)} regression(s)[/] (more than {REGRESSION:.0%} slower)"
            )
    return 0
