"""Known GPUs: published SM counts, boost clocks and memory systems, used when the driver cannot
tell us (NVML missing, a field not supported, the simulator with ``--assume-gpu``).

Pure data and lookups; no I/O. Memory clocks are given the way NVML reports them (half the data
rate), so that :func:`tether_kernels.roofline.dram_bandwidth` reproduces the published bandwidth.
Where a vendor publishes only the bandwidth, the clock is derived from it (noted per entry).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from . import roofline


@dataclass(frozen=True)
class GpuSpec:
    """One GPU model's published figures."""

    name: str
    """Canonical name, e.g. ``"H100 SXM"``."""
    pattern: str
    """Case-insensitive regex matched against the driver's device name."""
    cc: tuple[int, int]
    sms: int
    boost_clock_mhz: float
    mem_clock_mhz: float
    bus_width_bits: int
    memory_gib: float
    note: str = ""

    def peaks(self) -> dict[str, object]:
        """Theoretical peaks from the formulas in :mod:`tether_kernels.roofline`."""
        return roofline.peaks(
            self.sms, self.cc, self.boost_clock_mhz, self.mem_clock_mhz, self.bus_width_bits
        )


# Ordered: more specific patterns first (first match wins).
KNOWN_GPUS: tuple[GpuSpec, ...] = (
    GpuSpec("H200", r"\bH200\b", (9, 0), 132, 1980, 3125, 6144, 141, "4.8 TB/s published"),
    GpuSpec("H100 PCIe", r"\bH100\b.*PCIe", (9, 0), 114, 1755, 1593, 5120, 80, "2.04 TB/s"),
    GpuSpec("H100 SXM", r"\bH100\b", (9, 0), 132, 1980, 2619, 5120, 80, "3.35 TB/s"),
    GpuSpec("A100 PCIe 40GB", r"\bA100\b.*PCIE.*40GB", (8, 0), 108, 1410, 1215, 5120, 40),
    GpuSpec("A100 PCIe 80GB", r"\bA100\b.*PCIe", (8, 0), 108, 1410, 1512, 5120, 80, "1.94 TB/s"),
    GpuSpec("A100 SXM 40GB", r"\bA100\b.*40GB", (8, 0), 108, 1410, 1215, 5120, 40, "1.56 TB/s"),
    GpuSpec("A100 SXM 80GB", r"\bA100\b", (8, 0), 108, 1410, 1593, 5120, 80, "2.04 TB/s"),
    GpuSpec("A10", r"\bA10\b", (8, 6), 72, 1695, 6251, 384, 24, "600 GB/s"),
    GpuSpec("L40S", r"\bL40S\b", (8, 9), 142, 2520, 9001, 384, 48, "864 GB/s"),
    GpuSpec("L4", r"\bL4\b", (8, 9), 58, 2040, 6251, 192, 24, "300 GB/s"),
    GpuSpec("RTX 4090", r"RTX 4090", (8, 9), 128, 2520, 10501, 384, 24, "1008 GB/s"),
    GpuSpec("RTX 3090", r"RTX 3090", (8, 6), 82, 1695, 9751, 384, 24, "936 GB/s"),
    GpuSpec("V100 PCIe", r"\bV100\b.*PCIe", (7, 0), 80, 1380, 877, 4096, 16, "900 GB/s"),
    GpuSpec("V100 SXM2", r"\bV100\b", (7, 0), 80, 1530, 877, 4096, 16, "900 GB/s"),
    GpuSpec("T4", r"\bT4\b", (7, 5), 40, 1590, 5001, 256, 16, "320 GB/s"),
)


def lookup(device_name: str | None) -> GpuSpec | None:
    """The known GPU whose pattern matches a driver device name (or a canonical name), if any."""
    if not device_name:
        return None
    for spec in KNOWN_GPUS:
        if spec.name.lower() == device_name.strip().lower():
            return spec
    for spec in KNOWN_GPUS:
        if re.search(spec.pattern, device_name, flags=re.IGNORECASE):
            return spec
    return None


def names() -> list[str]:
    """Canonical names of all known GPUs."""
    return [s.name for s in KNOWN_GPUS]
