"""The library suite's pure parts with NumPy (torch is not installed here; its calls run on a GPU
in bench/gpu_check.sh): the FLOP/byte model, selection by precision, the row check and its
tolerance, and the result it reports."""

from __future__ import annotations

import numpy as np
import pytest
from tether_kernels import library, report, roofline

SHAPE = (4096, 4096, 4096)


def test_all_selects_every_gemm_precision_and_the_copies() -> None:
    cases = library.select(roofline.ALL_PRECISIONS, SHAPE)
    gemms = [c.precision for c in cases if c.kernel == "gemm"]
    assert gemms == ["fp64", "fp32", "tf32", "bf16", "fp16", "fp8", "int8"]
    assert [c.precision for c in cases if c.kernel == "copy"] == ["fp64", "fp32", "fp16"]
    only = library.select(["fp8", "int8"], SHAPE)
    assert [(c.kernel, c.precision) for c in only] == [("gemm", "fp8"), ("gemm", "int8")]


def test_flop_and_byte_model() -> None:
    cases = {(c.kernel, c.precision): c for c in library.select(roofline.ALL_PRECISIONS, SHAPE)}
    m = n = k = 4096
    assert cases[("gemm", "bf16")].flops == 2 * m * n * k
    assert cases[("gemm", "fp32")].bytes_moved == (m * k + k * n) * 4 + m * n * 4
    assert cases[("gemm", "fp8")].bytes_moved == (m * k + k * n) * 1 + m * n * 2  # bf16 out
    assert cases[("gemm", "int8")].bytes_moved == (m * k + k * n) * 1 + m * n * 4  # int32 out
    copy = cases[("copy", "fp32")]
    assert copy.flops == 0 and copy.bytes_moved == 2 * library.COPY_BYTES
    assert cases[("gemm", "fp8")].footprint > cases[("gemm", "fp8")].bytes_moved


def test_row_check_catches_a_wrong_product_and_passes_a_rounded_one() -> None:
    rng = np.random.default_rng(0)
    a = rng.uniform(-1, 1, (64, 256)).astype(np.float16)
    b = rng.uniform(-1, 1, (256, 48)).astype(np.float16)
    rows = library.sample_rows(64, count=8)
    good = (a[rows].astype(np.float32) @ b.astype(np.float32)).astype(np.float16)
    case = library.Case("gemm", "fp16", (64, 48, 256))
    assert library.check_rows(good, a[rows], b) <= case.tolerance()
    wrong = (a[rows].astype(np.float32) @ b[:, ::-1].astype(np.float32)).astype(np.float16)
    assert library.check_rows(wrong, a[rows], b) > 10 * case.tolerance()
    nan = good.copy()
    nan[0, 0] = np.nan
    assert library.check_rows(nan, a[rows], b) == float("inf")


def test_tolerances_follow_the_arithmetic() -> None:
    tol = {p: library.Case("gemm", p, SHAPE).tolerance() for p in library.GEMM_PRECISIONS}
    assert tol["int8"] == 0.0  # exact
    assert tol["fp64"] < 1e-12 < tol["fp32"] < 1e-4 < tol["fp16"] < tol["bf16"] < 0.05
    assert tol["tf32"] > tol["fp32"]  # the tensor cores round fp32 inputs to tf32
    # figures the vendor library reached on an H200 (bench/RESULTS.md) pass their bounds
    for prec, err in (("fp32", 2.5e-6), ("tf32", 2.9e-4), ("bf16", 3.2e-3), ("fp16", 4.7e-4)):
        assert err <= tol[prec], prec


def test_sample_rows() -> None:
    assert list(library.sample_rows(5)) == [0, 1, 2, 3, 4]
    rows = library.sample_rows(4096)
    assert len(rows) == library.CHECK_ROWS and list(rows) == sorted(set(rows))


@pytest.mark.parametrize("timed", [True, False])
def test_results_fit_the_schema_and_set_the_library_roof(timed: bool) -> None:
    case = library.Case("gemm", "bf16", SHAPE)
    r = library.result(case, [1e-3, 2e-3] if timed else None, 1e-3,
                       error=None if timed else "verification failed: error 1")  # fmt: skip
    doc = report.build_document({"name": "NVIDIA H200", "simulator": False}, [r], simulator=False)
    assert report.validate(doc) == []
    assert r["family"] == "library" and r["roofline_fraction"] is None
    if timed:
        assert r["flops_per_s"] == pytest.approx(case.flops / 1.5e-3)
        assert doc["measured"]["library"] == {"bf16": r["flops_per_s"]}
    else:
        assert doc["measured"]["library"] == {} and r["time_s"] is None


def test_without_torch_the_suite_says_why_in_one_line() -> None:
    try:
        import torch  # noqa: F401
    except ImportError:
        why = library.available()
        assert why is not None and "torch is not importable" in why and "\n" not in why
    else:  # pragma: no cover - a machine with torch
        pytest.skip("torch is installed here")
