"""Every kernel against NumPy under the Numba CUDA simulator (tiny sizes), in subprocesses so that
NUMBA_ENABLE_CUDASIM is set before numba.cuda is imported; plus real-GPU checks marked ``gpu``."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from tether_kernels import report

ROOT = Path(__file__).resolve().parents[1]
SAXPY = ROOT / "kernels" / "examples" / "saxpy.py"


def kernels_cmd(*args: str, sim: bool = True, timeout: float = 110) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    if sim:
        env["NUMBA_ENABLE_CUDASIM"] = "1"
    else:
        env.pop("NUMBA_ENABLE_CUDASIM", None)
    return subprocess.run(
        [sys.executable, "-m", "tether_kernels", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.fixture(scope="module")
def quick_doc(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """One simulator run of every built-in suite and the saxpy example, with H100 peaks assumed."""
    out = tmp_path_factory.mktemp("sim") / "quick.json"
    p = kernels_cmd("run", str(SAXPY), "--suite", "all", "--quick", "--assume-gpu", "H100 SXM",
                    "--json", str(out))  # fmt: skip
    assert p.returncode == 0, p.stderr[-3000:]
    doc = json.loads(out.read_text())
    doc["_stdout"] = p.stdout
    return doc


EXPECTED = (
    [(k, "grid-stride") for k in ("copy", "scale", "add", "triad")]
    + [(k, "vec16") for k in ("copy", "triad")]
    + [("fma", f"chain{f}{v}") for f in (1, 8, 32) for v in ("", "-ilp8")]
    + [("gemm", v) for v in ("naive", "tiled", "regblock", "rb-u32", "rb-vec", "rb-db", "rb-warp")]
    + [("reduce", "sum-2pass")]
)


def test_every_builtin_kernel_matches_numpy(quick_doc: dict) -> None:
    got = {(r["kernel"], r["variant"], r["precision"]): r for r in quick_doc["results"]}
    for kernel, variant in EXPECTED:
        for prec in ("fp64", "fp32", "fp16"):
            r = got.get((kernel, variant, prec))
            assert r is not None, (kernel, variant, prec)
            assert r["verified"], r
            assert r["max_rel_err"] <= r["tolerance"]
    for f in (1, 8, 32):
        assert got[("fma", f"chain{f}-half2", "fp16")]["verified"]
    for prec in ("fp32", "fp64"):
        assert got[("saxpy", "user", prec)]["verified"]
        assert got[("saxpy", "user", prec)]["source"].endswith("saxpy.py")


def test_simulator_document(quick_doc: dict) -> None:
    doc = {k: v for k, v in quick_doc.items() if k != "_stdout"}
    assert report.validate(doc) == []
    assert doc["simulator"] is True and doc["device"]["simulator"] is True
    assert doc["theoretical"]["source"] == "table:H100 SXM (assumed)"
    # simulator times are kept, marked, and never put on the roofline or counted as ceilings
    assert doc["measured"] == {
        "flops": {"fp64": None, "fp32": None, "fp16": None},
        "dram_bytes_per_s": None,
        "library": {},
        "from": {},
    }
    for r in doc["results"]:
        assert r["simulated"] is True and r["roofline_fraction"] is None
        assert r["time_s"]["n"] >= 1
    gemm = next(r for r in doc["results"] if r["kernel"] == "gemm" and r["precision"] == "fp16")
    assert gemm["compute_precision"] == "fp32"
    assert gemm["flops"] == 2 * 24 * 20 * 12
    assert "SIMULATOR" in quick_doc["_stdout"]


def test_plot_of_simulator_run_draws_no_points(quick_doc: dict, tmp_path: Path) -> None:
    src = tmp_path / "sim.json"
    src.write_text(json.dumps({k: v for k, v in quick_doc.items() if k != "_stdout"}))
    p = kernels_cmd("plot", str(src), "-o", str(tmp_path / "r.svg"))
    assert p.returncode == 0, p.stderr
    assert "0 points" in p.stderr and "simulated results not plotted" in p.stderr
    assert (tmp_path / "r.svg").stat().st_size > 1000


BROKEN = """
import numpy as np
from numba import cuda
from tether_kernels.harness import Benchmark

@cuda.jit
def skip_last(out, x):
    i = cuda.grid(1)
    if i < out.size - 1:          # forgets the last element
        out[i] = 2 * x[i]

@cuda.jit
def off_by_a_bit(out, x):
    i = cuda.grid(1)
    if i < out.size:
        out[i] = 2 * x[i] + 1e-3

def setup(shape, dtype, rng):
    return {"x": rng.standard_normal(shape[0]).astype(dtype), "out": np.zeros(shape[0], dtype)}

def launcher(k):
    def launch(d, shape):
        k[1, 64](d["out"], d["x"])
    return launch

def make(name, k):
    return Benchmark(name=name, precision="fp64", shape=(50,), setup=setup, launch=launcher(k),
                     reference=lambda h, s: 2 * h["x"], flops=lambda s: s[0],
                     bytes_moved=lambda s: 16 * s[0])

def raises(d, shape):
    raise RuntimeError("launch exploded")

BENCHMARKS = [
    make("skip_last", skip_last),
    make("off_by_a_bit", off_by_a_bit),
    Benchmark(name="raises", precision="fp64", shape=(8,), setup=setup, launch=raises,
              reference=lambda h, s: 2 * h["x"], flops=lambda s: 0, bytes_moved=lambda s: 1),
]
"""


def test_poisoned_output_and_wrong_results_fail(tmp_path: Path) -> None:
    f = tmp_path / "broken.py"
    f.write_text(BROKEN)
    out = tmp_path / "broken.json"
    p = kernels_cmd("run", str(f), "--json", str(out))
    assert p.returncode == 1, p.stderr[-2000:]
    assert "failed their check" in p.stderr
    doc = json.loads(out.read_text())
    assert report.validate(doc) == []
    by = {r["kernel"]: r for r in doc["results"]}
    assert not by["skip_last"]["verified"] and "not fully written" in by["skip_last"]["error"]
    assert not by["off_by_a_bit"]["verified"] and "exceeds" in by["off_by_a_bit"]["error"]
    assert "launch exploded" in by["raises"]["error"]
    for r in doc["results"]:
        assert r["time_s"] is None


def test_user_file_errors_are_usage_errors(tmp_path: Path) -> None:
    empty = tmp_path / "empty.py"
    empty.write_text("X = 1\n")
    p = kernels_cmd("run", str(empty))
    assert p.returncode == 2 and "declares no benchmarks" in p.stderr
    p = kernels_cmd("run", str(tmp_path / "missing.py"))
    assert p.returncode == 2 and "not found" in p.stderr


def test_device_under_simulator() -> None:
    p = kernels_cmd("device", "--json")
    assert p.returncode == 0, p.stderr
    d = json.loads(p.stdout)
    assert d["simulator"] is True and d["name"] == "Numba CUDA simulator"


def _has_gpu() -> bool:
    smi = shutil.which("nvidia-smi")
    if not smi:
        return False
    try:
        return subprocess.run([smi, "-L"], capture_output=True, timeout=20).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


@pytest.mark.gpu
@pytest.mark.skipif(not _has_gpu(), reason="needs a real CUDA GPU")
def test_gpu_stream_and_fma_on_the_roofline(tmp_path: Path) -> None:
    out = tmp_path / "gpu.json"
    p = kernels_cmd("run", "--suite", "stream,fma", "--precisions", "fp32", "--json", str(out),
                    sim=False, timeout=600)  # fmt: skip
    assert p.returncode == 0, p.stderr[-3000:]
    doc = json.loads(out.read_text())
    assert report.validate(doc) == []
    assert doc["simulator"] is False
    for r in doc["results"]:
        assert r["verified"] and not r["simulated"]
        assert r["time_s"]["min"] <= r["time_s"]["median"] <= r["time_s"]["max"]
        if r["roofline_fraction"] is not None:
            assert 0 < r["roofline_fraction"] < 1.2


PTX_CHECK = """
import re, sys
from numba import cuda, float32
from tether_kernels import fma, gemm
try:
    out = []
    for name, fn, sig in (
        ("regblock", gemm.kernel("regblock", "fp32"), (float32[:, :],) * 3),
        ("ert", fma.make_kernel(1024), (float32[:], float32[:], float32, float32)),
    ):
        ptx, _ = cuda.compile_ptx(fn.py_func, sig, cc=(9, 0))
        local = len(re.findall(r"(?:ld|st)\\.local", ptx))
        nfma = len(re.findall(r"fma\\.rn\\.f(?:32|64)", ptx))
        out.append(f"{name} {local} {nfma}")
except Exception as exc:  # no NVVM/NVRTC on this machine
    print("NO-NVVM", type(exc).__name__, exc)
    sys.exit(0)
print("\\n".join(out))
"""


def test_kernels_compile_to_register_resident_ptx() -> None:
    """Where NVVM is installed (no GPU needed): the register-blocked GEMM keeps its 64
    accumulators in registers and the FMA chain contracts to FMAs, with no local memory."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("NUMBA_ENABLE_CUDASIM", None)
    p = subprocess.run([sys.executable, "-c", PTX_CHECK], env=env, capture_output=True, text=True,
                       timeout=110, cwd=ROOT)  # fmt: skip
    assert p.returncode == 0, p.stderr[-2000:]
    if p.stdout.startswith("NO-NVVM"):
        pytest.skip("NVVM not installed: " + p.stdout.strip()[:200])
    got = {
        name: (int(loc), int(n))
        for name, loc, n in (ln.split() for ln in p.stdout.split("\n") if ln)
    }
    assert got["regblock"] == (0, 64)
    assert got["ert"][0] == 0 and got["ert"][1] >= 32
