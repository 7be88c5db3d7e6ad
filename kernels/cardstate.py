"""What the card was doing while a benchmark ran: clocks, power, temperature, NVML's throttle
reasons and the other processes on the GPU; and whether a run fits in the free memory at all.

A figure taken while the card was power-capped, hot or shared with someone's notebook is not the
card's figure, so every timed result carries a ``card`` record and the table flags it. The
sampling reads an :class:`NvmlSource` (a ``Protocol``): :class:`PynvmlSource` on a real GPU, a
recorded list of samples in tests. The judgements (:func:`summarize`, :func:`other_processes`,
:func:`refusal`) are pure functions of those samples.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

# NVML's clocks-event (throttle) reason bits (nvml.h, nvmlClocksEventReason*).
REASONS: dict[int, str] = {
    0x1: "gpu idle",
    0x2: "applications clocks setting",
    0x4: "sw power cap",
    0x8: "hw slowdown",
    0x10: "sync boost",
    0x20: "sw thermal slowdown",
    0x40: "hw thermal slowdown",
    0x80: "hw power brake",
    0x100: "display clock setting",
}
BENIGN = 0x1 | 0x2
"""Idle (between launches) and a clock the operator chose: not the card slowing itself down."""

MEMORY_MARGIN = 256 << 20
"""Head-room left free beyond a run's own arrays (context, allocator slack)."""


@dataclass(frozen=True)
class Sample:
    """One reading of the card. ``processes`` maps pid to GPU memory used (bytes, or None)."""

    sm_clock_mhz: float | None = None
    mem_clock_mhz: float | None = None
    power_w: float | None = None
    temperature_c: float | None = None
    throttle_mask: int | None = None
    processes: dict[int, int | None] = field(default_factory=dict)
    memory_free_bytes: int | None = None


class NvmlSource(Protocol):
    """Anything that can read the card now (a real NVML handle, or a recording)."""

    def sample(self) -> Sample: ...


def reasons(mask: int) -> list[str]:
    """Names of the bits set in an NVML throttle-reason mask (unknown bits as hex)."""
    names = [name for bit, name in REASONS.items() if mask & bit]
    unknown = mask & ~sum(REASONS)
    if unknown:
        names.append(f"0x{unknown:x}")
    return names


def other_processes(baseline: set[int], seen: set[int], own_pid: int) -> set[int]:
    """The pids on the GPU that are not this run.

    ``baseline`` was read before this process opened its CUDA context, so all of it is others.
    Later pids are others too, except our own: in a container NVML reports host pids, so our
    own pid may not be ``own_pid``; then the one pid that appeared with our context is us.
    """
    new = seen - baseline
    if own_pid in seen:
        new.discard(own_pid)
    elif len(new) == 1:
        new = set()
    return (baseline | new) - {own_pid}


def summarize(samples: Sequence[Sample], baseline: set[int], own_pid: int) -> dict[str, Any]:
    """The ``card`` record of one result: ranges of clocks, peaks of power and temperature, the
    union of throttle reasons, the other processes, and the two flags the table shows."""

    def vals(name: str) -> list[float]:
        return [float(v) for s in samples if (v := getattr(s, name)) is not None]

    def span(name: str) -> list[float] | None:
        v = vals(name)
        return [min(v), max(v)] if v else None

    mask = 0
    for s in samples:
        mask |= s.throttle_mask or 0
    seen: set[int] = set()
    for s in samples:
        seen |= set(s.processes)
    others = sorted(other_processes(baseline, seen, own_pid))
    power, temp = vals("power_w"), vals("temperature_c")
    return {
        "samples": len(samples),
        "sm_clock_mhz": span("sm_clock_mhz"),
        "mem_clock_mhz": span("mem_clock_mhz"),
        "power_w_max": max(power) if power else None,
        "temperature_c_max": max(temp) if temp else None,
        "throttle_reasons": reasons(mask),
        "other_pids": others,
        "throttled": bool(mask & ~BENIGN),
        "shared": bool(others),
    }


def flags(card: dict[str, Any] | None) -> str:
    """The table's one-word warnings for a result's ``card`` record (empty when clean)."""
    if not card:
        return ""
    out = []
    if card.get("throttled"):
        why = [r for r in card.get("throttle_reasons", []) if r not in ("gpu idle",)]
        out.append(f"THROTTLED ({', '.join(why)})" if why else "THROTTLED")
    if card.get("shared"):
        out.append(f"SHARED ({len(card.get('other_pids', []))} other processes)")
    return "; ".join(out)


def refusal(need_bytes: int, free_bytes: int | None, margin: int = MEMORY_MARGIN) -> str | None:
    """Why a run needing ``need_bytes`` of device memory must not start, or None if it fits
    (or the free memory is unknown: then the run is tried)."""
    if free_bytes is None or need_bytes + margin <= free_bytes:
        return None
    gib = 1 << 30
    return (
        f"refused: needs {need_bytes / gib:.2f} GiB of GPU memory but {free_bytes / gib:.2f} GiB "
        "is free (other processes hold the rest); free the GPU or run a smaller size "
        "(--gemm MxNxK or --quick)"
    )


class CardMonitor:
    """Samples a source in a background thread while a benchmark is timed.

    ``open()`` must be called before this process creates its CUDA context: the processes seen
    then are certainly someone else's.
    """

    def __init__(self, source: NvmlSource, interval_s: float = 0.05, own_pid: int = 0) -> None:
        self.source = source
        self.interval_s = interval_s
        self.own_pid = own_pid or os.getpid()
        self.baseline: set[int] = set()
        self._samples: list[Sample] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def open(self) -> None:
        self.baseline = set(self.source.sample().processes)

    def free_bytes(self) -> int | None:
        return self.source.sample().memory_free_bytes

    def begin(self) -> None:
        self._samples = [self.source.sample()]
        self._stop.clear()
        self._thread = threading.Thread(target=self._poll, name="card-monitor", daemon=True)
        self._thread.start()

    def _poll(self) -> None:
        while not self._stop.wait(self.interval_s):
            self._samples.append(self.source.sample())

    def end(self) -> dict[str, Any]:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self._samples.append(self.source.sample())
        return summarize(self._samples, self.baseline, self.own_pid)


class PynvmlSource:
    """The real card through nvidia-ml-py. Each field is read on its own: one the driver does not
    support is None, never an error."""

    def __init__(self, index: int = 0, nvml: Any = None) -> None:
        if nvml is None:
            import pynvml

            nvml = pynvml
        self.nvml = nvml
        nvml.nvmlInit()
        self.handle = nvml.nvmlDeviceGetHandleByIndex(index)

    def _q(self, fn: str, *args: Any) -> Any:
        f = getattr(self.nvml, fn, None)
        if f is None:
            return None
        try:
            return f(self.handle, *args)
        except self.nvml.NVMLError:
            return None

    def sample(self) -> Sample:
        nv, q = self.nvml, self._q
        pw = q("nvmlDeviceGetPowerUsage")
        mask = q("nvmlDeviceGetCurrentClocksEventReasons")
        if mask is None:
            mask = q("nvmlDeviceGetCurrentClocksThrottleReasons")
        procs: dict[int, int | None] = {}
        for fn in ("nvmlDeviceGetComputeRunningProcesses", "nvmlDeviceGetGraphicsRunningProcesses"):
            for p in q(fn) or []:
                procs[int(p.pid)] = getattr(p, "usedGpuMemory", None)
        mem = q("nvmlDeviceGetMemoryInfo")
        return Sample(
            sm_clock_mhz=q("nvmlDeviceGetClockInfo", nv.NVML_CLOCK_SM),
            mem_clock_mhz=q("nvmlDeviceGetClockInfo", nv.NVML_CLOCK_MEM),
            power_w=pw / 1000.0 if pw is not None else None,
            temperature_c=q("nvmlDeviceGetTemperature", nv.NVML_TEMPERATURE_GPU),
            throttle_mask=mask,
            processes=procs,
            memory_free_bytes=getattr(mem, "free", None),
        )


def open_source(index: int = 0) -> NvmlSource | None:
    """The real card's source, or None where NVML is missing or sees no GPU."""
    try:
        import pynvml
    except ImportError:
        return None
    with contextlib.suppress(Exception):  # NVMLError subclasses; a driver without NVML
        return PynvmlSource(index, pynvml)
    return None
