"""STREAM-style bandwidth kernels: copy, scale, add, triad.

Two variants, both kept so users can compare their own kernels with either rung:

* ``grid-stride``: one element per thread per step, signed 64-bit indices (numba's default:
  every access carries wrap-around handling for negative indices: SEL/ISETP pairs in the SASS);
* ``vec16`` (copy and triad): unsigned indices (no wrap-around code), one 16-byte vector per
  thread per step through :mod:`kernels.vec` (``ld.global.v4.f32`` / ``v2.f64``), the few
  elements past the last whole vector done by the first threads; fp16 works on the arrays viewed
  as uint32 (two halves each), its triad in packed ``fma.rn.f16x2``.

Full-size buffers are 512 MiB each, far larger than any current L2 (50 MiB on H100), so the
traffic goes to DRAM. Byte model: compulsory traffic, STREAM convention (reads + writes, no
write-allocate): copy/scale move 2 arrays, add/triad 3.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from numba import cuda, float32, float64, types, uint32, uint64

from . import vec
from .harness import Benchmark, grid_1d

FULL_BYTES = 512 << 20
QUICK_N = 1000  # not a multiple of the simulator grid, so the loop tail is exercised
QUICK_N_VEC = 1002  # not a whole number of 16-byte vectors at any precision: the tail runs
VARIANTS = ("grid-stride", "vec16")
_NUMBA: dict[str, Any] = {"fp64": float64, "fp32": float32, "fp16": types.float16}


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


@cuda.jit
def copy_vec16(out, a, lanes):
    """``lanes``: elements per 16-byte vector (4 for fp32 and uint32 views, 2 for fp64)."""
    n = uint64(out.size)
    nv = n // lanes
    i = uint64(cuda.threadIdx.x) + uint64(cuda.blockIdx.x) * uint64(cuda.blockDim.x)
    s = uint64(cuda.blockDim.x) * uint64(cuda.gridDim.x)
    t = i + nv * lanes
    while i < nv:
        vec.vstore(out, i, vec.vload(a, i))
        i += s
    if t < n:
        out[t] = a[t]


@cuda.jit
def triad_vec16_f32(out, a, b, q):
    n = uint64(out.size)
    nv = n // uint64(4)
    i = uint64(cuda.threadIdx.x) + uint64(cuda.blockIdx.x) * uint64(cuda.blockDim.x)
    s = uint64(cuda.blockDim.x) * uint64(cuda.gridDim.x)
    t = i + nv * uint64(4)
    while i < nv:
        x = vec.vload(a, i)
        y = vec.vload(b, i)
        vec.vstore(out, i, (x[0] + q * y[0], x[1] + q * y[1], x[2] + q * y[2], x[3] + q * y[3]))
        i += s
    if t < n:
        out[t] = a[t] + q * b[t]


@cuda.jit
def triad_vec16_f64(out, a, b, q):
    n = uint64(out.size)
    nv = n // uint64(2)
    i = uint64(cuda.threadIdx.x) + uint64(cuda.blockIdx.x) * uint64(cuda.blockDim.x)
    s = uint64(cuda.blockDim.x) * uint64(cuda.gridDim.x)
    t = i + nv * uint64(2)
    while i < nv:
        x = vec.vload(a, i)
        y = vec.vload(b, i)
        vec.vstore(out, i, (x[0] + q * y[0], x[1] + q * y[1]))
        i += s
    if t < n:
        out[t] = a[t] + q * b[t]


@cuda.jit
def triad_vec16_h2(out, a, b, q2):
    """fp16 triad on uint32 views (two halves each): four packed ``fma.rn.f16x2`` per vector."""
    n = uint64(out.size)
    nv = n // uint64(4)
    i = uint64(cuda.threadIdx.x) + uint64(cuda.blockIdx.x) * uint64(cuda.blockDim.x)
    s = uint64(cuda.blockDim.x) * uint64(cuda.gridDim.x)
    t = i + nv * uint64(4)
    while i < nv:
        x = vec.vload(a, i)
        y = vec.vload(b, i)
        vec.vstore(
            out,
            i,
            (
                vec.hfma2(q2, y[0], x[0]),
                vec.hfma2(q2, y[1], x[1]),
                vec.hfma2(q2, y[2], x[2]),
                vec.hfma2(q2, y[3], x[3]),
            ),
        )
        i += s
    if t < n:
        out[t] = vec.hfma2(q2, b[t], a[t])


def half2(x: float) -> np.uint32:
    """``x`` in both halves of a packed half2."""
    return np.array([x, x], dtype=np.float16).view(np.uint32)[0]


def _vec16_launch(name: str, precision: str):
    def launch(d: dict[str, Any], shape) -> None:
        arrays = [d["out"], d["a"]] + ([d["b"]] if name == "triad" else [])
        if precision == "fp16":
            if shape[0] % 2:
                raise ValueError("the fp16 vec16 kernels need an even length (uint32 views)")
            arrays = [x.view(np.uint32) for x in arrays]
        vec.check_aligned(*arrays)
        n_vec = max(1, arrays[0].size * arrays[0].dtype.itemsize // vec.VECTOR_BYTES)
        blocks, threads = grid_1d(n_vec)
        if name == "copy":
            copy_vec16[blocks, threads](*arrays, np.uint64(vec.lanes(arrays[0].dtype.itemsize)))
        elif precision == "fp16":
            triad_vec16_h2[blocks, threads](*arrays, half2(float(d["q"])))
        else:
            k = triad_vec16_f32 if precision == "fp32" else triad_vec16_f64
            k[blocks, threads](*arrays, d["q"])

    return launch


def compile_target(name: str, variant: str, precision: str) -> tuple[Any, tuple]:
    """(kernel, signature) that ``variant`` of ``name`` runs at ``precision`` (for PTX checks)."""
    t = _NUMBA[precision]
    if variant == "grid-stride":
        k = {"copy": copy_kernel, "triad": triad_kernel}[name]
        return k, (t[:], t[:]) if name == "copy" else (t[:], t[:], t[:], t)
    if precision == "fp16":
        t = uint32
    arr = t[::1]
    if name == "copy":
        return copy_vec16, (arr, arr, uint64)
    k = {"fp64": triad_vec16_f64, "fp32": triad_vec16_f32, "fp16": triad_vec16_h2}[precision]
    return k, (arr, arr, arr, t)


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
    """copy, scale, add and triad at each precision (grid-stride), and copy and triad vec16."""
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
            if name in ("copy", "triad"):
                out.append(
                    Benchmark(
                        name=name,
                        variant="vec16",
                        family="stream",
                        precision=prec,
                        shape=(n_full,),
                        quick_shape=(QUICK_N_VEC,),
                        setup=_setup(len(args)),
                        launch=_vec16_launch(name, prec),
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
