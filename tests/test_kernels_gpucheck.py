"""bench/gpu_check.sh end to end under the Numba CUDA simulator: every step a GPU lease runs,
into one folder of at most 8 files, saying SIMULATOR and holding no GPU figure."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from tether_kernels import report

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "bench" / "gpu_check.sh"


def script(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHON": sys.executable}
    env.pop("NUMBA_ENABLE_CUDASIM", None)
    return subprocess.run(["bash", str(SCRIPT), *args], env=env, cwd=ROOT, capture_output=True,
                          text=True, timeout=timeout)  # fmt: skip


@pytest.fixture(scope="module")
def checked(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("gpucheck") / "out"
    p = script(str(out), "--simulate")
    assert p.returncode == 0, (p.stdout + p.stderr)[-3000:]
    return out


@pytest.mark.timeout(900)  # the module's one simulator run, PTX of every GEMM rung included
def test_writes_the_files_a_lease_carries_off(checked: Path) -> None:
    names = sorted(p.name for p in checked.iterdir())
    assert names == sorted(
        ["device.json", "results.json", "results.md", "roofline.png", "ptx.md", "log.txt"]
    )
    assert len(names) <= 8
    assert (checked / "roofline.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_simulator_run_holds_no_gpu_figure(checked: Path) -> None:
    dev = json.loads((checked / "device.json").read_text())
    assert dev["simulator"] is True
    doc = json.loads((checked / "results.json").read_text())
    assert report.validate(doc) == [] and doc["simulator"] is True
    assert doc["results"] and all(r["simulated"] and r["verified"] for r in doc["results"])
    assert all(r["roofline_fraction"] is None for r in doc["results"])
    assert doc["measured"]["flops"] == {"fp64": None, "fp32": None, "fp16": None}
    families = {r["family"] for r in doc["results"]}
    assert families == {"stream", "fma", "gemm", "reduce"}
    md = (checked / "results.md").read_text()
    assert "SIMULATOR" in md and "library suite skipped: simulator" in md
    assert "ceiling" not in md  # no measured ceiling from simulated times
    log = (checked / "log.txt").read_text()
    assert "device: Numba CUDA simulator" in log


def test_ptx_shape_is_recorded(checked: Path) -> None:
    ptx = (checked / "ptx.md").read_text()
    if "not compiled" in ptx:
        pytest.skip("NVVM not installed here: " + ptx.splitlines()[-1][:200])
    rows = {ln.split("|")[1].strip(): ln for ln in ptx.splitlines() if ln.startswith("| ")}
    assert "fma/chain128-half2 fp16" in rows and "triad/vec16 fp32" in rows


def test_usage_errors(tmp_path: Path) -> None:
    p = script(str(tmp_path / "a"), "--fast")
    assert p.returncode == 2 and "unknown option --fast" in p.stderr
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("NUMBA_ENABLE_CUDASIM", None)
    p = subprocess.run([sys.executable, "-m", "tether_kernels", "gpu-check", str(tmp_path / "b"),
                        "--simulate"], env=env, cwd=ROOT, capture_output=True, text=True,
                       timeout=120)  # fmt: skip
    assert p.returncode == 2 and "NUMBA_ENABLE_CUDASIM=1" in p.stderr
    assert "Traceback" not in p.stderr
