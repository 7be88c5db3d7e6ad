"""The roofline plot with several result files overlaid: one set of roofs per device, the legend
outside the axes with each roof and family once, numbers only where they do not collide."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

from tether_kernels import cli, gpus, plot

from tests.bench_documents import document, result

H200 = gpus.lookup("H200")


def library_gemm(prec: str, tflops: float) -> dict:
    return result(family="library", kernel="gemm", variant="cublas", precision=prec,
                  compute_precision=prec, ai=1365.0, flops_per_s=tflops * 1e12,
                  bytes_per_s=tflops * 1e12 / 1365, bound="compute")  # fmt: skip


def four_files() -> list[dict]:
    """Three runs on one H100 and one on an H200 (synthetic data, not measurements)."""
    h100 = [document() for _ in range(3)]
    h200_peaks = H200.peaks() if H200 else None
    h200 = document(name="NVIDIA H200", peaks=h200_peaks, peaks_source="table:H200")
    h200["results"] += [library_gemm("bf16", 700.0), library_gemm("fp8", 1300.0)]
    from tether_kernels import report

    h200["measured"] = report.build_document(h200["device"], h200["results"], simulator=False)[
        "measured"
    ]
    return [*h100, h200]


def test_roofs_once_per_device_legend_outside(tmp_path: Path) -> None:
    out = tmp_path / "four.png"
    summary = plot.render(four_files(), out, labels=["a", "b", "c", "d"])
    legend = summary["legend"]
    assert len(legend) == len(set(legend)), Counter(legend).most_common(3)
    assert summary["legend_outside"]
    h100 = [e for e in legend if e.startswith("NVIDIA H100 80GB HBM3: ")]
    h200 = [e for e in legend if e.startswith("NVIDIA H200: ")]
    # theoretical: DRAM + fp64/fp32/fp16; measured: DRAM + fp32 (fma) -- once, not per file
    assert len(h100) == 6, h100
    assert any("bf16 library 700.0" in e for e in h200) and any("fp8 library" in e for e in h200)
    families = [e for e in legend if e.endswith("(marker)")]
    assert families == ["stream (marker)", "fma (marker)", "gemm (marker)", "library (marker)"]
    assert len(legend) < 25  # the old plot listed 25 entries for four files
    assert summary["points"] == 4 * 5 + 2
    assert 0 < summary["labelled"] < summary["points"]  # same points in three files collide
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_plan_numbers_every_point_and_marks_later_files_hollow() -> None:
    p = plot.plan(four_files(), labels=["a", "b", "c", "d"])
    assert [pt.number for pt in p.points] == list(range(1, 23))
    assert p.points[0].text == "1 triad/grid-stride fp32 [a]"
    assert [pt.hollow for pt in p.points[:10]] == [False] * 5 + [True] * 5
    assert not p.points[-1].hollow  # the H200's first (only) file
    assert {pt.family for pt in p.points} == {"stream", "fma", "gemm", "library"}


def test_labels_that_would_collide_are_left_out() -> None:
    xy = [(100.0, 100.0), (102.0, 101.0), (300.0, 100.0), (100.0, 140.0)]
    assert plot.place_labels(xy, ["1", "2", "3", "4"]) == [True, False, True, True]


def test_cli_plot_of_four_files(tmp_path: Path) -> None:
    paths = []
    for i, doc in enumerate(four_files()):
        paths.append(tmp_path / f"run{i}.json")
        paths[-1].write_text(json.dumps(doc))
    out = tmp_path / "r.svg"
    assert cli.main(["plot", *map(str, paths), "-o", str(out)]) == 0
    assert "<svg" in out.read_text()
