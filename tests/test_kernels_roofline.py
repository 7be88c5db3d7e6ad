"""Pure roofline math and the known-GPU table, checked against published figures (no numba)."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st
from tether_kernels import gpus, roofline

T = 1e12


def rel(a: float, b: float) -> float:
    return abs(a - b) / abs(b)


# --- peak formulas ------------------------------------------------------------------------------


def test_h100_sxm_fp32_peak_matches_published() -> None:
    # 132 SMs x 128 FP32 lanes x 2 x 1980 MHz = 66.9 TFLOP/s (NVIDIA H100 datasheet, SXM5)
    assert rel(roofline.compute_peak(132, (9, 0), 1980, "fp32"), 66.9 * T) < 1e-3


def test_h100_sxm_fp64_and_fp16_peaks() -> None:
    assert rel(roofline.compute_peak(132, (9, 0), 1980, "fp64"), 33.5 * T) < 3e-3
    assert rel(roofline.compute_peak(132, (9, 0), 1980, "fp16"), 133.8 * T) < 1e-3


def test_h100_sxm_dram_bandwidth_matches_published() -> None:
    # 5120-bit HBM3 at 2619 MHz: 2 x 2619e6 x 5120 / 8 = 3.35 TB/s
    assert rel(roofline.dram_bandwidth(2619, 5120), 3.35 * T) < 1e-3


@pytest.mark.parametrize(
    ("name", "precision", "tflops"),
    [
        ("H100 SXM", "fp32", 66.9),
        ("H100 PCIe", "fp32", 51.2),
        ("H200", "fp32", 66.9),
        ("A100 SXM 80GB", "fp32", 19.5),
        ("A100 SXM 80GB", "fp64", 9.7),
        ("A100 SXM 80GB", "fp16", 78.0),
        ("V100 SXM2", "fp32", 15.7),
        ("V100 SXM2", "fp64", 7.8),
        ("T4", "fp32", 8.1),
        ("L4", "fp32", 30.3),
        ("L40S", "fp32", 91.6),
        ("RTX 4090", "fp32", 82.6),
        ("RTX 3090", "fp32", 35.6),
        ("A10", "fp32", 31.2),
    ],
)
def test_table_compute_peaks_match_published(name: str, precision: str, tflops: float) -> None:
    spec = gpus.lookup(name)
    assert spec is not None and spec.name == name
    assert rel(spec.peaks()["flops"][precision], tflops * T) < 0.01


@pytest.mark.parametrize(
    ("name", "gbs"),
    [
        ("H100 SXM", 3350),
        ("H100 PCIe", 2039),
        ("H200", 4800),
        ("A100 SXM 80GB", 2039),
        ("A100 SXM 40GB", 1555),
        ("V100 SXM2", 900),
        ("T4", 320),
        ("L4", 300),
        ("L40S", 864),
        ("RTX 4090", 1008),
        ("A10", 600),
    ],
)
def test_table_bandwidths_match_published(name: str, gbs: float) -> None:
    spec = gpus.lookup(name)
    assert spec is not None
    assert rel(spec.peaks()["dram_bytes_per_s"], gbs * 1e9) < 0.01


@pytest.mark.parametrize(
    ("driver_name", "canonical"),
    [
        ("NVIDIA H100 80GB HBM3", "H100 SXM"),
        ("NVIDIA H100 PCIe", "H100 PCIe"),
        ("NVIDIA H200", "H200"),
        ("NVIDIA A100-SXM4-80GB", "A100 SXM 80GB"),
        ("NVIDIA A100-SXM4-40GB", "A100 SXM 40GB"),
        ("NVIDIA A100-PCIE-40GB", "A100 PCIe 40GB"),
        ("NVIDIA A10", "A10"),
        ("NVIDIA L4", "L4"),
        ("NVIDIA L40S", "L40S"),
        ("NVIDIA GeForce RTX 4090", "RTX 4090"),
        ("Tesla V100-SXM2-32GB", "V100 SXM2"),
        ("Tesla T4", "T4"),
        ("h100 sxm", "H100 SXM"),
    ],
)
def test_lookup_by_driver_name(driver_name: str, canonical: str) -> None:
    spec = gpus.lookup(driver_name)
    assert spec is not None and spec.name == canonical


def test_lookup_unknown() -> None:
    assert gpus.lookup("Some Future GPU") is None
    assert gpus.lookup("") is None
    assert gpus.lookup(None) is None


def test_table_entries_are_consistent() -> None:
    assert len(set(gpus.names())) == len(gpus.KNOWN_GPUS)
    for spec in gpus.KNOWN_GPUS:
        assert gpus.lookup(spec.name) is spec
        assert roofline.lanes_per_sm(spec.cc, "fp32") in (64, 128)


def test_lanes_table() -> None:
    assert roofline.lanes_per_sm((9, 0), "fp32") == 128
    assert roofline.lanes_per_sm((8, 0), "fp32") == 64
    assert roofline.lanes_per_sm((8, 0), "fp64") == 32
    assert roofline.lanes_per_sm((8, 9), "fp64") == 2
    assert roofline.lanes_per_sm((9, 7), "fp32") == 128  # unknown minor: closest lower minor
    assert roofline.lanes_per_sm((3, 5), "fp32") is None
    with pytest.raises(ValueError, match="precision"):
        roofline.lanes_per_sm((9, 0), "bf16")


def test_unknown_inputs_give_none() -> None:
    assert roofline.compute_peak(0, (9, 0), 1980, "fp32") is None
    assert roofline.compute_peak(132, (9, 0), None, "fp32") is None  # type: ignore[arg-type]
    assert roofline.compute_peak(132, (2, 0), 1980, "fp32") is None
    assert roofline.dram_bandwidth(None, 5120) is None
    assert roofline.dram_bandwidth(2619, None) is None
    p = roofline.peaks(None, None, None, None, None)
    assert p == {"flops": {"fp64": None, "fp32": None, "fp16": None}, "dram_bytes_per_s": None}


# --- roofline -----------------------------------------------------------------------------------

PEAK, BW = 66.9 * T, 3.35 * T


def test_ridge_bound_and_attainable() -> None:
    ridge = roofline.ridge_point(PEAK, BW)
    assert rel(ridge, 19.97) < 1e-3
    assert roofline.bound(1.0, PEAK, BW) == "memory"
    assert roofline.bound(ridge, PEAK, BW) == "compute"
    assert roofline.bound(100.0, PEAK, BW) == "compute"
    assert roofline.bound(0.0, None, BW) == "memory"
    assert roofline.bound(1.0, None, BW) is None
    assert roofline.bound(None, PEAK, BW) is None
    assert roofline.attainable(1.0, PEAK, BW) == BW
    assert roofline.attainable(1000.0, PEAK, BW) == PEAK


def test_fraction() -> None:
    # triad at 2.8 TB/s: AI = 2/24 FLOP/B
    ai = roofline.arithmetic_intensity(2, 24)
    f = roofline.roofline_fraction(ai * 2.8 * T, 2.8 * T, ai, PEAK, BW)
    assert rel(f, 2.8 / 3.35) < 1e-9
    # copy: no flops, the roof is the bandwidth
    assert rel(roofline.roofline_fraction(0.0, 3.0 * T, 0.0, PEAK, BW), 3.0 / 3.35) < 1e-9
    # compute bound GEMM at 30 TFLOP/s
    assert rel(roofline.roofline_fraction(30 * T, 0.1 * T, 300.0, PEAK, BW), 30 / 66.9) < 1e-9
    assert roofline.roofline_fraction(1.0, 1.0, 1.0, None, BW) is None
    assert roofline.roofline_fraction(1.0, 1.0, 1.0, PEAK, None) is None
    assert roofline.arithmetic_intensity(5, 0) is None


@given(
    ai=st.floats(1e-4, 1e5),
    peak=st.floats(1e9, 1e16),
    bw=st.floats(1e9, 1e14),
    frac=st.floats(0.01, 1.0),
)
def test_roofline_properties(ai: float, peak: float, bw: float, frac: float) -> None:
    att = roofline.attainable(ai, peak, bw)
    assert att <= peak and att <= ai * bw * (1 + 1e-12)
    achieved = frac * att
    got = roofline.roofline_fraction(achieved, achieved / ai, ai, peak, bw)
    assert math.isclose(got, frac, rel_tol=1e-9)
    assert roofline.bound(ai, peak, bw) == ("memory" if ai * bw < peak else "compute")


def test_stats() -> None:
    assert roofline.stats([3.0, 1.0, 2.0]) == {"median": 2.0, "min": 1.0, "max": 3.0, "n": 3}
    assert roofline.stats([1.0, 4.0]) == {"median": 2.5, "min": 1.0, "max": 4.0, "n": 2}
    with pytest.raises(ValueError):
        roofline.stats([])


def test_tolerance() -> None:
    assert roofline.tolerance("fp64") == 1e-12
    assert roofline.tolerance("fp32") == 1e-5
    assert roofline.tolerance("fp16") == 1e-2
    assert roofline.tolerance("fp32", roofline.gemm_tol_scale(4096)) == pytest.approx(64e-5)
    assert roofline.tolerance("fp32", 0.5) == 1e-5  # scale never tightens
    with pytest.raises(ValueError):
        roofline.tolerance("int8")


def test_measured_ceilings_ignore_simulated_and_unverified() -> None:
    base = {"verified": True, "simulated": False, "bytes_per_s": 1.0}
    results = [
        {**base, "family": "fma", "precision": "fp32", "flops_per_s": 5e13},
        {
            **base,
            "family": "fma",
            "kernel": "fma",
            "variant": "chain128",
            "precision": "fp32",
            "flops_per_s": 6e13,
        },
        {**base, "family": "fma", "precision": "fp64", "flops_per_s": 9e13, "simulated": True},
        {**base, "family": "fma", "precision": "fp16", "flops_per_s": 9e13, "verified": False},
        {
            **base,
            "family": "stream",
            "kernel": "triad",
            "variant": "v4",
            "precision": "fp64",
            "flops_per_s": 1e9,
            "bytes_per_s": 3e12,
        },
        {**base, "family": "gemm", "precision": "fp32", "flops_per_s": 7e13},
        {**base, "family": "library", "kernel": "gemm", "precision": "bf16", "flops_per_s": 7e14},
        {**base, "family": "library", "kernel": "copy", "precision": "fp32", "flops_per_s": 1.0},
    ]
    m = roofline.measured_ceilings(results)
    assert m == {
        "flops": {"fp64": None, "fp32": 6e13, "fp16": None},
        "dram_bytes_per_s": 3e12,
        "library": {"bf16": 7e14},  # the vendor GEMM's tensor-core roof, not the copy
        "from": {"fp32": "fma/chain128 fp32", "dram": "triad/v4 fp64"},  # which variant set it
    }


def test_measured_ceilings_skip_a_result_without_a_usable_rate() -> None:
    """A document read back from the host may carry a missing, textual, boolean or non-finite
    rate (an older suite, a failed kernel): it defines no ceiling and breaks nothing."""
    base = {"verified": True, "simulated": False, "kernel": "k", "variant": "v"}
    bad_rates = [None, "3e12", True, float("nan"), float("inf"), -1.0, 0]
    results = [
        {**base, "family": fam, "precision": "fp32", key: bad}
        for bad in bad_rates
        for fam, key in (
            ("fma", "flops_per_s"),
            ("stream", "bytes_per_s"),
            ("library", "flops_per_s"),
        )
    ]
    results += [
        {**base, "family": "stream", "precision": "fp32", "bytes_per_s": 2e12, "flops_per_s": None}
    ]
    m = roofline.measured_ceilings(results)
    assert m["flops"] == {"fp64": None, "fp32": None, "fp16": None}
    assert m["dram_bytes_per_s"] == 2e12 and m["library"] == {}
