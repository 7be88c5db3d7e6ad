"""Compute ceilings, ERT style: every element goes through a chain of F fused multiply-adds
``x = x * alpha + beta``; sweeping F sweeps the arithmetic intensity (2F FLOPs per element,
2 x itemsize bytes per element) from the memory slope to the compute ceiling.

Each thread keeps ``CHAINS`` elements in flight (independent chains, for instruction-level
parallelism) and the chain is unrolled ``min(F, 8)`` deep; the kernel source is generated per F so
that F is a compile-time constant and the accumulators stay in registers.

With ``alpha = 0.75, beta = 0.25`` every chain contracts towards 1.0, so rounding errors stay
bounded (about 4 ulp) for any F and the closed form
``alpha^F x + beta (1 - alpha^F) / (1 - alpha)`` is a cheap reference.

fp16 is scalar half arithmetic: the theoretical fp16 peak counts packed half2 lanes, so a scalar
chain can reach at most half of it.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from numba import cuda

from .harness import Benchmark, grid_1d

CHAINS = 4
ALPHA, BETA = 0.75, 0.25
FULL_N = 1 << 25
QUICK_N = 300
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

_CACHE: dict[int, Any] = {}


def kernel_source(fmas: int, chains: int = CHAINS) -> str:
    """The generated kernel source for ``fmas`` FMAs per element (a power of two)."""
    if fmas < 1 or fmas & (fmas - 1):
        raise ValueError(f"fmas must be a power of two, got {fmas}")
    unroll = min(fmas, 8)
    pad = " " * 8
    loads = "\n".join(f"{pad}x{c} = a[i + {c} * s]" for c in range(chains))
    body = "\n".join(
        f"{pad}    x{c} = x{c} * alpha + beta" for _ in range(unroll) for c in range(chains)
    )
    stores = "\n".join(f"{pad}out[i + {c} * s] = x{c}" for c in range(chains))
    return _TEMPLATE.format(
        last=chains - 1,
        loads=loads,
        outer=fmas // unroll,
        body=body,
        stores=stores,
        chains=chains,
        fmas=fmas,
    )


def make_kernel(fmas: int):
    """The compiled (lazily, per dtype) ERT kernel for ``fmas`` FMAs per element; cached."""
    if fmas not in _CACHE:
        ns: dict[str, Any] = {"cuda": cuda}
        exec(compile(kernel_source(fmas), f"<ert_kernel_{fmas}>", "exec"), ns)
        _CACHE[fmas] = cuda.jit(ns["ert_kernel"])
    return _CACHE[fmas]


def reference(x: np.ndarray, fmas: int) -> np.ndarray:
    """Closed form of F steps of ``x = alpha x + beta`` (in float64)."""
    af = ALPHA**fmas
    return af * x.astype(np.float64) + BETA * (1.0 - af) / (1.0 - ALPHA)


def _setup(shape, dtype, rng) -> dict[str, Any]:
    (n,) = shape
    return {
        "a": rng.uniform(0.0, 1.0, n).astype(dtype),
        "out": np.empty(n, dtype=dtype),
        "alpha": dtype(ALPHA),
        "beta": dtype(BETA),
    }


def _launcher(fmas: int):
    def launch(d: dict[str, Any], shape) -> None:
        blocks, threads = grid_1d(shape[0])
        make_kernel(fmas)[blocks, threads](d["a"], d["out"], d["alpha"], d["beta"])

    return launch


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
        for f in QUICK_SWEEP if quick else FULL_SWEEP:
            out.append(
                Benchmark(
                    name="fma",
                    variant=f"chain{f}",
                    family="fma",
                    precision=prec,
                    shape=(FULL_N,),
                    quick_shape=(QUICK_N,),
                    setup=_setup,
                    launch=_launcher(f),
                    reference=_reference_for(f),
                    flops=_flops_for(f),
                    bytes_moved=_bytes_for(item),
                )
            )
    return out
