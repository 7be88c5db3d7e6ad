"""Roofline arithmetic: peak formulas, attainable performance, bound and fraction.

Pure functions only (no I/O, no numba): everything here is unit tested against published figures.

Peaks follow the usual vendor arithmetic:

* compute peak  = SMs x FMA lanes per SM (for the precision and compute capability) x 2 x SM clock
  (an FMA counts as two floating-point operations);
* DRAM bandwidth = 2 x memory clock x bus width / 8 (NVML reports the memory clock at half the
  data rate for both HBM and GDDR, hence the factor 2).

The lanes table is the CUDA C Programming Guide's "Throughput of Native Arithmetic Instructions"
(results per clock per multiprocessor, non-tensor), cross-checked against NVIDIA whitepapers.
fp16 is the packed half2 rate; a scalar fp16 kernel reaches at most half of it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

PRECISIONS: tuple[str, ...] = ("fp64", "fp32", "fp16")
"""Precisions the suite knows, widest first."""

ITEMSIZE: dict[str, int] = {"fp64": 8, "fp32": 4, "fp16": 2}
"""Bytes per element for each precision."""

ALL_PRECISIONS: tuple[str, ...] = ("fp64", "fp32", "tf32", "bf16", "fp16", "fp8", "int8")
"""Every precision a result may carry: the Numba suites' three plus what only the vendor
library reaches (tensor cores: tf32, bf16, fp8 e4m3, int8)."""

# (major, minor) -> {precision: FMA results per clock per SM}. Non-tensor-core pipes only.
_LANES: dict[tuple[int, int], dict[str, int]] = {
    (5, 0): {"fp64": 4, "fp32": 128, "fp16": 0},
    (5, 2): {"fp64": 4, "fp32": 128, "fp16": 0},
    (5, 3): {"fp64": 4, "fp32": 128, "fp16": 256},
    (6, 0): {"fp64": 32, "fp32": 64, "fp16": 128},
    (6, 1): {"fp64": 4, "fp32": 128, "fp16": 2},
    (6, 2): {"fp64": 4, "fp32": 128, "fp16": 256},
    (7, 0): {"fp64": 32, "fp32": 64, "fp16": 128},
    (7, 2): {"fp64": 32, "fp32": 64, "fp16": 128},
    (7, 5): {"fp64": 2, "fp32": 64, "fp16": 128},
    (8, 0): {"fp64": 32, "fp32": 64, "fp16": 256},
    (8, 6): {"fp64": 2, "fp32": 128, "fp16": 128},
    (8, 7): {"fp64": 2, "fp32": 128, "fp16": 128},
    (8, 9): {"fp64": 2, "fp32": 128, "fp16": 128},
    (9, 0): {"fp64": 64, "fp32": 128, "fp16": 256},
    (10, 0): {"fp64": 64, "fp32": 128, "fp16": 256},
    (12, 0): {"fp64": 2, "fp32": 128, "fp16": 128},
    (12, 1): {"fp64": 2, "fp32": 128, "fp16": 128},
}


def lanes_per_sm(cc: tuple[int, int], precision: str) -> int | None:
    """FMA lanes per SM for a compute capability and precision.

    Args:
        cc: compute capability, e.g. ``(9, 0)``.
        precision: one of :data:`PRECISIONS`.

    Returns:
        Results per clock per SM, or ``None`` when the compute capability is unknown (an unknown
        minor version falls back to the closest lower known minor of the same major).

    Raises:
        ValueError: for an unknown precision.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; expected one of {PRECISIONS}")
    major, minor = int(cc[0]), int(cc[1])
    row = _LANES.get((major, minor))
    if row is None:
        lower = [m for (ma, m) in _LANES if ma == major and m <= minor]
        if not lower:
            return None
        row = _LANES[(major, max(lower))]
    return row[precision]


def compute_peak(
    sms: int, cc: tuple[int, int], sm_clock_mhz: float, precision: str
) -> float | None:
    """Theoretical FLOP/s: SMs x lanes x 2 (FMA) x SM clock. ``None`` if anything is unknown."""
    if not sms or not sm_clock_mhz:
        return None
    lanes = lanes_per_sm(cc, precision)
    if lanes is None:
        return None
    return float(sms) * lanes * 2.0 * float(sm_clock_mhz) * 1e6


def dram_bandwidth(mem_clock_mhz: float | None, bus_width_bits: int | None) -> float | None:
    """Theoretical DRAM bytes/s: 2 x memory clock x bus width / 8. ``None`` if unknown."""
    if not mem_clock_mhz or not bus_width_bits:
        return None
    return 2.0 * float(mem_clock_mhz) * 1e6 * float(bus_width_bits) / 8.0


def peaks(
    sms: int | None,
    cc: tuple[int, int] | None,
    sm_clock_mhz: float | None,
    mem_clock_mhz: float | None,
    bus_width_bits: int | None,
) -> dict[str, object]:
    """All theoretical peaks, JSON-ready: ``{"flops": {prec: x}, "dram_bytes_per_s": y}``."""
    flops: dict[str, float | None] = {}
    for p in PRECISIONS:
        flops[p] = compute_peak(sms or 0, cc, sm_clock_mhz or 0, p) if cc else None
    return {"flops": flops, "dram_bytes_per_s": dram_bandwidth(mem_clock_mhz, bus_width_bits)}


def arithmetic_intensity(flops: float, bytes_moved: float) -> float | None:
    """FLOPs per byte; ``None`` when no bytes move (intensity undefined)."""
    if bytes_moved <= 0:
        return None
    return float(flops) / float(bytes_moved)


def ridge_point(peak_flops: float, bandwidth: float) -> float:
    """The intensity (FLOP/byte) where the memory slope meets the compute ceiling."""
    return peak_flops / bandwidth


def attainable(ai: float, peak_flops: float, bandwidth: float) -> float:
    """Roofline: ``min(peak, ai x bandwidth)`` in FLOP/s."""
    return min(peak_flops, ai * bandwidth)


def bound(ai: float | None, peak_flops: float | None, bandwidth: float | None) -> str | None:
    """``"memory"`` left of the ridge point, ``"compute"`` at or right of it; ``None`` if unknown.

    A kernel that does no arithmetic (``ai == 0``) is memory bound when the bandwidth is known.
    """
    if ai is None or bandwidth is None:
        return None
    if ai == 0:
        return "memory"
    if peak_flops is None:
        return None
    return "memory" if ai < ridge_point(peak_flops, bandwidth) else "compute"


def roofline_fraction(
    flops_per_s: float,
    bytes_per_s: float,
    ai: float | None,
    peak_flops: float | None,
    bandwidth: float | None,
) -> float | None:
    """Achieved performance over the roof at this intensity (1.0 = on the roofline).

    For a kernel without arithmetic (a copy) the roof is the DRAM bandwidth and the fraction is
    achieved bytes/s over it. ``None`` when a needed peak is unknown.
    """
    if bandwidth is None or ai is None:
        return None
    if ai == 0:
        return bytes_per_s / bandwidth
    if peak_flops is None:
        return None
    return flops_per_s / attainable(ai, peak_flops, bandwidth)


def stats(samples_s: list[float]) -> dict[str, float | int]:
    """Median, min, max and count of timing samples (seconds)."""
    if not samples_s:
        raise ValueError("no timing samples")
    s = sorted(samples_s)
    n = len(s)
    mid = n // 2
    median = s[mid] if n % 2 else 0.5 * (s[mid - 1] + s[mid])
    return {"median": median, "min": s[0], "max": s[-1], "n": n}


def tolerance(precision: str, scale: float = 1.0) -> float:
    """Relative error bound for a precision, multiplied by ``scale`` (e.g. sqrt(K) for a GEMM)."""
    base = {"fp64": 1e-12, "fp32": 1e-5, "fp16": 1e-2}
    if precision not in base:
        raise ValueError(f"unknown precision {precision!r}; expected one of {PRECISIONS}")
    return base[precision] * max(1.0, float(scale))


def gemm_tol_scale(k: int) -> float:
    """Error growth of a length-``k`` dot product: sqrt(k) (random-walk rounding)."""
    return math.sqrt(max(1, k))


def _rate(value: object) -> float | None:
    """A measured rate as a float; None for anything else (missing, a bool, text, NaN, inf, <= 0):
    a result without a usable rate defines no ceiling."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    rate = float(value)
    return rate if math.isfinite(rate) and rate > 0 else None


def measured_ceilings(results: list[Mapping[str, object]]) -> dict[str, object]:
    """Best measured FLOP/s per precision (from compute-ceiling kernels), best DRAM bytes/s
    (from stream kernels) and, under ``library``, the vendor library's best FLOP/s per
    precision (its GEMMs reach the tensor cores, a roof Numba kernels cannot); ``from`` names
    the result (kernel/variant precision) that defines each Numba ceiling. Simulated or
    unverified results never count."""
    flops: dict[str, float | None] = dict.fromkeys(PRECISIONS)
    library: dict[str, float] = {}
    bw: float | None = None
    source: dict[str, str] = {}
    for r in results:
        if r.get("simulated") or not r.get("verified"):
            continue
        family = r.get("family")
        prec = str(r.get("compute_precision") or r.get("precision"))
        label = f"{r.get('kernel')}/{r.get('variant')} {r.get('precision')}"
        flop_rate, byte_rate = _rate(r.get("flops_per_s")), _rate(r.get("bytes_per_s"))
        if family == "fma" and prec in flops and flop_rate is not None:
            cur = flops[prec]
            if cur is None or flop_rate > cur:
                flops[prec], source[prec] = flop_rate, label
        if family == "stream" and byte_rate is not None and (bw is None or byte_rate > bw):
            bw, source["dram"] = byte_rate, label
        if family == "library" and r.get("kernel") == "gemm" and flop_rate is not None:
            library[prec] = max(library.get(prec, 0.0), flop_rate)
    return {"flops": flops, "dram_bytes_per_s": bw, "library": library, "from": source}
