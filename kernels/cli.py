"""``python -m tether_kernels device|run|plot``.

Exit codes: 0 success; 1 a benchmark failed its correctness check (or raised); 2 usage error;
65 a results file is not a valid tether.bench/1 document; 69 no GPU (or numba missing).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_DATA, EXIT_NO_GPU = 0, 1, 2, 65, 69


def _fail(message: str, code: int) -> int:
    print(f"kernels: {message}", file=sys.stderr)
    return code


def _write_json(path: str, doc: Any) -> None:
    """Write beside the target, then rename into place."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent)
    with os.fdopen(fd, "w") as f:
        json.dump(doc, f, indent=2, allow_nan=False)
        f.write("\n")
    os.replace(tmp, target)


def _fmt(v: Any, unit: str = "", scale: float = 1.0, digits: int = 4) -> str:
    if v is None:
        return "-"
    if isinstance(v, (int, float)):
        return f"{v / scale:.{digits}g}{unit}"
    if isinstance(v, (list, tuple)):
        return ".".join(str(x) for x in v)
    return str(v)


def device_rows(d: dict[str, Any]) -> list[tuple[str, str]]:
    """The `device` command's (field, value) rows."""
    pk = d.get("peaks") or {}
    fl = pk.get("flops") or {}
    return [
        ("name", _fmt(d.get("name"))),
        ("simulator", "yes" if d.get("simulator") else "no"),
        ("driver", _fmt(d.get("driver_version"))),
        ("compute capability", _fmt(d.get("compute_capability"))),
        ("SMs", _fmt(d.get("sms"))),
        (
            "SM clock (now / max)",
            f"{_fmt(d.get('sm_clock_mhz'))} / {_fmt(d.get('sm_clock_max_mhz'))} MHz",
        ),
        (
            "memory clock (now / max)",
            f"{_fmt(d.get('mem_clock_mhz'))} / {_fmt(d.get('mem_clock_max_mhz'))} MHz",
        ),
        ("bus width", f"{_fmt(d.get('bus_width_bits'))} bit"),
        ("L2", _fmt(d.get("l2_bytes"), " MiB", 2**20)),
        (
            "memory used / total",
            f"{_fmt(d.get('memory_used_bytes'), '', 2**30)} / "
            f"{_fmt(d.get('memory_total_bytes'), ' GiB', 2**30)}",
        ),
        ("temperature", _fmt(d.get("temperature_c"), " C")),
        (
            "power (draw / limit)",
            f"{_fmt(d.get('power_w'))} / {_fmt(d.get('power_limit_w'), ' W')}",
        ),
        (
            "utilization (gpu / mem)",
            f"{_fmt(d.get('utilization_gpu_pct'))} / {_fmt(d.get('utilization_mem_pct'), ' %')}",
        ),
        (
            "PCIe (tx / rx)",
            f"{_fmt(d.get('pcie_tx_bytes_per_s'), '', 1e6)} / "
            f"{_fmt(d.get('pcie_rx_bytes_per_s'), ' MB/s', 1e6)}",
        ),
        ("known GPU", _fmt(d.get("known_gpu"))),
        ("peak fp64", _fmt(fl.get("fp64"), " TFLOP/s", 1e12)),
        ("peak fp32", _fmt(fl.get("fp32"), " TFLOP/s", 1e12)),
        ("peak fp16 (half2)", _fmt(fl.get("fp16"), " TFLOP/s", 1e12)),
        ("peak DRAM", _fmt(pk.get("dram_bytes_per_s"), " TB/s", 1e12)),
        ("peaks from", _fmt(d.get("peaks_source"))),
        ("versions", versions_line(d.get("versions") or {})),
    ]


def versions_line(versions: dict[str, Any]) -> str:
    """``numpy 2.5.2, numba 0.68.0, numba-cuda 0.30.4, driver 580.159.04`` (missing: ``-``)."""
    names = ("numpy", "numba", "numba-cuda", "driver")
    return ", ".join(f"{n} {_fmt(versions.get(n))}" for n in names)


def cmd_device(args: argparse.Namespace) -> int:
    from . import device

    try:
        info = device.detect(args.index, assume=args.assume_gpu)
    except device.NoGPU as exc:
        return _fail(str(exc), EXIT_NO_GPU)
    except ValueError as exc:
        return _fail(str(exc), EXIT_USAGE)
    d = info.to_json()
    if args.json:
        print(json.dumps(d, indent=2))
        return EXIT_OK
    rows = device_rows(d)
    try:
        from rich.console import Console
        from rich.table import Table
    except ImportError:
        w = max(len(k) for k, _ in rows)
        for k, v in rows:
            print(f"{k.ljust(w)}  {v}")
    else:
        table = Table(title="GPU", show_header=False)
        table.add_column("field")
        table.add_column("value")
        for k, v in rows:
            table.add_row(k, v)
        Console().print(table)
    if d.get("diagnosis"):
        print(f"known problem: {d['diagnosis']}")  # one unwrapped line, whatever the width
    return EXIT_OK


def cmd_run(args: argparse.Namespace) -> int:
    from . import cardstate, compat, device, roofline, suite

    try:
        precisions = suite.parse_list(args.precisions, roofline.ALL_PRECISIONS, "precision")
        gemm_shape = suite.parse_gemm(args.gemm) if args.gemm else None
        default_suites = "all" if not args.files else ""
        names = (
            suite.parse_list(args.suite or default_suites, suite.SUITES, "suite")
            if (args.suite or default_suites)
            else []
        )
    except suite.SuiteError as exc:
        return _fail(str(exc), EXIT_USAGE)
    compat.apply()  # before anything imports numba.cuda's lowering
    card = None if device.simulator_enabled() else cardstate.open_source(args.index)
    monitor = cardstate.CardMonitor(card) if card is not None else None
    if monitor is not None:
        monitor.open()  # before our CUDA context: the processes seen now are others'
    try:
        info = device.detect(args.index, assume=args.assume_gpu)
    except device.NoGPU as exc:
        return _fail(str(exc), EXIT_NO_GPU)
    except ValueError as exc:
        return _fail(str(exc), EXIT_USAGE)
    try:
        from . import harness
    except ImportError as exc:
        return _fail(
            f"{exc}; install numba and numba-cuda (pip install 'tether[gpu]')", EXIT_NO_GPU
        )
    try:
        planned = [
            (b, "builtin")
            for b in suite.builtin(names, precisions, quick=args.quick, gemm_shape=gemm_shape)
        ]
        for f in args.files:
            planned += [(b, str(f)) for b in suite.load_file(f) if b.precision in precisions]
    except suite.SuiteError as exc:
        return _fail(str(exc), EXIT_USAGE)
    sim = info.simulator
    lib_results: list[dict[str, Any]] = []
    if "library" in names:
        from . import library

        why = "library suite skipped: simulator" if sim else library.available()
        if why:
            print(why, file=sys.stderr)
        else:
            shape = gemm_shape or (4096, 4096, 4096)
            lib_results = library.run(precisions, shape, card=monitor, seed=args.seed)
    if not planned and not lib_results:
        return _fail("nothing to run (no benchmark matches the suites and precisions)", EXIT_USAGE)
    repeats = args.repeats or (1 if sim else 10)
    peaks = info.peaks or None
    results = list(lib_results)
    for i, (b, src) in enumerate(planned, 1):
        print(f"[{i}/{len(planned)}] {b.label} {b.precision}", file=sys.stderr, flush=True)
        results.append(
            harness.run_benchmark(
                b,
                quick=args.quick,
                warmup=args.warmup,
                repeats=repeats,
                peaks=peaks,
                seed=args.seed,
                source=src,
                card=monitor,
            )
        )
    from . import report

    doc = report.build_document(info.to_json(), results, simulator=sim)
    problems = report.validate(doc)
    assert not problems, problems  # our own document must satisfy our own schema
    report.print_table(doc)
    if args.json:
        _write_json(args.json, doc)
        print(f"wrote {args.json}", file=sys.stderr)
    failed = [r for r in results if not r["verified"]]
    if failed:
        return _fail(f"{len(failed)} of {len(results)} benchmarks failed their check", EXIT_FAILED)
    return EXIT_OK


def cmd_gpu_check(args: argparse.Namespace) -> int:
    from . import device, gpucheck, suite

    try:
        gemm_shape = suite.parse_gemm(args.gemm) if args.gemm else None
    except suite.SuiteError as exc:
        return _fail(str(exc), EXIT_USAGE)
    if args.simulate != device.simulator_enabled():
        return _fail(
            "--simulate and NUMBA_ENABLE_CUDASIM=1 go together (bench/gpu_check.sh sets both)",
            EXIT_USAGE,
        )
    try:
        return gpucheck.run(Path(args.out), simulate=args.simulate, gemm=gemm_shape)
    except device.NoGPU as exc:
        return _fail(str(exc), EXIT_NO_GPU)


def cmd_plot(args: argparse.Namespace) -> int:
    from . import plot

    try:
        docs = [plot.load(p) for p in args.results]
    except plot.PlotError as exc:
        return _fail(str(exc), EXIT_DATA)
    suffix = Path(args.output).suffix.lower()
    if suffix not in (".png", ".svg", ".pdf"):
        return _fail(f"-o must end in .png, .svg or .pdf, got {args.output!r}", EXIT_USAGE)
    summary = plot.render(docs, args.output, labels=[Path(p).stem for p in args.results])
    note = f"wrote {args.output}: {summary['points']} points"
    if summary["simulated_skipped"]:
        note += f"; {summary['simulated_skipped']} simulated results not plotted"
    print(note, file=sys.stderr)
    return EXIT_OK


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m tether_kernels",
        description="Numba-CUDA roofline suite: device figures, checked benchmarks, roofline plot.",
    )
    sub = p.add_subparsers(dest="command", required=True)

    d = sub.add_parser("device", help="the GPU as NVML and the driver see it, with its peaks")
    d.add_argument("--json", action="store_true", help="print JSON instead of a table")
    d.add_argument("--index", type=int, default=0, help="GPU index (default 0)")
    d.add_argument("--assume-gpu", metavar="NAME", help="take peaks from this known GPU")
    d.set_defaults(func=cmd_device)

    r = sub.add_parser("run", help="check then time benchmarks (built-in and/or FILES)")
    r.add_argument("files", nargs="*", help="user benchmark files declaring BENCHMARKS")
    r.add_argument(
        "--suite",
        help="comma list of stream,fma,gemm,reduce,library or 'all' (default: all without "
        "FILES, none with FILES)",
    )
    r.add_argument("--gemm", metavar="MxNxK", help="GEMM shape (default 4096x4096x4096)")
    r.add_argument(
        "--precisions",
        default="fp64,fp32,fp16",
        help="comma list of fp64,fp32,tf32,bf16,fp16,fp8,int8 or all (default fp64,fp32,fp16; "
        "the last four only the library suite has)",
    )
    r.add_argument("--quick", action="store_true", help="tiny sizes (the simulator finishes fast)")
    r.add_argument("--json", metavar="OUT", help="write the tether.bench/1 document here")
    r.add_argument("--repeats", type=int, default=0, help="timed samples (default 10; sim 1)")
    r.add_argument("--warmup", type=int, default=3, help="warm-up launches (default 3)")
    r.add_argument("--seed", type=int, default=0, help="input RNG seed")
    r.add_argument("--index", type=int, default=0, help="GPU index (default 0)")
    r.add_argument("--assume-gpu", metavar="NAME", help="take peaks from this known GPU")
    r.set_defaults(func=cmd_run)

    g = sub.add_parser("gpu-check", help="device, library, every suite, plot and table into OUT")
    g.add_argument("out", help="output folder (at most 8 files)")
    g.add_argument("--simulate", action="store_true", help="Numba CUDA simulator, tiny sizes")
    g.add_argument("--gemm", metavar="MxNxK", help="GEMM shape (default 4096x4096x4096)")
    g.set_defaults(func=cmd_gpu_check)

    pl = sub.add_parser("plot", help="draw a roofline from one or more results files")
    pl.add_argument("results", nargs="+", help="tether.bench/1 JSON files (overlaid)")
    pl.add_argument("-o", "--output", required=True, help="roofline.png or .svg")
    pl.set_defaults(func=cmd_plot)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    return int(args.func(args))
