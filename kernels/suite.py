"""Which benchmarks to run: the built-in suites and the ones a user's file declares.

A user file is any Python file with a module-level ``BENCHMARKS`` list of
:class:`tether_kernels.harness.Benchmark` (or a ``benchmarks()`` function returning one). It is
imported under a private module name, so it never shadows anything, and may import
``tether_kernels.harness``.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

from .harness import Benchmark

SUITES = ("stream", "fma", "gemm", "reduce", "library")
"""``library`` (vendor GEMMs and copy through torch) is run by :mod:`kernels.library`, not by the
Numba harness: :func:`builtin` returns nothing for it."""


class SuiteError(Exception):
    """A bad suite name, GEMM shape or user file (usage/data error, not a kernel failure)."""


def parse_gemm(text: str) -> tuple[int, int, int]:
    """``"MxNxK"`` -> (M, N, K)."""
    parts = text.lower().split("x")
    try:
        m, n, k = (int(p) for p in parts)
    except ValueError:
        raise SuiteError(f"--gemm expects MxNxK with positive integers, got {text!r}") from None
    if min(m, n, k) < 1:
        raise SuiteError(f"--gemm expects MxNxK with positive integers, got {text!r}")
    return m, n, k


def parse_list(text: str | None, allowed: tuple[str, ...], what: str) -> list[str]:
    """A comma-separated list checked against ``allowed`` (``None`` or ``"all"``: all of them)."""
    if not text or text == "all":
        return list(allowed)
    items = [t.strip() for t in text.split(",") if t.strip()]
    bad = [t for t in items if t not in allowed]
    if bad:
        raise SuiteError(f"unknown {what} {', '.join(bad)}; expected some of {', '.join(allowed)}")
    return items


def builtin(
    suites: list[str],
    precisions: list[str],
    *,
    quick: bool = False,
    gemm_shape: tuple[int, int, int] | None = None,
) -> list[Benchmark]:
    """The built-in Numba benchmarks of the named suites at the given precisions (those the
    Numba kernels have: fp64, fp32, fp16; the library precisions are the library suite's)."""
    from .roofline import PRECISIONS

    precisions = [p for p in precisions if p in PRECISIONS]
    out: list[Benchmark] = []
    for name in suites:
        if name == "stream":
            from . import stream

            out += stream.benchmarks(precisions)
        elif name == "fma":
            from . import fma

            out += fma.benchmarks(precisions, quick=quick)
        elif name == "gemm":
            from . import gemm

            out += gemm.benchmarks(precisions, gemm_shape)
        elif name == "reduce":
            from . import reduce

            out += reduce.benchmarks(precisions)
        elif name == "library":
            continue
        else:
            raise SuiteError(f"unknown suite {name!r}; expected one of {', '.join(SUITES)}")
    return out


def load_file(path: str | Path) -> list[Benchmark]:
    """Import a user's benchmark file and return what it declares.

    Raises:
        SuiteError: the file is missing, fails to import, or declares no benchmarks.
    """
    p = Path(path)
    if not p.is_file():
        raise SuiteError(f"benchmark file {str(p)!r} not found")
    modname = f"_tether_user_bench_{abs(hash(str(p.resolve())))}"
    spec = importlib.util.spec_from_file_location(modname, p)
    if spec is None or spec.loader is None:
        raise SuiteError(f"cannot import {str(p)!r} as a Python file")
    module = importlib.util.module_from_spec(spec)
    sys.modules[modname] = module
    try:
        spec.loader.exec_module(module)
    except Exception as exc:  # boundary: user code may raise anything on import
        raise SuiteError(f"{p}: import failed: {type(exc).__name__}: {exc}") from exc
    found = getattr(module, "BENCHMARKS", None)
    if found is None and callable(getattr(module, "benchmarks", None)):
        found = module.benchmarks()
    if not found:
        raise SuiteError(
            f"{p} declares no benchmarks; define BENCHMARKS = [Benchmark(...), ...] "
            "(see kernels/examples/saxpy.py)"
        )
    bad = [b for b in found if not isinstance(b, Benchmark)]
    if bad:
        raise SuiteError(f"{p}: BENCHMARKS holds {type(bad[0]).__name__}, not Benchmark")
    return list(found)
