"""The machine code's shape, from PTX compiled for sm_90 without a GPU (NVVM from the test
extra): each variant has the property it claims -- 16-byte global loads, packed half2 FMAs, FMAs
that stay in the kernel's precision, no wrap-around index code where indices are unsigned."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from tether_kernels import ptxstats

ROOT = Path(__file__).resolve().parents[1]

COUNT = """
import json, sys
from tether_kernels import fma, stream, ptxstats
try:
    out = {}
    for name in ("copy", "triad"):
        for v in stream.VARIANTS:
            for p in ("fp64", "fp32", "fp16"):
                out[f"{name}/{v} {p}"] = ptxstats.compile_counts(*stream.compile_target(name, v, p))
    for v in fma.VARIANTS:
        for p in ("fp64", "fp32", "fp16"):
            if v in fma.variants_for(p):
                out[f"fma128/{v} {p}"] = ptxstats.compile_counts(*fma.compile_target(128, v, p))
except Exception as exc:  # no NVVM/NVRTC here
    print(json.dumps({"no_nvvm": f"{type(exc).__name__}: {exc}"}))
    sys.exit(0)
print(json.dumps(out))
"""


@pytest.fixture(scope="module")
def ptx() -> dict[str, dict[str, int]]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("NUMBA_ENABLE_CUDASIM", None)
    p = subprocess.run([sys.executable, "-c", COUNT], env=env, cwd=ROOT, capture_output=True,
                       text=True, timeout=300)  # fmt: skip
    assert p.returncode == 0, p.stderr[-3000:]
    out = json.loads(p.stdout.strip().splitlines()[-1])
    if "no_nvvm" in out:
        pytest.skip("NVVM not installed (pip install -e '.[test]'): " + out["no_nvvm"])
    return out


def test_vec16_stream_loads_and_stores_16_bytes(ptx: dict) -> None:
    for name, loads in (("copy", 1), ("triad", 2)):
        assert ptx[f"{name}/vec16 fp32"]["ld.global.v4"] == loads
        assert ptx[f"{name}/vec16 fp32"]["st.global.v4"] == 1
        assert ptx[f"{name}/vec16 fp16"]["ld.global.v4"] == loads  # uint32 views: 8 halves
        assert ptx[f"{name}/vec16 fp64"]["ld.global.v2"] == loads
        for p in ("fp64", "fp32", "fp16"):
            c = ptx[f"{name}/vec16 {p}"]
            assert c["wrap-around"] == 0 and c["local"] == 0 and c["call"] == 0, (name, p, c)
            # the old rung: scalar accesses behind wrap-around code
            old = ptx[f"{name}/grid-stride {p}"]
            assert old["ld.global.v4"] == old["ld.global.v2"] == 0
    assert ptx["triad/grid-stride fp32"]["wrap-around"] > 0


def test_fp16_triad_is_packed_half2(ptx: dict) -> None:
    c = ptx["triad/vec16 fp16"]
    assert c["fma.f16x2"] == 5  # four per vector, one in the tail
    assert c["fma.f16"] == 0 and c["cvt.f64"] == 0
    assert ptx["triad/grid-stride fp16"]["call"] > 0  # scalar half through cuda_fp16 calls


def test_fma_chains_stay_in_their_precision(ptx: dict) -> None:
    for v in ("", "ilp8"):
        c32 = ptx[f"fma128/{v} fp32"]
        assert c32["fma.f32"] >= 128 and c32["fma.f64"] == 0 and c32["cvt.f64"] == 0
        assert ptx[f"fma128/{v} fp64"]["fma.f64"] >= 128
        assert c32["local"] == 0
    ilp8 = ptx["fma128/ilp8 fp32"]
    assert ilp8["fma.f32"] == 8 * 16 + 128  # 8 chains unrolled 16 deep, plus the tail loop
    assert ilp8["wrap-around"] == 0
    assert ptx["fma128/ fp32"]["wrap-around"] > 0


def test_half2_chain_is_fma_f16x2_in_registers(ptx: dict) -> None:
    c = ptx["fma128/half2 fp16"]
    assert c["fma.f16x2"] == 8 * 16 + 128
    assert c["local"] == 0 and c["call"] == 0 and c["fma.f16"] == 0
    scalar = ptx["fma128/ fp16"]
    assert scalar["fma.f16x2"] == 0 and scalar["local"] > 0  # the old rung: calls, local memory


def test_counts_read_ptx_text() -> None:
    text = """
    ld.global.v4.f32 {%f1, %f2, %f3, %f4}, [%rd7];
    ld.global.nc.f32 %f5, [%rd8];
    ld.global.v2.f64 {%fd1, %fd2}, [%rd9];
    fma.rn.f32 %f6, %f1, %f2, %f3;
    cvt.f64.f32 %fd3, %f6;
    fma.rn.f16x2 %r1, %r2, %r3, %r4;
    shr.s64 %rd10, %rd11, 63;
    mul.wide.s32 %rd12, %r5, 4;
    """
    c = ptxstats.counts(text)
    assert (c["ld.global.v4"], c["ld.global.v2"], c["ld.global"]) == (1, 1, 1)
    assert (c["fma.f32"], c["fma.f16x2"], c["cvt.f64"]) == (1, 1, 1)
    assert c["wrap-around"] == 1 and c["int64 math"] == 2
