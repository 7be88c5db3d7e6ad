"""A user benchmark file: ``python -m tether_kernels run kernels/examples/saxpy.py``.

Declare the kernel, how to build its inputs, how to launch it, a NumPy reference and the FLOP and
byte models; the harness checks it against the reference (output poisoned first), times it and
places it on the roofline next to the built-ins.
"""

import numpy as np
from numba import cuda
from tether_kernels.harness import DTYPES, Benchmark, grid_1d


@cuda.jit
def saxpy(out, x, y, a):
    i = cuda.grid(1)
    stride = cuda.gridsize(1)
    while i < out.size:
        out[i] = a * x[i] + y[i]
        i += stride


def setup(shape, dtype, rng):
    (n,) = shape
    return {
        "x": rng.standard_normal(n).astype(dtype),
        "y": rng.standard_normal(n).astype(dtype),
        "a": dtype(2.5),  # scalars are passed by value, arrays go to the device
        "out": np.empty(n, dtype=dtype),  # the harness fills this with NaN before launching
    }


def launch(d, shape):
    blocks, threads = grid_1d(shape[0])
    saxpy[blocks, threads](d["out"], d["x"], d["y"], d["a"])


def reference(h, shape):
    return h["a"] * h["x"].astype(np.float64) + h["y"]


def benchmark(precision):
    itemsize = np.dtype(DTYPES[precision]).itemsize
    return Benchmark(
        name="saxpy",
        variant="user",
        precision=precision,
        shape=(1 << 26,),
        quick_shape=(777,),
        setup=setup,
        launch=launch,
        reference=reference,
        flops=lambda s: 2 * s[0],
        bytes_moved=lambda s: 3 * s[0] * itemsize,  # read x and y, write out
    )


BENCHMARKS = [benchmark(precision) for precision in ("fp32", "fp64")]
