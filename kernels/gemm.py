"""Dense GEMM ``C = A @ B`` (A: M x K, B: K x N, row-major), three ways:

* ``naive``: one thread per element of C, dot product straight from global memory;
* ``tiled``: 16 x 16 shared-memory tiles (each input element read from DRAM once per tile row);
* ``regblock``: 2-D register blocking, 128 x 128 block tile, BK = 8, 256 threads, each thread
  accumulating an 8 x 8 sub-tile in registers (strided so that shared-memory reads are
  conflict-free and stores coalesced); A's tile is stored transposed in shared memory (padded).
  The kernel source is generated so that the 64 accumulators are plain scalars (registers), not
  a local array.

Later rungs (``rb-u32``, ``rb-vec``, ``rb-db``, ``rb-warp``: 32-bit unsigned index math, no
bounds checks for full tiles, 16-byte global loads, double-buffered shared memory, warp tiling)
are generated in :mod:`kernels.gemm_rungs`.

fp16 takes float16 inputs and accumulates and writes in float32 (``compute_precision`` fp32: its
roof is the fp32 ceiling); fp32 and fp64 compute in their own precision. Tolerance: the compute
precision's bound times sqrt(K). Byte model: compulsory traffic (A and B read once, C written
once); FLOP model: 2MNK.
"""

from __future__ import annotations

import math
from typing import Any

import numba
import numpy as np
from numba import cuda

from . import gemm_rungs, roofline, vec
from .harness import Benchmark, Sampled

FULL_SHAPE = (4096, 4096, 4096)
QUICK_SHAPE = (24, 20, 12)  # partial tiles in every dimension
TILE = 16
BM = BN = 128
BK = 8
TM = TN = 8
THREADS = 256  # (BM / TM) * (BN / TN)
PAD = 4
SAMPLE_ROWS = 64

_ACC = {"fp64": numba.float64, "fp32": numba.float32, "fp16": numba.float32}
_OUT_DTYPE = {"fp64": np.float64, "fp32": np.float32, "fp16": np.float32}
_CACHE: dict[tuple[str, str], Any] = {}


def _make_naive(acc):
    @cuda.jit
    def gemm_naive(a, b, c):
        col, row = cuda.grid(2)
        m = a.shape[0]
        kk = a.shape[1]
        n = b.shape[1]
        if row < m and col < n:
            s = acc(0)
            for p in range(kk):
                s += acc(a[row, p]) * acc(b[p, col])
            c[row, col] = s

    return gemm_naive


def _make_tiled(acc):
    @cuda.jit
    def gemm_tiled(a, b, c):
        sa = cuda.shared.array((TILE, TILE), acc)
        sb = cuda.shared.array((TILE, TILE), acc)
        tx = cuda.threadIdx.x
        ty = cuda.threadIdx.y
        col = cuda.blockIdx.x * TILE + tx
        row = cuda.blockIdx.y * TILE + ty
        m = a.shape[0]
        kk = a.shape[1]
        n = b.shape[1]
        zero = acc(0)
        s = zero
        for t0 in range(0, kk, TILE):
            if row < m and t0 + tx < kk:
                sa[ty, tx] = acc(a[row, t0 + tx])
            else:
                sa[ty, tx] = zero
            if col < n and t0 + ty < kk:
                sb[ty, tx] = acc(b[t0 + ty, col])
            else:
                sb[ty, tx] = zero
            cuda.syncthreads()
            for p in range(TILE):
                s += sa[ty, p] * sb[p, tx]
            cuda.syncthreads()
        if row < m and col < n:
            c[row, col] = s

    return gemm_tiled


def regblock_source() -> str:
    """Source of the register-blocked kernel (``acc`` is the accumulator type's caster)."""
    dy, dx = BM // TM, BN // TN  # 16 x 16 threads
    a_loads = (BM * BK) // THREADS
    b_loads = (BK * BN) // THREADS
    p4, p8, p12 = " " * 4, " " * 8, " " * 12
    lines = [
        "def gemm_regblock(a, b, c):",
        f"{p4}sa = cuda.shared.array(({BK}, {BM + PAD}), acc)",
        f"{p4}sb = cuda.shared.array(({BK}, {BN}), acc)",
        f"{p4}tid = cuda.threadIdx.x",
        f"{p4}tx = tid % {dx}",
        f"{p4}ty = tid // {dx}",
        f"{p4}row0 = cuda.blockIdx.y * {BM}",
        f"{p4}col0 = cuda.blockIdx.x * {BN}",
        f"{p4}m = a.shape[0]",
        f"{p4}kk = a.shape[1]",
        f"{p4}n = b.shape[1]",
        f"{p4}zero = acc(0)",
    ]
    lines += [f"{p4}c{i}_{j} = zero" for i in range(TM) for j in range(TN)]
    lines.append(f"{p4}for k0 in range(0, kk, {BK}):")
    for p in range(a_loads):
        lines += [
            f"{p8}idx = tid + {THREADS * p}",
            f"{p8}r = idx // {BK}",
            f"{p8}q = idx % {BK}",
            f"{p8}if row0 + r < m and k0 + q < kk:",
            f"{p12}sa[q, r] = acc(a[row0 + r, k0 + q])",
            f"{p8}else:",
            f"{p12}sa[q, r] = zero",
        ]
    for p in range(b_loads):
        lines += [
            f"{p8}idx = tid + {THREADS * p}",
            f"{p8}r = idx // {BN}",
            f"{p8}q = idx % {BN}",
            f"{p8}if k0 + r < kk and col0 + q < n:",
            f"{p12}sb[r, q] = acc(b[k0 + r, col0 + q])",
            f"{p8}else:",
            f"{p12}sb[r, q] = zero",
        ]
    lines.append(f"{p8}cuda.syncthreads()")
    lines.append(f"{p8}for p in range({BK}):")
    lines += [f"{p12}a{i} = sa[p, ty + {dy * i}]" for i in range(TM)]
    lines += [f"{p12}b{j} = sb[p, tx + {dx * j}]" for j in range(TN)]
    lines += [f"{p12}c{i}_{j} += a{i} * b{j}" for i in range(TM) for j in range(TN)]
    lines.append(f"{p8}cuda.syncthreads()")
    for i in range(TM):
        lines.append(f"{p4}r = row0 + ty + {dy * i}")
        lines.append(f"{p4}if r < m:")
        for j in range(TN):
            lines.append(f"{p8}if col0 + tx + {dx * j} < n:")
            lines.append(f"{p12}c[r, col0 + tx + {dx * j}] = c{i}_{j}")
    return "\n".join(lines) + "\n"


def _make_regblock(acc):
    ns: dict[str, Any] = {"cuda": cuda, "acc": acc}
    exec(compile(regblock_source(), "<gemm_regblock>", "exec"), ns)
    return cuda.jit(ns["gemm_regblock"])


_MAKERS = {"naive": _make_naive, "tiled": _make_tiled, "regblock": _make_regblock}
VARIANTS = (*_MAKERS, *gemm_rungs.RUNGS)


def kernel(variant: str, precision: str):
    """The compiled kernel for a variant and precision (cached)."""
    key = (variant, precision)
    if key not in _CACHE:
        if variant in gemm_rungs.RUNGS:
            in_item = roofline.ITEMSIZE[precision]
            acc_item = np.dtype(_OUT_DTYPE[precision]).itemsize
            _CACHE[key] = gemm_rungs.make(variant, _ACC[precision], in_item, acc_item)
        else:
            _CACHE[key] = _MAKERS[variant](_ACC[precision])
    return _CACHE[key]


def _launch_rung(k, d: dict[str, Any], shape, precision: str) -> None:
    m, n, kk = shape
    if max(m * kk, kk * n, m * n) >= 1 << 32:
        raise ValueError(f"{m}x{n}x{kk} is too large for 32-bit indices (the rb-* rungs)")
    lanes = 16 // roofline.ITEMSIZE[precision]
    vec_ok = kk % lanes == 0 and n % lanes == 0
    flat = [d["a"].reshape(m * kk), d["b"].reshape(kk * n), d["out"].reshape(m * n)]
    if vec_ok:
        vec.check_aligned(*flat[:2])
    u = np.uint32
    grid = (math.ceil(n / gemm_rungs.BN), math.ceil(m / gemm_rungs.BM))
    k[grid, gemm_rungs.THREADS](*flat, u(m), u(n), u(kk), u(vec_ok))


def _setup(shape, dtype, rng) -> dict[str, Any]:
    m, n, k = shape
    out_dtype = np.float32 if dtype == np.float16 else dtype
    return {
        "a": rng.uniform(-1.0, 1.0, (m, k)).astype(dtype),
        "b": rng.uniform(-1.0, 1.0, (k, n)).astype(dtype),
        "out": np.empty((m, n), dtype=out_dtype),
    }


def reference(h, shape) -> Any:
    """A @ B in float64; for large M only a fixed sample of rows (checked against those rows)."""
    m = shape[0]
    a = h["a"].astype(np.float64)
    b = h["b"].astype(np.float64)
    if m <= 4 * SAMPLE_ROWS:
        return a @ b
    rows = np.sort(np.random.default_rng(1).choice(m, SAMPLE_ROWS, replace=False))
    return Sampled(index=rows, expected=a[rows] @ b)


def _launcher(variant: str, precision: str):
    def launch(d: dict[str, Any], shape) -> None:
        m, n, _ = shape
        k = kernel(variant, precision)
        if variant in gemm_rungs.RUNGS:
            _launch_rung(k, d, shape, precision)
        elif variant == "regblock":
            k[(math.ceil(n / BN), math.ceil(m / BM)), THREADS](d["a"], d["b"], d["out"])
        else:
            k[(math.ceil(n / TILE), math.ceil(m / TILE)), (TILE, TILE)](d["a"], d["b"], d["out"])

    return launch


def benchmarks(precisions: list[str], shape: tuple[int, int, int] | None = None) -> list[Benchmark]:
    """naive, tiled and regblock GEMM at each precision (``shape`` = (M, N, K) overrides both
    the full and the quick size)."""
    out = []
    for prec in precisions:
        item = roofline.ITEMSIZE[prec]
        out_item = np.dtype(_OUT_DTYPE[prec]).itemsize
        cprec = "fp32" if prec == "fp16" else prec
        for variant in VARIANTS:
            out.append(
                Benchmark(
                    name="gemm",
                    variant=variant,
                    family="gemm",
                    precision=prec,
                    compute_precision=cprec,
                    shape=tuple(shape or FULL_SHAPE),
                    quick_shape=tuple(shape or QUICK_SHAPE),
                    setup=_setup,
                    launch=_launcher(variant, prec),
                    reference=reference,
                    flops=lambda s: 2 * s[0] * s[1] * s[2],
                    bytes_moved=(
                        lambda it, ot: lambda s: (s[0] * s[2] + s[2] * s[1]) * it + s[0] * s[1] * ot
                    )(item, out_item),
                    tol_scale=lambda s: roofline.gemm_tol_scale(s[2]),
                )
            )
    return out
