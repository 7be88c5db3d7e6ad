"""``python -m tether_kernels plot RESULTS.json... -o roofline.png|svg``: a log-log roofline.

Per document: the DRAM slope and one compute ceiling per precision, theoretical dashed, measured
solid; each verified GPU result a point coloured by precision and labelled. Several documents are
overlaid (one marker shape per file) to compare runs. Simulated results are never drawn: their
times are the simulator's, not the GPU's.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from . import roofline

COLORS = {"fp64": "#1f77b4", "fp32": "#2ca02c", "fp16": "#ff7f0e"}
MARKERS = ("o", "s", "^", "D", "v", "P", "X")


class PlotError(Exception):
    """A results file that cannot be read or is not a tether.bench/1 document."""


def load(path: str | Path) -> dict[str, Any]:
    """Read and validate one results document."""
    from .report import validate

    try:
        doc = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise PlotError(f"{path}: cannot read results: {exc}") from exc
    problems = validate(doc)
    if problems:
        raise PlotError(f"{path}: not a tether.bench/1 document: {problems[0]}")
    return doc


def plottable(doc: Mapping[str, Any]) -> tuple[list[Mapping[str, Any]], int]:
    """Results that may go on the roofline (measured on a GPU, verified, with a positive
    intensity and rate), and how many simulated results were left out."""
    keep, simulated = [], 0
    for r in doc["results"]:
        if r.get("simulated"):
            simulated += 1
            continue
        if r.get("verified") and (r.get("ai") or 0) > 0 and (r.get("flops_per_s") or 0) > 0:
            keep.append(r)
    return keep, simulated


def render(docs: Sequence[Mapping[str, Any]], out: str | Path, labels: Sequence[str] = ()) -> dict:
    """Draw the roofline of ``docs`` into ``out`` (format from the suffix: .png, .svg, .pdf).

    Returns a summary: points drawn and simulated results skipped.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(10, 6.5))
    ax.set_xscale("log")
    ax.set_yscale("log")
    ais: list[float] = [1 / 16, 1024.0]
    tops: list[float] = []
    points = 0
    skipped = 0
    for doc in docs:
        keep, sim = plottable(doc)
        skipped += sim
        ais += [float(r["ai"]) for r in keep]
        tops += [float(r["flops_per_s"]) for r in keep]
        for kind in ("theoretical", "measured"):
            pk = doc.get(kind) or {}
            tops += [v for v in (pk.get("flops") or {}).values() if v]
    x_lo, x_hi = min(ais) / 2, max(ais) * 2
    x = [x_lo * (x_hi / x_lo) ** (i / 200) for i in range(201)]
    for d_i, doc in enumerate(docs):
        tag = labels[d_i] if d_i < len(labels) else doc["device"].get("name", f"run {d_i + 1}")
        if len(docs) > 1:
            tag = f"[{d_i + 1}] {tag}"
        for kind, style in (("theoretical", "--"), ("measured", "-")):
            pk = doc.get(kind) or {}
            bw = pk.get("dram_bytes_per_s")
            for prec in roofline.PRECISIONS:
                peak = (pk.get("flops") or {}).get(prec)
                if not peak and not bw:
                    continue
                if bw and peak:
                    y = [roofline.attainable(v, peak, bw) for v in x]
                elif peak:
                    y = [peak] * len(x)
                else:
                    continue
                ax.plot(
                    x,
                    y,
                    style,
                    color=COLORS[prec],
                    alpha=0.9 if kind == "measured" else 0.6,
                    lw=1.6,
                    label=f"{tag} {prec} {kind} ({peak / 1e12:.1f} TFLOP/s)",
                )
            if bw:
                tops.append(bw * x_lo)
                top = max([v for v in (pk.get("flops") or {}).values() if v] or [bw * x_hi])
                xs = [v for v in x if bw * v <= top] or x[:1]
                ax.plot(
                    xs,
                    [bw * v for v in xs],
                    style,
                    color="grey",
                    lw=0.8,
                    alpha=0.5,
                    label=f"{tag} DRAM {kind} ({bw / 1e12:.2f} TB/s)",
                )
        keep, _ = plottable(doc)
        marker = MARKERS[d_i % len(MARKERS)]
        for r in keep:
            prec = r.get("precision", "fp32")
            ax.scatter(
                r["ai"],
                r["flops_per_s"],
                marker=marker,
                s=36,
                facecolors="none" if len(docs) > 1 and d_i else COLORS.get(prec, "k"),
                edgecolors=COLORS.get(prec, "k"),
                zorder=3,
            )
            name = f"{r['kernel']}/{r['variant']}" if r.get("variant") else r["kernel"]
            ax.annotate(
                name,
                (r["ai"], r["flops_per_s"]),
                fontsize=6,
                xytext=(3, 3),
                textcoords="offset points",
            )
            points += 1
    if tops:
        ax.set_ylim(min(tops) / 4, max(tops) * 3)
    ax.set_xlim(x_lo, x_hi)
    ax.set_xlabel("arithmetic intensity (FLOP/byte)")
    ax.set_ylabel("performance (FLOP/s)")
    title = "Roofline: theoretical dashed, measured solid"
    if skipped:
        title += f"  ({skipped} simulated results not plotted)"
    ax.set_title(title, fontsize=10)
    ax.grid(True, which="both", alpha=0.25)
    handles, _ = ax.get_legend_handles_labels()
    if handles:
        ax.legend(fontsize=7, loc="lower right")
    if not handles and not points:
        ax.text(
            0.5, 0.5, "no peaks and no GPU results to draw", ha="center", transform=ax.transAxes
        )
    fig.tight_layout()
    fig.savefig(str(out))
    plt.close(fig)
    return {"points": points, "simulated_skipped": skipped}
