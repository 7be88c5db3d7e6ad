"""The later rungs of the GEMM ladder, each a named variant beside ``regblock`` (kernels/gemm.py),
generated from one template so each rung differs from the one before by one idea:

* ``rb-u32``: ``regblock``'s 128 x 128 x 8 tiling with unsigned 32-bit index math (numba's signed
  indices carry wrap-around code around every access; ``u32(...)`` of an expression lets LLVM
  narrow it to 32 bits) and no bounds checks for full tiles (interior blocks and whole k-steps);
  edge tiles take the checked path;
* ``rb-vec``: + 16-byte global loads of A and B for full tiles (``vec.vload``), when K and N are
  multiples of the vector width (else the scalar path);
* ``rb-db``: + double-buffered shared memory: the next k-tile is loaded into the other buffer
  while this one is multiplied, one barrier per k-step instead of two;
* ``rb-warp``: + warp tiling: the 8 warps tile the block 2 x 4 (64 x 32 each), every thread's
  8 x 8 sub-tile is 2 x 2 blocks of 4 x 4, so its shared-memory reads are 16-byte vectors
  (conflict-free: the lanes of a warp read 8 consecutive vectors of A and broadcast B).

The arrays arrive flat (1-D, C order) with M, N, K as uint32: every index is one 32-bit
expression; M*K, K*N and M*N must stay below 2**32 (checked by the launcher).
"""

from __future__ import annotations

from typing import Any

BM = BN = 128
BK = 8
THREADS = 256
PAD = 4
RUNGS: dict[str, tuple[bool, bool, bool]] = {
    # name: (vector global loads, double buffer, warp tiling)
    "rb-u32": (False, False, False),
    "rb-vec": (True, False, False),
    "rb-db": (True, True, False),
    "rb-warp": (True, True, True),
}


def _thread_tile(warp: bool) -> tuple[list[str], list[str], list[str]]:
    """Setup lines, and the 8 row and 8 column offsets (in the block) of a thread's sub-tile."""
    if not warp:
        setup = ["ty = tid // u32(16)", "tx = tid % u32(16)"]
        return (
            setup,
            [f"ty + u32({16 * i})" for i in range(8)],
            [f"tx + u32({16 * j})" for j in range(8)],
        )
    setup = [
        "w = tid // u32(32)",
        "lane = tid % u32(32)",
        "rb = (w // u32(4)) * u32(64) + (lane // u32(4)) * u32(4)",
        "cb = (w % u32(4)) * u32(32) + (lane % u32(4)) * u32(4)",
    ]
    rows = [f"rb + u32({s * 32 + e})" for s in range(2) for e in range(4)]
    cols = [f"cb + u32({t * 16 + e})" for t in range(2) for e in range(4)]
    return setup, rows, cols


def _load_tile(vec: bool, checked: bool, buf: str, in_lanes: int) -> list[str]:
    """Lines that fill shared buffer ``buf`` with the k-tile at ``k0`` (A transposed)."""
    out: list[str] = []
    if checked or not vec:
        for p in range(BM * BK // THREADS):
            out += [f"i = tid + u32({THREADS * p})", f"r = i // u32({BK})", f"q = i % u32({BK})"]
            load = "acc(a[u32((row0 + r) * kk + k0 + q)])"
            if checked:
                out.append(f"sa[{buf}, q, r] = {load} if row0 + r < m and k0 + q < kk else zero")
            else:
                out.append(f"sa[{buf}, q, r] = {load}")
        for p in range(BK * BN // THREADS):
            out += [f"i = tid + u32({THREADS * p})", f"r = i // u32({BN})", f"q = i % u32({BN})"]
            load = "acc(b[u32((k0 + r) * n + col0 + q)])"
            if checked:
                out.append(f"sb[{buf}, r, q] = {load} if k0 + r < kk and col0 + q < n else zero")
            else:
                out.append(f"sb[{buf}, r, q] = {load}")
        return out
    per_row_a, per_row_b = BK // in_lanes, BN // in_lanes
    for total, per_row, is_a in (
        (BM * per_row_a, per_row_a, True),
        (BK * per_row_b, per_row_b, False),
    ):
        for p in range(-(-total // THREADS)):
            body = [f"v = tid + u32({THREADS * p})", f"r = v // u32({per_row})",
                    f"q = (v % u32({per_row})) * u32({in_lanes})"]  # fmt: skip
            if is_a:
                body.append(f"x = vec.vload(a, u32(((row0 + r) * kk + k0 + q) // u32({in_lanes})))")
                body += [f"sa[{buf}, q + u32({e}), r] = acc(x[{e}])" for e in range(in_lanes)]
            else:
                body.append(f"x = vec.vload(b, u32(((k0 + r) * n + col0 + q) // u32({in_lanes})))")
                body += [f"sb[{buf}, r, q + u32({e})] = acc(x[{e}])" for e in range(in_lanes)]
            if total % THREADS and (p + 1) * THREADS > total:  # fewer vectors than threads
                out.append(f"if tid + u32({THREADS * p}) < u32({total}):")
                out += ["    " + ln for ln in body]
            else:
                out += body
    return out


def _fill(vec: bool, buf: str, in_lanes: int) -> list[str]:
    """Fill ``buf`` with the k-tile at ``k0``: unchecked (vector) for full tiles, else checked."""
    fast = "vfast" if vec else "fast"
    lines = [f"if {fast} and k0 + u32({BK}) <= kk:"]
    lines += ["    " + ln for ln in _load_tile(vec, False, buf, in_lanes)]
    lines.append("else:")
    lines += ["    " + ln for ln in _load_tile(False, True, buf, in_lanes)]
    return lines


def _compute(warp: bool, buf: str, rows: list[str], cols: list[str], acc_lanes: int) -> list[str]:
    """The k-tile's 8 x 64 FMAs, unrolled over BK in the source (numba does not unroll the
    ``p`` loop: regblock's PTX has 64 FMAs in a loop)."""
    out: list[str] = []
    for p in range(BK):
        if warp:
            row = f"(u32({buf}) * u32({BK}) + u32({p}))"
            for name, arr, width, bases, reg in (
                ("va", "sa", BM + PAD, ("rb", "rb + u32(32)"), "a"),
                ("vb", "sb", BN, ("cb", "cb + u32(16)"), "b"),
            ):
                for half, base in enumerate(bases):
                    for g in range(4 // acc_lanes):
                        first = half * 4 + g * acc_lanes
                        flat = f"{row} * u32({width}) + {base} + u32({g * acc_lanes})"
                        out.append(f"{name} = vec.vload({arr}, u32(({flat}) // u32({acc_lanes})))")
                        out += [f"{reg}{first + e} = {name}[{e}]" for e in range(acc_lanes)]
        else:
            out += [f"a{i} = sa[{buf}, u32({p}), {rows[i]}]" for i in range(8)]
            out += [f"b{j} = sb[{buf}, u32({p}), {cols[j]}]" for j in range(8)]
        out += [f"c{i}_{j} += a{i} * b{j}" for i in range(8) for j in range(8)]
    return out


def source(rung: str, in_itemsize: int, acc_itemsize: int) -> str:
    """The kernel source of a rung, for inputs of ``in_itemsize`` bytes accumulated in
    ``acc_itemsize``-byte floats (names bound at exec: cuda, vec, acc, u32, zero, salign)."""
    vec, db, warp = RUNGS[rung]
    in_lanes, acc_lanes = 16 // in_itemsize, 16 // acc_itemsize
    nb = 2 if db else 1
    setup, rows, cols = _thread_tile(warp)
    body = [
        f"sa = cuda.shared.array(({nb}, {BK}, {BM + PAD}), acc, alignment=salign)",
        f"sb = cuda.shared.array(({nb}, {BK}, {BN}), acc, alignment=salign)",
        "tid = u32(cuda.threadIdx.x)",
        f"row0 = u32(cuda.blockIdx.y) * u32({BM})",
        f"col0 = u32(cuda.blockIdx.x) * u32({BN})",
        f"fast = row0 + u32({BM}) <= m and col0 + u32({BN}) <= n",
        "vfast = fast and vec_ok != u32(0)",
        f"ntiles = (kk + u32({BK - 1})) // u32({BK})",
        *setup,
    ]
    body += [f"c{i}_{j} = zero" for i in range(8) for j in range(8)]
    if db:
        body += ["k0 = u32(0)", *_fill(vec, "0", in_lanes), "cuda.syncthreads()"]
        body.append("for kt in range(ntiles):")
        loop = ["cur = u32(kt % u32(2))", "if kt + u32(1) < ntiles:",
                f"    k0 = u32((kt + u32(1)) * u32({BK}))"]  # fmt: skip
        loop += ["    " + ln for ln in _fill(vec, "u32(1) - cur", in_lanes)]
        loop += _compute(warp, "cur", rows, cols, acc_lanes)
        loop.append("cuda.syncthreads()")
    else:
        body.append("for kt in range(ntiles):")
        loop = [f"k0 = u32(kt * u32({BK}))", *_fill(vec, "0", in_lanes), "cuda.syncthreads()"]
        loop += _compute(warp, "0", rows, cols, acc_lanes)
        loop.append("cuda.syncthreads()")
    body += ["    " + ln for ln in loop]
    for i in range(8):
        body.append(f"r = row0 + {rows[i]}")
        for j in range(8):
            body.append(f"if fast or (r < m and col0 + {cols[j]} < n):")
            body.append(f"    c[u32(r * n + col0 + {cols[j]})] = c{i}_{j}")
    return "def gemm_rung(a, b, c, m, n, kk, vec_ok):\n" + "".join(f"    {ln}\n" for ln in body)


def make(rung: str, acc: Any, in_itemsize: int, acc_itemsize: int) -> Any:
    """Compile a rung for an accumulator type (``cuda.jit``, lazily per signature)."""
    from numba import cuda, uint32

    from . import vec
    from .harness import simulator_enabled

    ns: dict[str, Any] = {"cuda": cuda, "vec": vec, "acc": acc, "u32": uint32, "zero": acc(0),
                          "salign": None if simulator_enabled() else 16}  # fmt: skip
    exec(compile(source(rung, in_itemsize, acc_itemsize), f"<gemm_{rung}>", "exec"), ns)
    return cuda.jit(ns["gemm_rung"])
