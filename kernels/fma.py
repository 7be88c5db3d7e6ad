"""Compute ceilings, ERT style: every element goes through a chain of F fused multiply-adds
``x = x * alpha + beta``; sweeping F sweeps the arithmetic intensity (2F FLOPs per element,
2 x itemsize bytes per element) from the memory slope to the compute ceiling.

Each thread keeps ``CHAINS`` elements in flight (independent chains, for instruction-level
parallelism) and the chain is unrolled ``min(F, 8)`` deep; the kernel source is generated per F so
that F is a compile-time constant and the accumulators stay in registers.

With ``alpha = 0.75, beta = 0.25`` every chain contracts towards 1.0, so rounding errors stay
bounded (about 4 ulp) for any F and the closed form
``alpha^F x + beta (1 - alpha^F) / (1 - alpha)`` is a cheap reference.

Variants (the sweep runs each; the measured ceiling is the best of all, and the report names the
variant that set it):

* ``chainF``: 4 chains per thread, signed 64-bit indices (numba's default, with wrap-around
  handling around each access), unrolled 8 deep -- the original rung;
* ``chainF-ilp8``: 8 chains per thread, unsigned indices (no wrap-around code), contiguous
  arrays, unrolled 16 deep: more independent FMAs in flight per warp, less non-FMA work;
* ``chainF-half2`` (fp16 only): the fp16 array viewed as uint32, each chain a packed half2
  advanced by ``fma.rn.f16x2`` (:func:`kernels.vec.hfma2`): two lanes per instruction, the rate
  the theoretical fp16 peak counts. The scalar fp16 rungs can reach at most half of that peak.

alpha and beta are passed as scalars of the kernel's own precision, so the FMAs stay in it (the
PTX of the fp32 chain has ``fma.rn.f32`` and no ``cvt.f64``: tests/test_kernels_ptx.py).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from numba import cuda, float32, float64, uint32

from . import vec
from .harness import Benchmark, grid_1d

CHAINS = 4
ALPHA, BETA = 0.75, 0.25
FULL_N = 1 << 25
QUICK_N = 300
QUICK_N_WIDE = 1202  # the 8-chain loops need n > 8 x the simulator's 64 threads (x2 for half2)
FULL_SWEEP = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
QUICK_SWEEP = (1, 8, 32)

_TEMPLATE = """
def ert_kernel(a, out, alpha, beta):
    n = a.size
    i = cuda.grid(1)
    s = cuda.gridsize(1)
    while i + {last} * s < n:
{loads}
        for _ in range({outer}):
{body}
{stores}
        i += {chains} * s
    while i < n:
        x = a[i]
        for _ in range({fmas}):
            x = x * alpha + beta
        out[i] = x
        i += s
"""

# Unsigned indices: numba emits no wrap-around handling for them. {step} is the FMA (or hfma2).
_TEMPLATE_U = """
def ert_kernel(a, out, alpha, beta):
    n = uint64(a.size)
    i = uint64(cuda.threadIdx.x) + uint64(cuda.blockIdx.x) * uint64(cuda.blockDim.x)
    s = uint64(cuda.blockDim.x) * uint64(cuda.gridDim.x)
    while i + uint64({last}) * s < n:
{loads}
        for _ in range({outer}):
{body}
{stores}
        i += uint64({chains}) * s
    while i < n:
        x = a[i]
        for _ in range({fmas}):
            x = {step_x}
        out[i] = x
        i += s
"""

VARIANTS = ("", "ilp8", "half2")
"""Suffixes of the ``chainF`` variant names (``""``: the original rung)."""
_SHAPE = {"": (CHAINS, 8), "ilp8": (8, 16), "half2": (8, 16)}  # (chains, unroll)

_CACHE: dict[tuple[int, str], Any] = {}


def kernel_source(fmas: int, variant: str = "") -> str:
    """The generated kernel source for ``fmas`` FMAs per element (a power of two)."""
    if fmas < 1 or fmas & (fmas - 1):
        raise ValueError(f"fmas must be a power of two, got {fmas}")
    chains, unroll = _SHAPE[variant]
    unroll = min(fmas, unroll)
    pad = " " * 8
    step = "vec.hfma2(x{c}, alpha, beta)" if variant == "half2" else "x{c} * alpha + beta"
    idx = [f"uint64({c})" if variant else str(c) for c in range(chains)]
    loads = "\n".join(f"{pad}x{c} = a[i + {idx[c]} * s]" for c in range(chains))
    body = "\n".join(
        f"{pad}    x{c} = {step.format(c=c)}" for _ in range(unroll) for c in range(chains)
    )
    stores = "\n".join(f"{pad}out[i + {idx[c]} * s] = x{c}" for c in range(chains))
    return (_TEMPLATE_U if variant else _TEMPLATE).format(
        last=chains - 1,
        loads=loads,
        outer=fmas // unroll,
        body=body,
        stores=stores,
        chains=chains,
        fmas=fmas,
        step_x=step.format(c=""),
    )


def make_kernel(fmas: int, variant: str = ""):
    """The compiled (lazily, per dtype) ERT kernel for ``fmas`` FMAs per element; cached."""
    key = (fmas, variant)
    if key not in _CACHE:
        from numba import uint64

        ns: dict[str, Any] = {"cuda": cuda, "vec": vec, "uint64": uint64}
        name = f"<ert_kernel_{fmas}{variant}>"
        exec(compile(kernel_source(fmas, variant), name, "exec"), ns)
        _CACHE[key] = cuda.jit(ns["ert_kernel"])
    return _CACHE[key]


def compile_target(fmas: int, variant: str, precision: str) -> tuple[Any, tuple]:
    """(kernel, signature) of a variant at a precision, for PTX checks (half2: uint32 arrays)."""
    from numba import types

    t: Any  # numba's scalar types share no base that can be sliced into an array type
    if variant == "half2" or (variant and precision == "fp16"):
        t = uint32
    else:
        t = {"fp64": float64, "fp32": float32, "fp16": types.float16}[precision]
    arr = t[::1] if variant else t[:]
    return make_kernel(fmas, variant), (arr, arr, t, t)


def reference(x: np.ndarray, fmas: int) -> np.ndarray:
    """Closed form of F steps of ``x = alpha x + beta`` (in float64)."""
    af = ALPHA**fmas
    return af * x.astype(np.float64) + BETA * (1.0 - af) / (1.0 - ALPHA)


def variants_for(precision: str) -> tuple[str, ...]:
    """half2 is the fp16 rung only; ilp8 at fp16 stays scalar half."""
    return tuple(v for v in VARIANTS if v != "half2" or precision == "fp16")


def _setup(shape, dtype, rng) -> dict[str, Any]:
    (n,) = shape
    return {
        "a": rng.uniform(0.0, 1.0, n).astype(dtype),
        "out": np.empty(n, dtype=dtype),
        "alpha": dtype(ALPHA),
        "beta": dtype(BETA),
    }


def _launcher(fmas: int, variant: str = ""):
    def launch(d: dict[str, Any], shape) -> None:
        a, out, alpha, beta = d["a"], d["out"], d["alpha"], d["beta"]
        if variant == "half2":
            if shape[0] % 2:
                raise ValueError("the half2 chain needs an even length (uint32 views)")
            a, out = a.view(np.uint32), out.view(np.uint32)
            alpha, beta = _half2(float(alpha)), _half2(float(beta))
        blocks, threads = grid_1d(a.size)
        make_kernel(fmas, variant)[blocks, threads](a, out, alpha, beta)

    return launch


def _half2(x: float) -> np.uint32:
    return np.array([x, x], dtype=np.float16).view(np.uint32)[0]


def _reference_for(fmas: int):
    return lambda h, shape: reference(h["a"], fmas)


def _flops_for(fmas: int):
    return lambda shape: 2 * fmas * shape[0]


def _bytes_for(itemsize: int):
    return lambda shape: 2 * itemsize * shape[0]


def benchmarks(precisions: list[str], quick: bool = False) -> list[Benchmark]:
    """The FMA-chain sweep at each precision."""
    out = []
    for prec in precisions:
        item = {"fp64": 8, "fp32": 4, "fp16": 2}[prec]
        for variant in variants_for(prec):
            for f in QUICK_SWEEP if quick else FULL_SWEEP:
                out.append(_bench(prec, item, f, variant))
    return out


def _bench(prec: str, item: int, f: int, variant: str) -> Benchmark:
    return Benchmark(
        name="fma",
        variant=f"chain{f}-{variant}" if variant else f"chain{f}",
        family="fma",
        precision=prec,
        shape=(FULL_N,),
        quick_shape=(QUICK_N_WIDE if variant else QUICK_N,),
        setup=_setup,
        launch=_launcher(f, variant),
        reference=_reference_for(f),
        flops=_flops_for(f),
        bytes_moved=_bytes_for(item),
    )
