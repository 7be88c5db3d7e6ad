"""Declare a benchmark, check it against NumPy, then time it.

A benchmark is a kernel plus everything needed to trust its number: a FLOP model, a byte model,
a NumPy reference and a relative-error bound. The harness

1. builds host inputs with ``setup(shape, dtype, rng)``,
2. computes the reference from them,
3. poisons the output buffer (NaN) so a kernel that skips elements cannot pass,
4. launches once and compares with the reference (max |out - ref| / max |ref|),
5. only if that passes, warms up and times the launch with CUDA events (batched launches, the queue
   kept busy so launch overhead overlaps the GPU's work); under the Numba CUDA simulator it times
   with ``perf_counter`` instead and marks the result ``simulated``.

A user's own file declares benchmarks in a module-level ``BENCHMARKS`` list; see
``kernels/examples/saxpy.py`` and ``kernels/README.md``::

    BENCHMARKS = [
        Benchmark(
            name="saxpy", precision="fp32", shape=(1 << 26,), quick_shape=(1000,),
            setup=setup, launch=launch, reference=reference,
            flops=lambda s: 2 * s[0], bytes_moved=lambda s: 3 * s[0] * 4,
        )
    ]
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from . import roofline
from .cardstate import CardMonitor, refusal

Shape = tuple[int, ...]
DTYPES: dict[str, Any] = {"fp64": np.float64, "fp32": np.float32, "fp16": np.float16}


@dataclass(frozen=True)
class Sampled:
    """A reference for part of the output only (for sizes whose full NumPy reference is slow):
    ``out[index]`` must match ``expected``."""

    index: Any
    expected: np.ndarray


@dataclass(frozen=True)
class Benchmark:
    """One benchmark point: a kernel at one precision and shape, with its models and reference.

    Attributes:
        name: kernel name (``"triad"``).
        precision: ``"fp64"``, ``"fp32"`` or ``"fp16"``: the dtype handed to ``setup``.
        shape: problem size for a full run.
        setup: ``(shape, dtype, rng) -> dict`` host arrays, including the output (named by
            ``output``; its contents are overwritten with NaN before the launch). Values that are
            not ``np.ndarray`` (scalars such as ``np.float32(2.0)``) are passed through as is.
        launch: ``(arrays, shape) -> None`` launches the kernel(s) on the device arrays (same keys,
            arrays copied to the device). It must not synchronize; the harness does.
        reference: ``(arrays, shape) -> np.ndarray | Sampled`` the expected output, from the host
            inputs.
        flops: ``shape -> int`` floating-point operations per launch (an FMA counts 2).
        bytes_moved: ``shape -> int`` DRAM bytes per launch (compulsory traffic: reads + writes).
        variant: implementation variant (``"tiled"``); may be empty.
        family: suite family (``"stream"``, ``"fma"``, ``"gemm"``, ``"reduce"``, ``"user"``).
        output: key of the output array in the setup dict.
        quick_shape: size for ``--quick`` (simulator-friendly); defaults to ``shape``.
        compute_precision: the precision the arithmetic runs in, if not ``precision`` (fp16 inputs
            with fp32 accumulation); its ceiling is the roof.
        tolerance: relative-error bound; default :func:`tether_kernels.roofline.tolerance` of the
            compute precision (where rounding happens) times ``tol_scale(shape)``.
        tol_scale: ``shape -> float`` error growth factor (e.g. sqrt(K) for a GEMM).
        footprint: ``shape -> int`` device memory the run allocates, to refuse a run that would
            not fit; defaults to ``bytes_moved`` (compulsory traffic touches every array once).
    """

    name: str
    precision: str
    shape: Shape
    setup: Callable[[Shape, Any, np.random.Generator], dict[str, np.ndarray]]
    launch: Callable[[dict[str, Any], Shape], None]
    reference: Callable[[Mapping[str, np.ndarray], Shape], Any]
    flops: Callable[[Shape], int]
    bytes_moved: Callable[[Shape], int]
    variant: str = ""
    family: str = "user"
    output: str = "out"
    quick_shape: Shape | None = None
    compute_precision: str | None = None
    tolerance: float | None = None
    tol_scale: Callable[[Shape], float] | None = None
    footprint: Callable[[Shape], int] | None = None

    def __post_init__(self) -> None:
        if self.precision not in DTYPES:
            raise ValueError(
                f"benchmark {self.name!r}: precision {self.precision!r} is not one of "
                f"{', '.join(DTYPES)}"
            )

    @property
    def label(self) -> str:
        return f"{self.name}/{self.variant}" if self.variant else self.name

    def shape_for(self, quick: bool) -> Shape:
        return tuple(self.quick_shape if quick and self.quick_shape else self.shape)

    def memory(self, shape: Shape) -> int:
        return int((self.footprint or self.bytes_moved)(shape))

    def tol(self, shape: Shape) -> float:
        if self.tolerance is not None:
            return self.tolerance
        scale = self.tol_scale(shape) if self.tol_scale else 1.0
        return roofline.tolerance(self.compute_precision or self.precision, scale)


def max_rel_err(out: np.ndarray, expected: np.ndarray) -> float:
    """Normwise relative error ``max|out - ref| / max|ref|``; ``inf`` if ``out`` is not finite
    (an untouched NaN-poisoned element) or the shapes differ."""
    o = np.asarray(out, dtype=np.float64)
    e = np.asarray(expected, dtype=np.float64)
    if o.shape != e.shape or not np.all(np.isfinite(o)):
        return math.inf
    if o.size == 0:
        return 0.0
    scale = float(np.max(np.abs(e)))
    diff = float(np.max(np.abs(o - e)))
    if scale == 0.0:
        return 0.0 if diff == 0.0 else math.inf
    return diff / scale


def simulator_enabled() -> bool:
    from numba import config

    return bool(config.ENABLE_CUDASIM)  # type: ignore[attr-defined]  # set from the environment


_SM_COUNT: list[int] = []


def sm_count() -> int:
    """SMs of the current device (1 under the simulator); cached."""
    if not _SM_COUNT:
        if simulator_enabled():
            _SM_COUNT.append(1)
        else:
            from numba import cuda

            _SM_COUNT.append(int(cuda.get_current_device().MULTIPROCESSOR_COUNT))
    return _SM_COUNT[0]


def grid_1d(n: int, threads: int = 256, blocks_per_sm: int = 32) -> tuple[int, int]:
    """``(blocks, threads)`` for a grid-stride loop over ``n`` elements: enough blocks to fill the
    GPU, never more than needed. Under the simulator (a Python thread per CUDA thread) a tiny grid
    of 2 x 32 threads, which also exercises the stride path."""
    if simulator_enabled():
        return 2, 32
    blocks = max(1, min(math.ceil(n / threads), sm_count() * blocks_per_sm))
    return blocks, threads


def _release_deferred() -> None:
    """Free the arrays of earlier benchmarks now (numba defers deallocations), so the free
    memory the refusal reads is the card's, not our own garbage."""
    if simulator_enabled():
        return
    from numba import cuda

    cuda.current_context().deallocations.clear()


def _poison(a: np.ndarray) -> None:
    if np.issubdtype(a.dtype, np.floating):
        a.fill(np.nan)
    else:
        a.fill(np.iinfo(a.dtype).max)


def _check(b: Benchmark, shape: Shape, rng: np.random.Generator) -> tuple[dict[str, Any], float]:
    """Run once on poisoned output and compare; returns the device arrays and the error."""
    from numba import cuda

    dtype = DTYPES[b.precision]
    host = b.setup(shape, dtype, rng)
    if b.output not in host:
        raise KeyError(f"setup() returned no output array {b.output!r}")
    expected = b.reference({k: np.copy(v) for k, v in host.items()}, shape)
    _poison(host[b.output])
    dev = {k: cuda.to_device(v) if isinstance(v, np.ndarray) else v for k, v in host.items()}
    b.launch(dev, shape)
    cuda.synchronize()
    out = dev[b.output].copy_to_host()
    if isinstance(expected, Sampled):
        err = max_rel_err(np.asarray(out[expected.index]), np.asarray(expected.expected))
    else:
        err = max_rel_err(out, np.asarray(expected))
    return dev, err


def _time_simulator(fn: Callable[[], None], repeats: int) -> list[float]:
    from numba import cuda

    samples = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        cuda.synchronize()
        samples.append(time.perf_counter() - t0)
    return samples


def _time_gpu(
    fn: Callable[[], None], warmup: int, repeats: int, target_s: float = 2e-3
) -> list[float]:
    from numba import cuda

    for _ in range(warmup):
        fn()
    cuda.synchronize()
    start, end = cuda.event(), cuda.event()
    fn()
    start.record()
    fn()
    end.record()
    end.synchronize()
    one = max(start.elapsed_time(end) / 1e3, 1e-7)
    inner = max(1, min(1000, math.ceil(target_s / one)))
    samples = []
    for _ in range(repeats):
        fn()  # keep the GPU busy so the start event is not taken on an idle queue
        start.record()
        for _ in range(inner):
            fn()
        end.record()
        end.synchronize()
        samples.append(start.elapsed_time(end) / 1e3 / inner)
    return samples


def run_benchmark(
    b: Benchmark,
    *,
    quick: bool = False,
    shape: Shape | None = None,
    warmup: int = 3,
    repeats: int = 10,
    peaks: Mapping[str, Any] | None = None,
    seed: int = 0,
    source: str = "builtin",
    card: CardMonitor | None = None,
) -> dict[str, Any]:
    """Check then time one benchmark; returns a ``tether.bench/1`` result dict.

    Any exception from the benchmark's own code is caught here (this is the per-benchmark
    boundary) and reported as an unverified result with its message, so one broken kernel does
    not stop the suite.

    With a ``card`` monitor (a real GPU), a run that would not fit in the free device memory is
    refused before anything is allocated, and the timed part records what the card was doing
    (``card``: clocks, power, temperature, throttle reasons, other processes).
    """
    shape = tuple(shape) if shape else b.shape_for(quick)
    sim = simulator_enabled()
    prec = b.precision
    cprec = b.compute_precision or prec
    flops = int(b.flops(shape))
    nbytes = int(b.bytes_moved(shape))
    ai = roofline.arithmetic_intensity(flops, nbytes)
    pk = (peaks or {}).get("flops", {}) or {}
    peak_f = pk.get(cprec)
    bw = (peaks or {}).get("dram_bytes_per_s")
    tol = b.tol(shape)
    res: dict[str, Any] = {
        "family": b.family,
        "kernel": b.name,
        "variant": b.variant,
        "precision": prec,
        "compute_precision": cprec,
        "shape": list(shape),
        "flops": flops,
        "bytes": nbytes,
        "ai": ai,
        "time_s": None,
        "flops_per_s": None,
        "bytes_per_s": None,
        "bound": roofline.bound(ai, peak_f, bw),
        "roofline_fraction": None,
        "verified": False,
        "max_rel_err": None,
        "tolerance": tol,
        "simulated": sim,
        "source": source,
        "error": None,
        "card": None,
    }
    if card is not None:
        _release_deferred()
        why = refusal(b.memory(shape), card.free_bytes())
        if why:
            res["error"] = why
            return res
    rng = np.random.default_rng(seed)
    try:
        dev, err = _check(b, shape, rng)
        res["max_rel_err"] = err if math.isfinite(err) else None
        if not err <= tol:
            why = (
                "output not fully written or not finite"
                if not math.isfinite(err)
                else (f"max relative error {err:.3g} exceeds {tol:.3g}")
            )
            res["error"] = f"verification failed: {why}"
            return res
        res["verified"] = True

        def fn() -> None:
            b.launch(dev, shape)

        if card is not None:
            card.begin()
        try:
            samples = _time_simulator(fn, repeats) if sim else _time_gpu(fn, warmup, repeats)
        finally:
            if card is not None:
                res["card"] = card.end()
    except Exception as exc:  # boundary: a user's kernel may fail in any way; report and go on
        res["verified"] = False
        res["error"] = f"{type(exc).__name__}: {exc}"
        return res
    st = roofline.stats(samples)
    res["time_s"] = st
    t = float(st["median"])
    if t > 0:
        res["flops_per_s"] = flops / t
        res["bytes_per_s"] = nbytes / t
        if not sim:
            res["roofline_fraction"] = roofline.roofline_fraction(
                res["flops_per_s"], res["bytes_per_s"], ai, peak_f, bw
            )
    return res
