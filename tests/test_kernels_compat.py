"""numpy 2.5 with numba-cuda 0.30.4: the known-bad table, and the suite compiling a real kernel to
sm_90 PTX with ``numpy.row_stack`` gone. numpy 2.5 needs Python >= 3.12, so the subprocess
tests simulate it by deleting ``numpy.row_stack`` before numba-cuda's lowering is imported."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from tether_kernels import compat

ROOT = Path(__file__).resolve().parents[1]

H200 = {"numpy": "2.5.2", "numba": "0.68.0", "numba-cuda": "0.30.4", "driver": "580.159.04"}


@pytest.mark.parametrize(
    ("text", "expected"),
    [("2.5.2", (2, 5, 2)), ("2.5.0rc1", (2, 5, 0)), ("0.30.4", (0, 30, 4)), ("", None),
     (None, None), ("dev", None)],
)  # fmt: skip
def test_parse_version(text: str | None, expected: tuple[int, ...] | None) -> None:
    assert compat.parse_version(text) == expected


def test_h200_combination_is_diagnosed_in_one_line() -> None:
    line = compat.diagnose(H200)
    assert line is not None and "\n" not in line
    assert "numba-cuda 0.30.4" in line and "numpy 2.5.2" in line and "row_stack" in line
    assert "numpy<2.5" in line and "kernels/compat.py" in line
    assert "numba 0.68.0" not in line  # numba >= 0.67 supports numpy 2.5


@pytest.mark.parametrize(
    "versions",
    [
        {**H200, "numpy": "2.4.6"},  # row_stack still there
        {**H200, "numba-cuda": "0.20.1"},  # before numba-cuda vendored the lowering
        {**H200, "numba-cuda": "0.30.5"},  # newer than the last release checked
        {**H200, "numba-cuda": None},
        {**H200, "numpy": None},
    ],
)
def test_working_combinations_have_no_diagnosis(versions: dict[str, str | None]) -> None:
    assert compat.diagnose(versions) is None


def test_old_numba_with_numpy_25_names_its_fix() -> None:
    line = compat.diagnose({**H200, "numba": "0.66.0", "numba-cuda": "0.20.1"})
    assert line == (
        "numba 0.66.0 predates numpy 2.5.2 support and refuses to import: pip install 'numba>=0.67'"
    )
    both = compat.diagnose({**H200, "numba": "0.66.0"})
    assert both is not None and both.count("; ") >= 2 and "row_stack" in both


@pytest.mark.parametrize(
    ("has_row_stack", "numba_cuda", "needed"),
    [(False, "0.30.4", True), (False, "0.21.0", True), (True, "0.30.4", False),
     (False, "0.20.1", False), (False, "0.30.5", False), (False, None, False)],
)  # fmt: skip
def test_stand_in_only_when_numpy_lacks_it_and_numba_cuda_reads_it(
    has_row_stack: bool, numba_cuda: str | None, needed: bool
) -> None:
    assert compat.needs_row_stack_stand_in(has_row_stack, numba_cuda) is needed


# Runs in a fresh interpreter: numpy loses row_stack (as numpy 2.5 has it) before anything imports
# numba-cuda's lowering; MODE says whether the suite's entry point runs first.
COMPILE = """
import json, sys
import numpy
if hasattr(numpy, "row_stack"):  # numpy < 2.5: take it away as numpy 2.5 did
    del numpy.row_stack
mode = sys.argv[1]
if mode == "entry":
    from tether_kernels import cli
    code = cli.main(["run", "--suite", "fma", "--precisions", "fp32", "--quick"])
    print("entry exit", code, file=sys.stderr)
from numba import cuda, float32
from tether_kernels import fma
try:
    ptx, _ = cuda.compile_ptx(fma.make_kernel(8).py_func,
                              (float32[:], float32[:], float32, float32), cc=(9, 0))
except AttributeError as exc:
    print(json.dumps({"error": str(exc)}))
    sys.exit(0)
except Exception as exc:  # no NVVM/NVRTC here: the test says so and skips
    print(json.dumps({"no_nvvm": f"{type(exc).__name__}: {exc}"}))
    sys.exit(0)
print(json.dumps({"target": [ln for ln in ptx.splitlines() if ln.startswith(".target")],
                  "fma": ptx.count("fma.rn.f32"), "row_stack": hasattr(numpy, "row_stack")}))
"""


def compile_without_row_stack(mode: str) -> dict:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("NUMBA_ENABLE_CUDASIM", None)
    p = subprocess.run([sys.executable, "-c", COMPILE, mode], env=env, cwd=ROOT,
                       capture_output=True, text=True, timeout=110)  # fmt: skip
    assert p.returncode == 0, p.stderr[-3000:]
    out = json.loads(p.stdout.strip().splitlines()[-1])
    if "no_nvvm" in out:
        pytest.skip("NVVM/NVRTC not installed (pip install -e '.[test]'): " + out["no_nvvm"])
    out["stderr"] = p.stderr
    return out


def test_without_the_compat_step_numba_cuda_fails_like_on_numpy_25() -> None:
    """The simulation is faithful: with row_stack gone, compiling fails as it did on the H200."""
    out = compile_without_row_stack("bare")
    assert out.get("error") == "module 'numpy' has no attribute 'row_stack'"


def test_suite_entry_point_compiles_real_kernel_without_row_stack() -> None:
    """`python -m tether_kernels run` applies the compat step before numba-cuda's lowering loads
    (here it then exits 69: no GPU); an FMA chain from the suite compiles to sm_90 PTX, and numpy
    still has no row_stack afterwards (the stand-in did not leak)."""
    out = compile_without_row_stack("entry")
    assert "entry exit 69" in out["stderr"]
    assert "error" not in out, out
    assert out["target"] == [".target sm_90"]
    assert out["fma"] >= 8
    assert out["row_stack"] is False
