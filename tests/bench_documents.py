"""Synthetic tether.bench/1 documents (test data, never a measurement) for the report and plot
tests: one result with every field, and a document of a few on H100 table peaks."""

from __future__ import annotations

from tether_kernels import gpus, report

H100 = gpus.lookup("H100 SXM")


def result(**kw):
    r = {
        "family": "stream",
        "kernel": "triad",
        "variant": "grid-stride",
        "precision": "fp32",
        "compute_precision": "fp32",
        "shape": [1 << 27],
        "flops": 2 << 27,
        "bytes": 12 << 27,
        "ai": 2 / 12,
        "time_s": {"median": 5.0e-4, "min": 4.9e-4, "max": 5.2e-4, "n": 10},
        "flops_per_s": (2 << 27) / 5.0e-4,
        "bytes_per_s": (12 << 27) / 5.0e-4,
        "bound": "memory",
        "roofline_fraction": 0.96,
        "verified": True,
        "max_rel_err": 0.0,
        "tolerance": 1e-5,
        "simulated": False,
        "source": "builtin",
        "error": None,
    }
    r.update(kw)
    return r


def document(results=None, **device_kw):
    """A synthetic document (test data, not a measurement) on H100 table peaks."""
    dev = {"name": "NVIDIA H100 80GB HBM3", "simulator": False, "peaks": H100.peaks()}
    dev["peaks_source"] = "table:H100 SXM"
    dev.update(device_kw)
    rs = results if results is not None else [
        result(),
        result(family="fma", kernel="fma", variant="chain1024", ai=256.0,
               flops_per_s=60e12, bytes_per_s=60e12 / 256, bound="compute"),
        result(family="gemm", kernel="gemm", variant="regblock", ai=683.0,
               flops_per_s=30e12, bytes_per_s=30e12 / 683, bound="compute"),
        result(family="gemm", kernel="gemm", variant="regblock", precision="fp64",
               compute_precision="fp64", ai=341.0, flops_per_s=20e12, bytes_per_s=1e10),
        result(family="gemm", kernel="gemm", variant="naive", precision="fp16",
               compute_precision="fp32", ai=1000.0, flops_per_s=5e12, bytes_per_s=5e9),
        result(kernel="copy", ai=0.0, flops=0, flops_per_s=0.0),
    ]  # fmt: skip
    return report.build_document(dev, rs, simulator=bool(dev["simulator"]))
