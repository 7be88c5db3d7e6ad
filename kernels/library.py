"""The vendor library on the same card: GEMM at every precision the hardware has, and a
device-to-device copy, timed through torch (cuBLAS/cuBLASLt) and labelled ``library``.

Numba-CUDA cannot reach the tensor cores, so these points are the roofs users compare against:
fp64 and fp32 (TF32 off), tf32, bf16, fp16, fp8 e4m3 (``torch._scaled_mm``, bf16 out, where the
card has it: compute capability >= 8.9) and int8 (``torch._int_mm``, int32 out). Each GEMM is
checked against a float64 product of a few rows of the same (rounded) inputs before it is timed.

The pure parts -- the FLOP/byte model, the selection by precision, the row check and its
tolerance -- are tested with NumPy; the torch calls run only on a GPU (bench/gpu_check.sh).
CuPy is not used yet: without torch the suite reports itself skipped in one line.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from . import roofline
from .cardstate import CardMonitor, refusal

GEMM_PRECISIONS: tuple[str, ...] = ("fp64", "fp32", "tf32", "bf16", "fp16", "fp8", "int8")
COPY_PRECISIONS: tuple[str, ...] = ("fp64", "fp32", "fp16")
COPY_BYTES = 512 << 20
CHECK_ROWS = 32

# (input bytes, output bytes, unit roundoff of the arithmetic, unit roundoff of the output).
# The reference multiplies the same rounded inputs in float64, so input rounding is no error,
# except for tf32, where the tensor cores round fp32 inputs to 10-bit mantissas themselves.
_FORMATS: dict[str, tuple[int, int, float, float]] = {
    "fp64": (8, 8, 2.0**-53, 2.0**-53),
    "fp32": (4, 4, 2.0**-24, 2.0**-24),
    "tf32": (4, 4, 2.0**-11, 2.0**-24),
    "bf16": (2, 2, 2.0**-24, 2.0**-8),
    "fp16": (2, 2, 2.0**-24, 2.0**-11),
    "fp8": (1, 2, 2.0**-24, 2.0**-8),  # e4m3 in, fp32 accumulation, bf16 out
    "int8": (1, 4, 0.0, 0.0),  # exact: int32 accumulation of int8 products
}


@dataclass(frozen=True)
class Case:
    """One library benchmark: ``kernel`` "gemm" (shape M, N, K) or "copy" (shape n)."""

    kernel: str
    precision: str
    shape: tuple[int, ...]

    @property
    def flops(self) -> int:
        if self.kernel == "copy":
            return 0
        m, n, k = self.shape
        return 2 * m * n * k

    @property
    def bytes_moved(self) -> int:
        """Compulsory traffic: A and B read once, C written once; a copy reads and writes."""
        if self.kernel == "copy":
            return 2 * self.shape[0] * roofline.ITEMSIZE[self.precision]
        m, n, k = self.shape
        inp, out, _, _ = _FORMATS[self.precision]
        return (m * k + k * n) * inp + m * n * out

    @property
    def footprint(self) -> int:
        """Device memory held while it runs (the fp8 GEMM keeps bf16 copies for the check)."""
        extra = 0
        if self.kernel == "gemm" and self.precision == "fp8":
            m, n, k = self.shape
            extra = (m * k + k * n) * 2
        return self.bytes_moved + extra

    def tolerance(self) -> float:
        """Normwise relative error allowed: the arithmetic's rounding grows like sqrt(K) over
        the dot product (random walk), plus the output's own rounding; 0 for int8 and the copy
        (exact)."""
        if self.kernel == "copy":
            return 0.0
        _, _, u, out_u = _FORMATS[self.precision]
        return 4.0 * u * math.sqrt(self.shape[2]) + 4.0 * out_u


def select(
    precisions: Sequence[str], gemm_shape: tuple[int, int, int], copy_bytes: int = COPY_BYTES
) -> list[Case]:
    """The library cases for a precision selection (in ``GEMM_PRECISIONS`` order), GEMMs first,
    then a device-to-device copy at each stream precision selected."""
    chosen = set(precisions)
    cases = [Case("gemm", p, tuple(gemm_shape)) for p in GEMM_PRECISIONS if p in chosen]
    for p in COPY_PRECISIONS:
        if p in chosen:
            cases.append(Case("copy", p, (copy_bytes // roofline.ITEMSIZE[p],)))
    return cases


def check_rows(out_rows: np.ndarray, a_rows: np.ndarray, b: np.ndarray) -> float:
    """Normwise relative error of some rows of C against their float64 product
    ``a_rows @ b`` (``inf`` when the output is not finite or the shapes differ)."""
    from .harness import max_rel_err

    return max_rel_err(out_rows, a_rows.astype(np.float64) @ b.astype(np.float64))


def sample_rows(m: int, count: int = CHECK_ROWS, seed: int = 1) -> np.ndarray:
    """A fixed, sorted sample of row indices (all rows when M is small)."""
    if m <= count:
        return np.arange(m)
    return np.sort(np.random.default_rng(seed).choice(m, count, replace=False))


def result(case: Case, samples: list[float] | None, err: float | None, **kw: Any) -> dict:
    """A ``tether.bench/1`` result for a library case (unverified when ``samples`` is None)."""
    ai = roofline.arithmetic_intensity(case.flops, case.bytes_moved)
    res: dict[str, Any] = {
        "family": "library",
        "kernel": case.kernel,
        "variant": kw.pop("variant", "torch"),
        "precision": case.precision,
        "compute_precision": case.precision,
        "shape": list(case.shape),
        "flops": case.flops,
        "bytes": case.bytes_moved,
        "ai": ai,
        "time_s": None,
        "flops_per_s": None,
        "bytes_per_s": None,
        "bound": "memory" if case.kernel == "copy" else "compute",
        "roofline_fraction": None,  # tensor cores: judged against its own measured roof
        "verified": samples is not None,
        "max_rel_err": err if err is not None and math.isfinite(err) else None,
        "tolerance": case.tolerance(),
        "simulated": False,
        "source": "library",
        "error": None,
        "card": None,
    }
    res.update(kw)
    if samples:
        st = roofline.stats(samples)
        res["time_s"] = st
        t = float(st["median"])
        res["flops_per_s"] = case.flops / t
        res["bytes_per_s"] = case.bytes_moved / t
    return res


def available() -> str | None:
    """Why the library suite cannot run here, or None when torch sees a CUDA GPU."""
    try:
        import torch
    except ImportError:
        return "library suite skipped: torch is not importable on this host (CuPy is not used yet)"
    if not torch.cuda.is_available():
        return "library suite skipped: torch sees no CUDA GPU"
    return None


def _time(fn: Callable[[], Any], warmup: int = 5, repeats: int = 20) -> list[float]:  # GPU only
    import torch

    for _ in range(warmup):
        fn()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    fn()
    end.record()
    end.synchronize()
    inner = max(1, min(200, math.ceil(2.0 / max(start.elapsed_time(end), 1e-3))))
    out = []
    for _ in range(repeats):
        fn()
        start.record()
        for _ in range(inner):
            fn()
        end.record()
        end.synchronize()
        out.append(start.elapsed_time(end) / 1e3 / inner)
    return out


def _gemm_fn(case: Case, torch: Any, rng: np.random.Generator) -> tuple[Callable, Callable]:
    """(timed call, check) for one GEMM case on the current CUDA device."""
    m, n, k = case.shape
    dev = "cuda"
    if case.precision == "int8":
        a = torch.from_numpy(rng.integers(-8, 8, (m, k), dtype=np.int8)).to(dev)
        b = torch.from_numpy(rng.integers(-8, 8, (k, n), dtype=np.int8)).to(dev)

        def call():
            return torch._int_mm(a, b)

    elif case.precision == "fp8":
        a = torch.from_numpy(rng.uniform(-1, 1, (m, k)).astype(np.float32)).to(dev)
        b = torch.from_numpy(rng.uniform(-1, 1, (n, k)).astype(np.float32)).to(dev)
        a = a.to(torch.float8_e4m3fn)
        b = b.to(torch.float8_e4m3fn).t()  # column-major B, as _scaled_mm needs
        one = torch.ones((), device=dev, dtype=torch.float32)

        def call():
            return torch._scaled_mm(a, b, scale_a=one, scale_b=one, out_dtype=torch.bfloat16)

    else:
        dt = {"fp64": torch.float64, "fp32": torch.float32, "tf32": torch.float32,
              "bf16": torch.bfloat16, "fp16": torch.float16}[case.precision]  # fmt: skip
        a = torch.from_numpy(rng.uniform(-1, 1, (m, k))).to(dev, dt)
        b = torch.from_numpy(rng.uniform(-1, 1, (k, n))).to(dev, dt)

        def call():
            return a @ b

    def check() -> float:
        rows = sample_rows(m)
        out = call()[torch.from_numpy(rows).to(dev)].double().cpu().numpy()
        a_rows = a[torch.from_numpy(rows).to(dev)].double().cpu().numpy()
        return check_rows(out, a_rows, b.double().cpu().numpy())

    return call, check


def run(
    precisions: Sequence[str],
    gemm_shape: tuple[int, int, int],
    *,
    card: CardMonitor | None = None,
    seed: int = 0,
) -> list[dict]:
    """Check then time every selected library case (GPU and torch required: see
    :func:`available`). One failing case is reported as an unverified result; the rest run."""
    import torch

    rng = np.random.default_rng(seed)
    out = []
    for case in select(precisions, gemm_shape):
        why = refusal(case.footprint, card.free_bytes()) if card is not None else None
        if why:
            out.append(result(case, None, None, error=why))
            continue
        tf32 = case.precision == "tf32"
        torch.backends.cuda.matmul.allow_tf32 = tf32
        try:
            if case.kernel == "copy":
                dt = {"fp64": torch.float64, "fp32": torch.float32, "fp16": torch.float16}
                src = torch.rand(case.shape[0], device="cuda", dtype=dt[case.precision])
                dst = torch.empty_like(src)
                dst.copy_(src)
                err = 0.0 if torch.equal(dst, src) else math.inf

                def call(dst=dst, src=src):
                    return dst.copy_(src)
            else:
                call, check = _gemm_fn(case, torch, rng)
                err = check()
            if not err <= case.tolerance():
                out.append(result(case, None, err, error=f"verification failed: error {err:.3g}"))
                continue
            if card is not None:
                card.begin()
            try:
                samples = _time(call)
            finally:
                card_rec = card.end() if card is not None else None
            out.append(result(case, samples, err, card=card_rec))
        except Exception as exc:  # boundary: a library/driver without this precision, OOM
            msg = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
            out.append(result(case, None, None, error=msg))
        finally:
            torch.backends.cuda.matmul.allow_tf32 = False
            torch.cuda.empty_cache()
    return out
