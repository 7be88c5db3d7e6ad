"""``python -m tether_kernels gpu-check OUT [--simulate]`` (run by ``bench/gpu_check.sh``):
everything a short GPU lease should measure, in one command, into one folder of at most 8 files:

* ``device.json``  the GPU as NVML and the driver see it, with versions and peaks;
* ``results.json`` one ``tether.bench/1`` document: every Numba suite at fp64/fp32/fp16 and the
  vendor library (torch) at every precision, each result with its ``card`` record;
* ``roofline.png`` the plot; ``results.md`` the markdown table with device, driver, versions,
  date, the ceilings (and which variant defines each) and the THROTTLED/SHARED flags;
* ``ptx.md`` the PTX shape of the key kernels (vector loads, FMAs, 64-bit index math);
* ``log.txt`` written by the shell script (progress and errors).

``--simulate`` runs the same steps under the Numba CUDA simulator at tiny sizes (no library):
the output says SIMULATOR and holds no GPU figure. It is how the command is tested without a GPU.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

CHECK_SWEEP = (1, 8, 32, 128, 256, 512, 1024)
"""FMA chain lengths a lease runs: the slope, the ridge and the plateau, for the 5-minute budget
(the full sweep of ``python -m tether_kernels run`` has 11 points)."""

FILES = ("device.json", "results.json", "roofline.png", "results.md", "ptx.md", "log.txt")


def run(out: Path, *, simulate: bool, gemm: tuple[int, int, int] | None = None) -> int:
    """Do the whole check into ``out``; returns the exit code (0, or 1 if a benchmark failed)."""
    from . import cardstate, compat, device, roofline, suite

    compat.apply()
    card = None if simulate else cardstate.open_source(0)
    monitor = cardstate.CardMonitor(card) if card is not None else None
    if monitor is not None:
        monitor.open()  # before our CUDA context: the processes on the card now are others'
    info = device.detect(0, assume="H200" if simulate else None)
    out.mkdir(parents=True, exist_ok=True)
    _write(out / "device.json", json.dumps(info.to_json(), indent=2))
    print(f"device: {info.name}", file=sys.stderr, flush=True)

    from . import harness, library, plot, report

    planned = [
        b
        for b in suite.builtin(
            list(suite.SUITES), list(roofline.PRECISIONS), quick=simulate, gemm_shape=gemm
        )
        if simulate or b.family != "fma" or _chain(b.variant) in CHECK_SWEEP
    ]
    results: list[dict[str, Any]] = []
    skipped = library.available() if not simulate else "library suite skipped: simulator"
    if skipped is None:
        print("library: vendor GEMM and copy via torch", file=sys.stderr, flush=True)
        results += library.run(roofline.ALL_PRECISIONS, gemm or (4096, 4096, 4096), card=monitor)
    else:
        print(skipped, file=sys.stderr, flush=True)
    for i, b in enumerate(planned, 1):
        print(f"[{i}/{len(planned)}] {b.label} {b.precision}", file=sys.stderr, flush=True)
        results.append(harness.run_benchmark(b, quick=simulate, repeats=1 if simulate else 10,
                                             peaks=info.peaks or None, card=monitor))  # fmt: skip
    doc = report.build_document(info.to_json(), results, simulator=simulate)
    problems = report.validate(doc)
    if problems:
        raise ValueError(f"the check's own document is invalid: {problems[0]}")
    _write(out / "results.json", json.dumps(doc, indent=2, allow_nan=False))
    _write(out / "results.md", report.markdown(doc) + (f"\n{skipped}\n" if skipped else ""))
    plot.render([doc], out / "roofline.png", labels=["gpu-check"])
    _write(out / "ptx.md", _ptx_report(rungs=not simulate))
    report.print_table(doc)
    failed = [r for r in results if not r["verified"]]
    print(f"wrote {out}: {', '.join(sorted(p.name for p in out.iterdir()))}", file=sys.stderr)
    if failed:
        print(f"kernels: {len(failed)} of {len(results)} benchmarks failed", file=sys.stderr)
        return 1
    return 0


def _chain(variant: str) -> int:
    """``"chain128-ilp8"`` -> 128."""
    return int(variant.removeprefix("chain").split("-")[0])


def _ptx_report(rungs: bool) -> str:
    """ptxstats.report() from a fresh interpreter without the simulator (the simulator cannot
    compile PTX; NVVM can, with or without a GPU)."""
    import os
    import subprocess

    env = {k: v for k, v in os.environ.items() if k != "NUMBA_ENABLE_CUDASIM"}
    code = (
        "from tether_kernels import compat, ptxstats; compat.apply(); "
        f"print(ptxstats.report({rungs}))"
    )
    # The folder this package was imported from (not resolved: under bench/gpu_check.sh the
    # package is a link named tether_kernels), so the child imports the same one.
    here = str(Path(__file__).parent.parent)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [here, env.get("PYTHONPATH")]))
    p = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                       timeout=600)  # fmt: skip
    if p.returncode != 0:
        last = (p.stderr.strip().splitlines() or ["no output"])[-1]
        return f"# PTX shape of the key kernels\n\nnot compiled: {last}\n"
    return p.stdout


def _write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text if text.endswith("\n") else text + "\n")
    tmp.replace(path)
