"""tether's Numba-CUDA roofline suite: device figures, checked-then-timed benchmarks, a JSON
report (``tether.bench/1``) and a roofline plot. ``python -m tether_kernels --help``.

Importing this package imports nothing heavy; numba is loaded by the modules that need it.
"""

__version__ = "0.1.0"
