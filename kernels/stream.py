"""STREAM-style bandwidth kernels: copy, scale, add, triad (grid-stride loops).

Full-size buffers are 512 MiB each, far larger than any current L2 (50 MiB on H100), so the
traffic goes to DRAM. Byte model: compulsory traffic, STREAM convention (reads + writes, no
write-allocate): copy/scale move 2 arrays, add/triad 3.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from numba import cuda

from .harness import Benchmark, grid_1d

FULL_BYTES = 512 << 20
QUICK_N = 1000  # not a multiple of the simulator grid, so the loop tail is exercised


@cuda.jit
def copy_kernel(out, a):
    i = cuda.grid(1)
    s = cuda.gridsize(1)
    while i < out.size:
        out[i] = a[i]
        i += s


@cuda.jit
def scale_kernel(out, a, q):
    i = cuda.grid(1)
    s = cuda.gridsize(1)
    while i < out.size:
        out[i] = q * a[i]
        i += s


@cuda.jit
def add_kernel(out, a, b):
    i = cuda.grid(1)
    s = cuda.gridsize(1)
    while i < out.size:
        out[i] = a[i] + b[i]
        i += s


@cuda.jit
def triad_kernel(out, a, b, q):
    i = cuda.grid(1)
    s = cuda.gridsize(1)
    while i < out.size:
        out[i] = a[i] + q * b[i]
        i += s


def _setup(nin: int):
    def setup(shape, dtype, rng) -> dict[str, np.ndarray]:
        (n,) = shape
        d = {"out": np.empty(n, dtype=dtype)}
        for name in "ab"[:nin]:
            d[name] = rng.uniform(-1.0, 1.0, n).astype(dtype)
        d["q"] = dtype(3.0)  # a typed scalar, passed by value
        return d

    return setup


def benchmarks(precisions: list[str]) -> list[Benchmark]:
    """copy, scale, add and triad at each precision."""
    out = []
    for prec in precisions:
        item = {"fp64": 8, "fp32": 4, "fp16": 2}[prec]
        n_full = FULL_BYTES // item
        specs = [
            # name, kernel, inputs, scalar, reference, flops/elem, arrays moved
            ("copy", copy_kernel, ("a",), False, lambda h: h["a"], 0, 2),
            ("scale", scale_kernel, ("a",), True, lambda h: h["q"] * h["a"], 1, 2),
            ("add", add_kernel, ("a", "b"), False, lambda h: h["a"] + h["b"], 1, 3),
            ("triad", triad_kernel, ("a", "b"), True, lambda h: h["a"] + h["q"] * h["b"], 2, 3),
        ]
        for name, kernel, args, scalar, ref, fpe, arrays in specs:
            out.append(
                Benchmark(
                    name=name,
                    variant="grid-stride",
                    family="stream",
                    precision=prec,
                    shape=(n_full,),
                    quick_shape=(QUICK_N,),
                    setup=_setup(len(args)),
                    launch=_stream_launch(kernel, args, scalar),
                    reference=(lambda r: lambda h, s: r(h))(ref),
                    flops=(lambda f: lambda s: f * s[0])(fpe),
                    bytes_moved=(lambda a, it: lambda s: a * s[0] * it)(arrays, item),
                )
            )
    return out


def _stream_launch(kernel, args: tuple[str, ...], scalar: bool):
    def launch(d: dict[str, Any], shape) -> None:
        blocks, threads = grid_1d(shape[0])
        extra = (d["q"],) if scalar else ()
        kernel[blocks, threads](d["out"], *(d[a] for a in args), *extra)

    return launch
