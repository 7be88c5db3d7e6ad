"""16-byte global loads and stores, and packed half2 arithmetic, for Numba-CUDA kernels.

Numba-CUDA 0.30 cannot say either in Python: an array's data pointer has no alignment the
compiler can see (four adjacent ``a[4*i + c]`` loads stay four ``ld.global.f32``), and its fp16
support binds only scalar ``__half`` functions (``numba/cuda/_internal/cuda_fp16.py`` has no
``__half2``/``__hfma2``). So these are small intrinsics:

* ``vload(a, i)`` / ``vstore(a, i, values)``: the ``i``-th 16-byte vector of a contiguous array
  (``16 // itemsize`` lanes, a tuple), as one ``<N x T>`` load/store with ``align 16``, which the
  NVPTX backend emits as ``ld.global.v4.f32`` / ``ld.global.v2.f64`` (and ``v4.b32`` for uint32).
  The array's base must be 16-byte aligned: device allocations are (256 bytes); views of them
  at odd offsets are not, and :func:`check_aligned` refuses them.
* ``hfma2(x, y, z)``: ``fma.rn.f16x2`` on three half2 values each packed in a uint32 (an fp16
  array viewed as uint32 holds two halves per element); ``h2f(x)`` unpacks a half2 into two fp32.

Under the Numba CUDA simulator (plain Python) the same names are NumPy implementations, so every
kernel using them is checked against NumPy here, and the PTX they produce is checked by tests
compiling for sm_90.
"""

from __future__ import annotations

import numpy as np

from .harness import simulator_enabled

VECTOR_BYTES = 16


def lanes(itemsize: int) -> int:
    """Elements of ``itemsize`` bytes in one 16-byte vector."""
    return VECTOR_BYTES // itemsize


def check_aligned(*arrays: object) -> None:
    """Refuse device arrays whose data is not 16-byte aligned (``vload`` would fault)."""
    if simulator_enabled():
        return
    for a in arrays:
        ptr = a.device_ctypes_pointer.value  # type: ignore[attr-defined]
        if ptr and ptr % VECTOR_BYTES:
            raise ValueError(f"device array at 0x{ptr:x} is not 16-byte aligned")


def _h2(x: int) -> np.ndarray:
    return np.array([x], dtype=np.uint32).view(np.float16).astype(np.float64)


def _pack(lo: float, hi: float) -> int:
    return int(np.array([lo, hi], dtype=np.float16).view(np.uint32)[0])


if simulator_enabled():

    def vload(a, i):
        n = lanes(a.dtype.itemsize)
        flat = a.reshape(-1) if a.ndim > 1 else a  # shared arrays: the vector index is flat
        return tuple(flat[i * n + c] for c in range(n))

    def vstore(a, i, values):
        n = lanes(a.dtype.itemsize)
        flat = a.reshape(-1) if a.ndim > 1 else a
        for c in range(n):
            flat[i * n + c] = values[c]

    def hfma2(x, y, z):
        """One rounding of the exact x*y+z per lane (float64 holds the fp16 product exactly)."""
        r = _h2(int(x)) * _h2(int(y)) + _h2(int(z))
        return np.uint32(_pack(r[0], r[1]))

    def h2f(x):
        v = _h2(int(x))
        return np.float32(v[0]), np.float32(v[1])

else:
    from llvmlite import ir
    from numba import types

    try:
        from numba.cuda.extending import intrinsic
    except ImportError:  # numba-cuda before 0.22 registers CUDA intrinsics through numba
        from numba.extending import intrinsic  # type: ignore[assignment]  # typed apart

    def _vector_ptr(context, builder, aryty, idxty, ary, index, n):
        """Pointer to the ``index``-th ``<n x T>`` vector of the array's data (no wrap-around:
        the callers' indices are unsigned and in range)."""
        data = context.make_array(aryty)(context, builder, ary).data
        elem = context.get_value_type(aryty.dtype)
        idx = context.cast(builder, index, idxty, types.uint64)
        ptr = builder.gep(data, [builder.mul(idx, ir.Constant(ir.IntType(64), n))])
        vty = ir.VectorType(elem, n)
        return builder.bitcast(ptr, vty.as_pointer()), vty

    @intrinsic
    def vload(typingctx, a, i):
        n = lanes(a.dtype.bitwidth // 8)
        sig = types.UniTuple(a.dtype, n)(a, i)

        def codegen(context, builder, signature, args):
            aryty, idxty = signature.args
            ptr, _ = _vector_ptr(context, builder, aryty, idxty, args[0], args[1], n)
            vec = builder.load(ptr, align=VECTOR_BYTES)
            elems = [builder.extract_element(vec, ir.Constant(ir.IntType(32), c)) for c in range(n)]
            return context.make_tuple(builder, signature.return_type, elems)

        return sig, codegen

    @intrinsic
    def vstore(typingctx, a, i, values):
        n = lanes(a.dtype.bitwidth // 8)
        sig = types.void(a, i, types.UniTuple(a.dtype, n))

        def codegen(context, builder, signature, args):
            aryty, idxty, tupty = signature.args
            ptr, vty = _vector_ptr(context, builder, aryty, idxty, args[0], args[1], n)
            vec = ir.Constant(vty, ir.Undefined)
            for c in range(n):
                v = builder.extract_value(args[2], c)
                v = context.cast(builder, v, tupty.dtype, aryty.dtype)
                vec = builder.insert_element(vec, v, ir.Constant(ir.IntType(32), c))
            builder.store(vec, ptr, align=VECTOR_BYTES)
            return context.get_dummy_value()

        return sig, codegen

    @intrinsic
    def hfma2(typingctx, x, y, z):
        sig = types.uint32(types.uint32, types.uint32, types.uint32)

        def codegen(context, builder, signature, args):
            i32 = ir.IntType(32)
            fn = ir.FunctionType(i32, [i32, i32, i32])
            asm = ir.InlineAsm(fn, "fma.rn.f16x2 $0, $1, $2, $3;", "=r,r,r,r")
            return builder.call(asm, list(args))

        return sig, codegen

    @intrinsic
    def h2f(typingctx, x):
        sig = types.UniTuple(types.float32, 2)(types.uint32)

        def codegen(context, builder, signature, args):
            f32, i32 = ir.FloatType(), ir.IntType(32)
            fn = ir.FunctionType(ir.LiteralStructType([f32, f32]), [i32])
            asm = ir.InlineAsm(
                fn,
                "{.reg .f16 lo, hi;\n mov.b32 {lo, hi}, $2;\n cvt.f32.f16 $0, lo;\n"
                " cvt.f32.f16 $1, hi;}",
                "=f,=f,r",
            )
            pair = builder.call(asm, [args[0]])
            elems = [builder.extract_value(pair, c) for c in range(2)]
            return context.make_tuple(builder, signature.return_type, elems)

        return sig, codegen
