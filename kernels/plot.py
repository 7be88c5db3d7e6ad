"""``python -m tether_kernels plot RESULTS.json... -o roofline.png|svg``: a log-log roofline people
can read when several runs are overlaid.

* One set of roofs per device, however many result files come from it: theoretical dashed,
  measured (the best of that device's files) solid, the vendor library's measured ceilings
  (tensor cores) dotted.
* One colour per precision, one marker shape per family (stream, fma, gemm, ...); the second and
  later files of a device draw hollow markers.
* Points carry a number, placed only where it does not collide with a number already placed; a
  numbered table beside the plot names every point (kernel/variant, precision, file).
* The legend sits outside the axes, beside the table, and holds each roof and family once.

Simulated results are never drawn: their times are the simulator's, not the GPU's.
:func:`plan` decides all of this without matplotlib; :func:`render` only draws it.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import roofline

COLORS = {
    "fp64": "#1f77b4",
    "fp32": "#2ca02c",
    "tf32": "#17becf",
    "fp16": "#ff7f0e",
    "bf16": "#d62728",
    "fp8": "#9467bd",
    "int8": "#8c564b",
}
FAMILY_MARKERS = {
    "stream": "o",
    "reduce": "D",
    "fma": "^",
    "gemm": "s",
    "library": "*",
    "user": "P",
}
OTHER_MARKER = "X"
LABEL_W_PX, LABEL_H_PX = 6.0, 9.0
"""Approximate size of one character of a point number (fontsize 6) and its height, in pixels."""


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


@dataclass(frozen=True)
class Roof:
    """One line of the roofline: a compute ceiling (with the DRAM slope when known) or, with
    ``precision`` None, the DRAM slope alone."""

    device: str
    kind: str  # "theoretical" | "measured" | "library"
    precision: str | None
    flops: float | None
    bandwidth: float | None

    def label(self, with_device: bool) -> str:
        head = f"{self.device}: " if with_device else ""
        if self.precision is None:
            return f"{head}DRAM {self.kind} {self.bandwidth / 1e12:.2f} TB/s"  # type: ignore[operator]
        return f"{head}{self.precision} {self.kind} {self.flops / 1e12:.1f} TFLOP/s"  # type: ignore[operator]


@dataclass(frozen=True)
class Point:
    number: int
    ai: float
    flops: float
    precision: str
    family: str
    hollow: bool
    text: str


@dataclass
class Plan:
    roofs: list[Roof] = field(default_factory=list)
    points: list[Point] = field(default_factory=list)
    families: list[str] = field(default_factory=list)
    devices: list[str] = field(default_factory=list)
    simulated_skipped: int = 0


def _best(values: Sequence[float | None]) -> float | None:
    vals = [float(v) for v in values if v]
    return max(vals) if vals else None


def plan(docs: Sequence[Mapping[str, Any]], labels: Sequence[str] = ()) -> Plan:
    """Group ``docs`` by device and decide every roof (once per device) and point."""
    out = Plan()
    by_device: dict[str, list[Mapping[str, Any]]] = {}
    for doc in docs:
        by_device.setdefault(str(doc["device"].get("name") or "unknown GPU"), []).append(doc)
    out.devices = list(by_device)
    for dev, group in by_device.items():
        for kind in ("theoretical", "measured"):
            peaks = [d.get(kind) or {} for d in group]
            bw = _best([p.get("dram_bytes_per_s") for p in peaks])
            if bw:
                out.roofs.append(Roof(dev, kind, None, None, bw))
            for prec in roofline.PRECISIONS:
                peak = _best([(p.get("flops") or {}).get(prec) for p in peaks])
                if peak:
                    out.roofs.append(Roof(dev, kind, prec, peak, bw))
        lib_bw = _best([(d.get("measured") or {}).get("dram_bytes_per_s") for d in group])
        lib = [(d.get("measured") or {}).get("library") or {} for d in group]
        for prec in roofline.ALL_PRECISIONS:
            peak = _best([m.get(prec) for m in lib])
            if peak:
                out.roofs.append(Roof(dev, "library", prec, peak, lib_bw))
    n = 0
    for d_i, doc in enumerate(docs):
        keep, sim = plottable(doc)
        out.simulated_skipped += sim
        dev = str(doc["device"].get("name") or "unknown GPU")
        hollow = by_device[dev][0] is not doc  # a later file of the same device
        tag = labels[d_i] if d_i < len(labels) else f"file {d_i + 1}"
        for r in keep:
            n += 1
            family = str(r.get("family") or "user")
            if family not in out.families:
                out.families.append(family)
            name = f"{r['kernel']}/{r['variant']}" if r.get("variant") else str(r["kernel"])
            prec = str(r.get("precision") or "fp32")
            text = f"{n} {name} {prec}" + (f" [{tag}]" if len(docs) > 1 else "")
            out.points.append(
                Point(n, float(r["ai"]), float(r["flops_per_s"]), prec, family, hollow, text)
            )
    return out


def place_labels(xy_px: Sequence[tuple[float, float]], texts: Sequence[str]) -> list[bool]:
    """Which labels to draw: each sits up-right of its point (3 px offset); a label whose box
    would overlap one already placed is left out (the numbered table still names it)."""
    placed: list[tuple[float, float, float, float]] = []
    keep = []
    for (x, y), t in zip(xy_px, texts, strict=True):
        box = (x + 3, y + 3, x + 3 + LABEL_W_PX * len(t), y + 3 + LABEL_H_PX)
        clash = any(
            box[0] < b[2] and b[0] < box[2] and box[1] < b[3] and b[1] < box[3] for b in placed
        )
        keep.append(not clash)
        if not clash:
            placed.append(box)
    return keep


def render(docs: Sequence[Mapping[str, Any]], out: str | Path, labels: Sequence[str] = ()) -> dict:
    """Draw the roofline of ``docs`` into ``out`` (format from the suffix: .png, .svg, .pdf).

    Returns a summary: points drawn, simulated results skipped, numbers placed on the plot, the
    legend's entries and whether the legend lies outside the axes.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    p = plan(docs, labels)
    rows_per_col = 60
    table_cols = max(1, -(-len(p.points) // rows_per_col)) if p.points else 0
    many = len(p.devices) > 1
    longest = max([len(r.label(many)) for r in p.roofs] + [20])
    axes_w, table_w, height = 6.5, 2.6, 7.5
    legend_w = 0.8 + 0.052 * longest  # inches at fontsize 7, with the handle
    width = 0.8 + axes_w + 0.2 + legend_w + table_w * table_cols
    fig = plt.figure(figsize=(width, height))
    ax = fig.add_axes((0.8 / width, 0.08, axes_w / width, 0.85))
    ax.set_xscale("log")
    ax.set_yscale("log")
    ais = [1 / 16, 1024.0] + [pt.ai for pt in p.points]
    x_lo, x_hi = min(ais) / 2, max(ais) * 2
    x = [x_lo * (x_hi / x_lo) ** (i / 200) for i in range(201)]
    tops = [pt.flops for pt in p.points] + [r.flops for r in p.roofs if r.flops]
    tops += [r.bandwidth * x_lo for r in p.roofs if r.bandwidth]
    styles = {"theoretical": "--", "measured": "-", "library": ":"}
    widths = [1.6, 0.9, 2.4, 0.6]
    handles: list[Any] = []
    for roof in p.roofs:
        lw = widths[p.devices.index(roof.device) % len(widths)]
        if roof.precision is None:
            bw = float(roof.bandwidth or 0)
            top = max([r.flops for r in p.roofs if r.flops and r.device == roof.device] or [0])
            xs = [v for v in x if not top or bw * v <= top] or x[:1]
            ys = [bw * v for v in xs]
            color = "grey"
        else:
            xs = x
            peak = float(roof.flops or 0)
            ys = [
                roofline.attainable(v, peak, roof.bandwidth) if roof.bandwidth else peak for v in x
            ]
            color = COLORS.get(roof.precision, "k")
        (line,) = ax.plot(xs, ys, styles[roof.kind], color=color, lw=lw, alpha=0.75)
        line.set_label(roof.label(many))
        handles.append(line)
    for fam in p.families:
        handles.append(
            Line2D(
                [],
                [],
                ls="",
                marker=FAMILY_MARKERS.get(fam, OTHER_MARKER),
                color="k",
                label=f"{fam} (marker)",
            )
        )
    have_roof = {r.precision for r in p.roofs if r.precision}
    for prec in dict.fromkeys(pt.precision for pt in p.points):
        if prec not in have_roof:  # a colour the roofs do not already explain
            handles.append(
                Line2D([], [], ls="", marker="o", color=COLORS.get(prec, "k"), label=prec)
            )
    for pt in p.points:
        color = COLORS.get(pt.precision, "k")
        ax.scatter(
            pt.ai,
            pt.flops,
            marker=FAMILY_MARKERS.get(pt.family, OTHER_MARKER),
            s=60 if pt.family == "library" else 34,
            facecolors="none" if pt.hollow else color,
            edgecolors=color,
            zorder=3,
        )
    if tops:
        ax.set_ylim(min(tops) / 4, max(tops) * 3)
    ax.set_xlim(x_lo, x_hi)
    fig.canvas.draw()
    px = [tuple(ax.transData.transform((pt.ai, pt.flops))) for pt in p.points]
    shown = place_labels(px, [str(pt.number) for pt in p.points])
    for pt, ok in zip(p.points, shown, strict=True):
        if ok:
            ax.annotate(str(pt.number), (pt.ai, pt.flops), fontsize=6, xytext=(3, 3),
                        textcoords="offset points")  # fmt: skip
    ax.set_xlabel("arithmetic intensity (FLOP/byte)")
    ax.set_ylabel("performance (FLOP/s)")
    title = "Roofline: theoretical dashed, measured solid, vendor library dotted"
    if p.simulated_skipped:
        title += f"  ({p.simulated_skipped} simulated results not plotted)"
    ax.set_title(title, fontsize=9)
    ax.grid(True, which="both", alpha=0.25)
    legend = None
    if handles:
        legend = ax.legend(handles=handles, fontsize=7, loc="upper left",
                           bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0)  # fmt: skip
    for c in range(table_cols):
        chunk = p.points[c * rows_per_col : (c + 1) * rows_per_col]
        left = (0.8 + axes_w + 0.2 + legend_w + table_w * c) / width
        fig.text(left, 0.93, "\n".join(pt.text for pt in chunk), fontsize=5.5, va="top",
                 family="monospace")  # fmt: skip
    if not handles and not p.points:
        ax.text(
            0.5, 0.5, "no peaks and no GPU results to draw", ha="center", transform=ax.transAxes
        )
    fig.savefig(str(out), dpi=110)
    outside = False
    if legend is not None:
        fig.canvas.draw()
        outside = bool(legend.get_window_extent().x0 >= ax.get_window_extent().x1)
    plt.close(fig)
    return {
        "points": len(p.points),
        "simulated_skipped": p.simulated_skipped,
        "labelled": sum(shown),
        "legend": [h.get_label() for h in handles],
        "legend_outside": outside,
    }
