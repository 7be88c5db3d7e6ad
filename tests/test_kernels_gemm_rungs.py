"""The GEMM ladder's later rungs (kernels/gemm_rungs.py): against NumPy under the simulator on
shapes with full tiles (the unchecked, vector paths) and partial ones (the checked path), and
their PTX for sm_90: each rung has the shape it claims. Both are ``slow`` (run with -m slow):
the simulator needs minutes for a full 128 x 128 tile and each rung minutes to compile here; the
default run checks the rungs' checked path at the quick shape (tests/test_kernels_sim.py)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FULL_AND_EDGE = (132, 136, 28)  # a full 128x128 tile and partial ones; 3 whole k-steps + half

SIM = """
import json, sys
from tether_kernels import gemm, harness
want = json.loads(sys.argv[1])
out = {}
for b in gemm.benchmarks(["fp64", "fp32", "fp16"]):
    if [b.variant, b.precision] in want:
        r = harness.run_benchmark(b, shape=tuple(json.loads(sys.argv[2])), repeats=1)
        out[f"{b.variant} {b.precision}"] = [r["verified"], r["max_rel_err"], r["error"]]
print(json.dumps(out))
"""


def run(code: str, *args: str, sim: bool) -> dict:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    if sim:
        env["NUMBA_ENABLE_CUDASIM"] = "1"
    else:
        env.pop("NUMBA_ENABLE_CUDASIM", None)
    p = subprocess.run([sys.executable, "-c", code, *args], env=env, cwd=ROOT,
                       capture_output=True, text=True, timeout=1700)  # fmt: skip
    assert p.returncode == 0, p.stderr[-3000:]
    return json.loads(p.stdout.strip().splitlines()[-1])


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_rungs_match_numpy_on_full_and_partial_tiles() -> None:
    want = [[v, "fp32"] for v in ("rb-u32", "rb-vec", "rb-db", "rb-warp")]
    want += [["rb-warp", "fp64"], ["rb-vec", "fp16"]]  # v2.f64 vectors; fp16's scalar fallback
    got = run(SIM, json.dumps(want), json.dumps(FULL_AND_EDGE), sim=True)
    assert len(got) == len(want)
    for name, (ok, err, why) in got.items():
        assert ok, (name, err, why)


PTX = """
import json, sys
from numba import float32, uint32
from tether_kernels import gemm, ptxstats
try:
    out = {}
    for v, p, t in (("regblock", "fp32", float32), ("rb-u32", "fp32", float32),
                    ("rb-vec", "fp32", float32), ("rb-db", "fp32", float32),
                    ("rb-warp", "fp32", float32)):
            sig = ((t[:, :],) * 3 if v == "regblock"
                   else (t[::1], t[::1], t[::1], uint32, uint32, uint32, uint32))
            out[f"{v} {p}"] = ptxstats.compile_counts(gemm.kernel(v, p), sig)
except Exception as exc:  # no NVVM here
    print(json.dumps({"no_nvvm": f"{type(exc).__name__}: {exc}"}))
    sys.exit(0)
print(json.dumps(out))
"""


@pytest.fixture(scope="module")
def ptx() -> dict:
    """Each rung takes 20-130 s to compile on a busy 2-core machine: the test is ``slow``."""
    out = run(PTX, sim=False)
    if "no_nvvm" in out:
        pytest.skip("NVVM not installed (pip install -e '.[test]'): " + out["no_nvvm"])
    return out


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_each_rung_has_its_shape(ptx: dict) -> None:
    old = ptx["regblock fp32"]
    assert old["fma.f32"] == 64 and old["wrap-around"] > 0  # p loop not unrolled; signed indices
    for key, c in ptx.items():
        v, p = key.split()
        if v != "regblock":
            assert c[f"fma.f{p[2:]}"] == 8 * 64, key  # the BK loop unrolled: 512 FMAs
            assert c["wrap-around"] == 0 and c["local"] == 0 and c["cvt.f64"] == 0, (key, c)
    assert ptx["rb-u32 fp32"]["ld.global.v4"] == 0
    assert ptx["rb-vec fp32"]["ld.global.v4"] == 2  # one vector of A, one of B per thread
    # double buffering: the first tile and the in-loop prefetch both fill shared memory
    assert ptx["rb-db fp32"]["ld.global.v4"] == 2 * ptx["rb-vec fp32"]["ld.global.v4"]
    # warp tiling: 16-byte shared reads, 4 per k instead of 16 scalar ones
    assert ptx["rb-db fp32"]["ld.shared"] == 8 * 16
    assert ptx["rb-warp fp32"]["ld.shared"] == 8 * 4
