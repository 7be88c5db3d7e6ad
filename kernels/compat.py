"""Known-bad version combinations of the GPU stack, and the one step that works around one of them.

numpy 2.5 removed ``numpy.row_stack`` (deprecated since 2.0). numba-cuda 0.21.0 to 0.30.4 vendor
numba's array lowering, whose module ``numba.cuda.np.arrayobj`` runs
``overload(np.row_stack)(impl_np_vstack)`` for every numpy >= 2.0 when it is imported; that
happens on the first kernel compile, so on numpy 2.5 every kernel fails with ``AttributeError``.
numba-cuda is in maintenance mode and will not guard that line (NVIDIA/numba-cuda#907, #916).

:func:`apply` imports that one module with a stand-in ``numpy.row_stack`` present and removes the
stand-in as soon as the import returns. Why a module attribute, and why this is the narrowest fix:
the lowering module binds ``np`` by its own ``import numpy as np`` and reads the attribute while it
executes, so nothing outside the ``numpy`` module is consulted; handing it a different ``numpy``
(a proxy in ``sys.modules`` for the import) would show the proxy to every module imported in that
window, and rewriting its source would patch third-party text line by line. The stand-in is a
private function, not ``numpy.vstack``, so numba's typing of ``np.vstack`` gets no second
template; and it exists only while that single import runs, so user code never sees a
``numpy.row_stack`` (another thread importing numpy-dependent code in that instant could).

The table and :func:`diagnose` are pure; :func:`installed_versions` and :func:`apply` are the edges.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import re
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

Version = tuple[int, ...]

PACKAGES = ("numpy", "numba", "numba-cuda")
"""The distributions whose versions are reported (by their installed names)."""

ROW_STACK_NUMBA_CUDA = ((0, 21, 0), (0, 30, 5))
"""numba-cuda versions ``[low, below)`` whose lowering reads ``np.row_stack`` unguarded: 0.21.0
vendored numba's ``np`` modules; 0.30.4 is the newest release checked."""

LOWERING_MODULE = "numba.cuda.np.arrayobj"


@dataclass(frozen=True)
class KnownBad:
    """A combination that does not work: ``package`` in ``[low, below)`` with numpy >= ``numpy``.

    Attributes:
        package: the installed distribution's name (``"numba-cuda"``).
        low, below: version bounds of ``package`` (``low`` included, ``below`` not).
        numpy: the first numpy version the combination fails with.
        problem: what goes wrong, with ``{version}`` and ``{numpy}`` placeholders.
        fix: what to do, in a few words.
    """

    package: str
    low: Version
    below: Version
    numpy: Version
    problem: str
    fix: str


KNOWN_BAD: tuple[KnownBad, ...] = (
    KnownBad(
        "numba-cuda",
        *ROW_STACK_NUMBA_CUDA,
        numpy=(2, 5),
        problem="numba-cuda {version} registers np.row_stack, which numpy {numpy} removed",
        fix="the suite works around it itself (kernels/compat.py); "
        "for other numba-cuda code pip install 'numpy<2.5'",
    ),
    KnownBad(
        "numba",
        (0,),
        (0, 67),
        numpy=(2, 5),
        problem="numba {version} predates numpy {numpy} support and refuses to import",
        fix="pip install 'numba>=0.67'",
    ),
)


def parse_version(text: str | None) -> Version | None:
    """The leading numeric release of a version string (``"2.5.0rc1"`` -> ``(2, 5, 0)``);
    ``None`` for a missing or non-numeric one, so an odd version never matches a range."""
    if not text:
        return None
    m = re.match(r"\d+(?:\.\d+)*", text.strip())
    return tuple(int(p) for p in m.group(0).split(".")) if m else None


def _at_least(v: Version, bound: Version) -> bool:
    width = max(len(v), len(bound))
    return v + (0,) * (width - len(v)) >= bound + (0,) * (width - len(bound))


def _within(v: Version, low: Version, below: Version) -> bool:
    return _at_least(v, low) and not _at_least(v, below)


def known_bad(versions: Mapping[str, str | None]) -> list[KnownBad]:
    """The table rows that ``versions`` (distribution name -> version string) fall into."""
    np_v = parse_version(versions.get("numpy"))
    if np_v is None:
        return []
    out = []
    for row in KNOWN_BAD:
        v = parse_version(versions.get(row.package))
        if v is not None and _at_least(np_v, row.numpy) and _within(v, row.low, row.below):
            out.append(row)
    return out


def diagnose(versions: Mapping[str, str | None]) -> str | None:
    """One line naming every known-bad combination in ``versions`` with its fix, else ``None``."""
    parts = [
        f"{row.problem.format(version=versions[row.package], numpy=versions['numpy'])}: {row.fix}"
        for row in known_bad(versions)
    ]
    return "; ".join(parts) or None


def needs_row_stack_stand_in(numpy_has_row_stack: bool, numba_cuda_version: str | None) -> bool:
    """True when numba-cuda's lowering would fail to import: numpy lacks ``row_stack`` and the
    installed numba-cuda is one known to read it."""
    v = parse_version(numba_cuda_version)
    return not numpy_has_row_stack and v is not None and _within(v, *ROW_STACK_NUMBA_CUDA)


def installed_versions() -> dict[str, str | None]:
    """Versions of :data:`PACKAGES` from their installed metadata (nothing is imported)."""
    out: dict[str, str | None] = {}
    for name in PACKAGES:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = None
    return out


def _row_stack_removed() -> None:
    """Stands in for ``numpy.row_stack`` while numba-cuda's lowering imports; never called."""
    raise AttributeError("numpy.row_stack was removed in numpy 2.5; use numpy.vstack")


def apply() -> bool:
    """Import numba-cuda's array lowering with a stand-in ``numpy.row_stack`` when it needs one
    (see the module docstring). Call before the first kernel compiles; idempotent.

    Returns:
        True when the stand-in was used.
    """
    import numpy

    # Any: numpy's own stubs declare row_stack up to 2.4 and not after, so neither typing fits both.
    np: Any = numpy
    if LOWERING_MODULE in sys.modules or not needs_row_stack_stand_in(
        hasattr(np, "row_stack"), installed_versions()["numba-cuda"]
    ):
        return False
    np.row_stack = _row_stack_removed
    try:
        importlib.import_module(LOWERING_MODULE)
    finally:
        del np.row_stack
    return True
