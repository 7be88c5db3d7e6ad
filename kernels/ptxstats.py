"""The machine code's shape, read from PTX for sm_90 (no GPU needed, only NVVM): how wide the
global loads are, how many FMAs, whether constants were promoted to fp64, how much 64-bit
integer (index) arithmetic, shared and local memory traffic. The suite's variants claim such
properties (16-byte loads, int32 indices, no fp64 in an fp32 chain); tests and
``bench/gpu_check.sh``'s ``ptx.md`` check them here.
"""

from __future__ import annotations

import re
from typing import Any

PATTERNS: dict[str, str] = {
    "ld.global.v4": r"\bld\.global(?:\.nc)?\.v4\.",
    "ld.global.v2": r"\bld\.global(?:\.nc)?\.v2\.",
    "ld.global": r"\bld\.global(?:\.nc)?\.(?!v[24]\.)",
    "st.global.v4": r"\bst\.global\.v4\.",
    "st.global.v2": r"\bst\.global\.v2\.",
    "st.global": r"\bst\.global\.(?!v[24]\.)",
    "fma.f64": r"\bfma\.rn\.f64\b",
    "fma.f32": r"\bfma\.rn\.f32\b",
    "fma.f16x2": r"\bfma\.rn\.f16x2\b",
    "fma.f16": r"\bfma\.rn\.f16\b",
    "cvt.f64": r"\bcvt(?:\.\w+)*\.f64\.f(?:32|16)\b",
    "int64 math": r"\b(?:add|sub|mul\.lo|mad\.lo|shl|shr)\.[su]64\b|\bmul\.wide\.[su]32\b",
    "wrap-around": r"\bshr\.s64\s+%rd\d+,\s*%rd\d+,\s*63;",  # sign test of a negative index
    "ld.shared": r"\bld\.shared\.",
    "st.shared": r"\bst\.shared\.",
    "local": r"\b(?:ld|st)\.local\.",
    "call": r"\bcall(?:\.uni)?\b",
    "bra": r"\bbra(?:\.uni)?\b",
}


def counts(ptx: str) -> dict[str, int]:
    """Occurrences of each :data:`PATTERNS` entry in a PTX text."""
    return {name: len(re.findall(rx, ptx)) for name, rx in PATTERNS.items()}


def compile_counts(fn: Any, signature: tuple, cc: tuple[int, int] = (9, 0)) -> dict[str, int]:
    """Compile a ``cuda.jit`` kernel (or its Python function) for ``cc`` and count."""
    from numba import cuda

    ptx, _ = cuda.compile_ptx(getattr(fn, "py_func", fn), signature, cc=cc)
    return counts(ptx)


def key_kernels(rungs: bool = True) -> list[tuple[str, Any, tuple]]:
    """(label, kernel, signature) of the kernels whose shape matters most for the ceilings;
    ``rungs=False`` leaves out the GEMM ladder's rb-* rungs (each takes 10 s to minutes to
    compile)."""
    from numba import float32, uint32

    from . import fma, gemm, gemm_rungs, stream

    out: list[tuple[str, Any, tuple]] = []
    for prec in ("fp64", "fp32", "fp16"):
        for variant in stream.VARIANTS:
            k, sig = stream.compile_target("triad", variant, prec)
            out.append((f"triad/{variant} {prec}", k, sig))
        for variant in fma.variants_for(prec):
            k, sig = fma.compile_target(128, variant, prec)
            out.append((f"fma/chain128{'-' + variant if variant else ''} {prec}", k, sig))
    for variant in gemm.VARIANTS:  # fp32 only
        if variant in gemm_rungs.RUNGS and not rungs:
            continue
        k = gemm.kernel(variant, "fp32")
        if variant in gemm_rungs.RUNGS:
            sig = (float32[::1],) * 3 + (uint32,) * 4
        else:
            sig = (float32[:, :],) * 3
        out.append((f"gemm/{variant} fp32", k, sig))
    return out


def report(rungs: bool = True) -> str:
    """``ptx.md``: one row per key kernel, or one line saying why PTX could not be made."""
    cols = list(PATTERNS)
    lines = ["# PTX shape of the key kernels (sm_90)", "", "| kernel | " + " | ".join(cols) + " |"]
    lines.append("|" + "---|" * (len(cols) + 1))
    for label, k, sig in key_kernels(rungs):
        try:
            c = compile_counts(k, sig)
        except Exception as exc:  # boundary: no NVVM here, or a kernel numba cannot compile
            lines.append(f"| {label} | not compiled: {type(exc).__name__}: {str(exc)[:120]} |")
            continue
        lines.append(f"| {label} | " + " | ".join(str(c[n]) for n in cols) + " |")
    if not rungs:
        lines += ["", "The GEMM rungs rb-* are left out here (minutes to compile on a small "
                  "machine); a GPU run lists them."]  # fmt: skip
    return "\n".join(lines) + "\n"
