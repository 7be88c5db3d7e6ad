"""The GPU as NVML and the CUDA driver see it, plus its theoretical peaks.

Each NVML query is guarded on its own: a field the driver does not support is ``None``, never an
error. SM count, clocks and bus width come from NVML, else from the CUDA device attributes (via
numba), else from the known-GPU table (:mod:`tether_kernels.gpus`). Under the Numba CUDA
simulator the device is reported as simulated and has no peaks unless a known GPU is assumed.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import asdict, dataclass, field
from typing import Any

from . import compat, gpus, roofline

SIMULATOR_NAME = "Numba CUDA simulator"


class NoGPU(Exception):
    """No CUDA GPU is visible (neither NVML nor the CUDA driver found one)."""

    exit_code = 69


@dataclass
class DeviceInfo:
    """One GPU's identity, live state and theoretical peaks. Units are in the field names."""

    name: str
    index: int = 0
    simulator: bool = False
    driver_version: str | None = None
    cuda_driver_version: int | None = None
    compute_capability: tuple[int, int] | None = None
    sms: int | None = None
    sm_clock_mhz: float | None = None
    sm_clock_max_mhz: float | None = None
    mem_clock_mhz: float | None = None
    mem_clock_max_mhz: float | None = None
    bus_width_bits: int | None = None
    l2_bytes: int | None = None
    memory_used_bytes: int | None = None
    memory_total_bytes: int | None = None
    temperature_c: float | None = None
    power_w: float | None = None
    power_limit_w: float | None = None
    utilization_gpu_pct: float | None = None
    utilization_mem_pct: float | None = None
    pcie_tx_bytes_per_s: float | None = None
    pcie_rx_bytes_per_s: float | None = None
    known_gpu: str | None = None
    peaks: dict[str, Any] = field(default_factory=dict)
    peaks_source: str | None = None
    sources: dict[str, str] = field(default_factory=dict)
    versions: dict[str, str | None] = field(default_factory=dict)
    """numpy, numba, numba-cuda (installed) and the NVIDIA driver."""
    diagnosis: str | None = None
    """One line naming a known-bad combination of ``versions`` and its fix (kernels.compat)."""

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict (tuples become lists)."""
        d = asdict(self)
        if self.compute_capability is not None:
            d["compute_capability"] = list(self.compute_capability)
        return d


def simulator_enabled() -> bool:
    """True when numba runs CUDA code in its simulator."""
    if os.environ.get("NUMBA_ENABLE_CUDASIM", "0") not in ("", "0"):
        return True
    try:
        from numba import config
    except ImportError:
        return False
    return bool(getattr(config, "ENABLE_CUDASIM", False))


def _load_nvml() -> Any | None:
    try:
        import pynvml
    except ImportError:
        return None
    return pynvml


def query_nvml(nvml: Any, index: int = 0) -> dict[str, Any] | None:
    """Read what NVML knows about GPU ``index``; ``None`` if NVML finds no GPU.

    Args:
        nvml: the ``pynvml`` module (from nvidia-ml-py) or a stand-in with the same functions.
        index: GPU index as NVML numbers them.
    """
    error = getattr(nvml, "NVMLError", Exception)
    try:
        nvml.nvmlInit()
    except error:
        return None
    try:
        try:
            if nvml.nvmlDeviceGetCount() <= index:
                return None
            h = nvml.nvmlDeviceGetHandleByIndex(index)
        except error:
            return None

        def q(fn: str, *args: Any) -> Any:
            f = getattr(nvml, fn, None)
            if f is None:
                return None
            try:
                return f(*args)
            except error:
                return None

        def text(v: Any) -> str | None:
            return v.decode() if isinstance(v, bytes) else v

        out: dict[str, Any] = {"name": text(q("nvmlDeviceGetName", h))}
        out["driver_version"] = text(q("nvmlSystemGetDriverVersion"))
        out["cuda_driver_version"] = q("nvmlSystemGetCudaDriverVersion")
        cc = q("nvmlDeviceGetCudaComputeCapability", h)
        out["compute_capability"] = tuple(int(x) for x in cc) if cc else None
        sm, mem = getattr(nvml, "NVML_CLOCK_SM", 1), getattr(nvml, "NVML_CLOCK_MEM", 2)
        out["sm_clock_mhz"] = q("nvmlDeviceGetClockInfo", h, sm)
        out["sm_clock_max_mhz"] = q("nvmlDeviceGetMaxClockInfo", h, sm)
        out["mem_clock_mhz"] = q("nvmlDeviceGetClockInfo", h, mem)
        out["mem_clock_max_mhz"] = q("nvmlDeviceGetMaxClockInfo", h, mem)
        out["bus_width_bits"] = q("nvmlDeviceGetMemoryBusWidth", h)
        mi = q("nvmlDeviceGetMemoryInfo", h)
        out["memory_used_bytes"] = getattr(mi, "used", None)
        out["memory_total_bytes"] = getattr(mi, "total", None)
        out["temperature_c"] = q(
            "nvmlDeviceGetTemperature", h, getattr(nvml, "NVML_TEMPERATURE_GPU", 0)
        )
        pw = q("nvmlDeviceGetPowerUsage", h)
        out["power_w"] = pw / 1000.0 if pw is not None else None
        pl = q("nvmlDeviceGetEnforcedPowerLimit", h)
        out["power_limit_w"] = pl / 1000.0 if pl is not None else None
        ut = q("nvmlDeviceGetUtilizationRates", h)
        out["utilization_gpu_pct"] = getattr(ut, "gpu", None)
        out["utilization_mem_pct"] = getattr(ut, "memory", None)
        tx = q("nvmlDeviceGetPcieThroughput", h, getattr(nvml, "NVML_PCIE_UTIL_TX_BYTES", 0))
        rx = q("nvmlDeviceGetPcieThroughput", h, getattr(nvml, "NVML_PCIE_UTIL_RX_BYTES", 1))
        out["pcie_tx_bytes_per_s"] = tx * 1024.0 if tx is not None else None  # NVML gives KB/s
        out["pcie_rx_bytes_per_s"] = rx * 1024.0 if rx is not None else None
        return out
    finally:
        with contextlib.suppress(error):
            nvml.nvmlShutdown()


def query_cuda(index: int = 0) -> dict[str, Any] | None:
    """CUDA device attributes through numba; ``None`` when the driver finds no GPU."""
    try:
        from numba import cuda
        from numba.cuda.cudadrv.error import CudaSupportError
    except ImportError:
        return None
    try:
        if not cuda.is_available() or len(cuda.gpus) <= index:
            return None
        cuda.select_device(index)
        dev = cuda.get_current_device()
    except (CudaSupportError, OSError, RuntimeError):
        return None

    def attr(name: str) -> Any:
        try:
            return getattr(dev, name)
        except (AttributeError, RuntimeError, OSError):
            return None

    name = attr("name")
    clock, mclock = attr("CLOCK_RATE"), attr("MEMORY_CLOCK_RATE")
    return {
        "name": name.decode() if isinstance(name, bytes) else name,
        "compute_capability": tuple(attr("compute_capability") or ()) or None,
        "sms": attr("MULTIPROCESSOR_COUNT"),
        "sm_clock_max_mhz": clock / 1000.0 if clock else None,  # kHz
        "mem_clock_max_mhz": mclock / 1000.0 if mclock else None,
        "bus_width_bits": attr("GLOBAL_MEMORY_BUS_WIDTH"),
        "l2_bytes": attr("L2_CACHE_SIZE"),
    }


def _merge(info: DeviceInfo, values: dict[str, Any] | None, source: str) -> None:
    """Fill fields still ``None`` from ``values``, remembering where each came from."""
    for k, v in (values or {}).items():
        if v is None or not hasattr(info, k):
            continue
        if getattr(info, k) in (None, ""):
            setattr(info, k, v)
            info.sources[k] = source


def finish_peaks(info: DeviceInfo, assume: gpus.GpuSpec | None = None) -> DeviceInfo:
    """Compute theoretical peaks from the device's figures (max clocks; gaps already filled from
    the known-GPU table by :func:`detect`); with ``assume``, use that table entry outright."""
    spec = assume or gpus.lookup(info.name)
    info.known_gpu = spec.name if spec else None
    if assume is not None:
        info.peaks = assume.peaks()
        info.peaks_source = f"table:{assume.name} (assumed)"
        return info
    info.peaks = roofline.peaks(
        info.sms,
        info.compute_capability,
        info.sm_clock_max_mhz,
        info.mem_clock_max_mhz,
        info.bus_width_bits,
    )
    keys = ("sms", "compute_capability", "sm_clock_max_mhz", "mem_clock_max_mhz", "bus_width_bits")
    tables = sorted({info.sources[k] for k in keys if info.sources.get(k, "").startswith("table")})
    info.peaks_source = "+".join(["device", *tables])
    return info


def add_versions(info: DeviceInfo) -> DeviceInfo:
    """Record the installed numpy/numba/numba-cuda and the driver, and diagnose the combination:
    a run on a known-bad one fails on every kernel, so the device report says so up front."""
    info.versions = {**compat.installed_versions(), "driver": info.driver_version}
    info.diagnosis = compat.diagnose(info.versions)
    return info


def detect(
    index: int = 0,
    *,
    assume: str | None = None,
    nvml: Any = "auto",
    cuda_attrs: Any = "auto",
    simulator: bool | None = None,
) -> DeviceInfo:
    """Describe GPU ``index``.

    Args:
        index: GPU index.
        assume: a known GPU name (see :func:`tether_kernels.gpus.names`) whose published figures
            give the peaks, e.g. to draw a theoretical roofline for simulator runs.
        nvml: the NVML module, ``None`` to skip NVML, or ``"auto"`` to import ``pynvml``.
        cuda_attrs: a dict of CUDA attributes, ``None`` to skip, or ``"auto"`` to ask numba.
        simulator: force simulator mode on/off; ``None`` reads the environment.

    Raises:
        NoGPU: when neither NVML nor the CUDA driver sees a GPU (and not under the simulator).
        ValueError: for an unknown ``assume`` name.
    """
    spec = None
    if assume:
        spec = gpus.lookup(assume)
        if spec is None:
            raise ValueError(f"unknown GPU {assume!r}; known: {', '.join(gpus.names())}")
    sim = simulator_enabled() if simulator is None else simulator
    if sim:
        info = DeviceInfo(name=SIMULATOR_NAME, index=index, simulator=True)
        return add_versions(finish_peaks(info, spec) if spec else info)
    nvml_module = _load_nvml() if nvml == "auto" else nvml
    nv = query_nvml(nvml_module, index) if nvml_module is not None else None
    cu = query_cuda(index) if cuda_attrs == "auto" else cuda_attrs
    if not nv and not cu:
        raise NoGPU(
            "no CUDA GPU found (NVML and the CUDA driver see none); run this on the GPU host, "
            "or set NUMBA_ENABLE_CUDASIM=1 to use the Numba CUDA simulator"
        )
    info = DeviceInfo(name=(nv or {}).get("name") or (cu or {}).get("name") or "unknown GPU")
    info.index = index
    _merge(info, nv, "nvml")
    _merge(info, cu, "cuda")
    spec_fill = gpus.lookup(info.name)
    if spec_fill is not None:
        _merge(
            info,
            {
                "compute_capability": spec_fill.cc,
                "sms": spec_fill.sms,
                "bus_width_bits": spec_fill.bus_width_bits,
                "sm_clock_max_mhz": spec_fill.boost_clock_mhz,
                "mem_clock_max_mhz": spec_fill.mem_clock_mhz,
            },
            f"table:{spec_fill.name}",
        )
    return add_versions(finish_peaks(info, spec))
