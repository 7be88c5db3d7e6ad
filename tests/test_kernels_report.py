"""The tether.bench/1 document: schema validation, table, and the roofline plot (no numba)."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
from tether_kernels import cli, plot, report

from tests.bench_documents import document, result


def test_document_is_valid() -> None:
    doc = document()
    assert report.validate(doc) == []
    assert doc["schema"] == "tether.bench/1"
    assert doc["theoretical"]["flops"]["fp32"] == pytest.approx(66.9e12, rel=1e-3)
    assert doc["measured"]["flops"]["fp32"] == 60e12
    assert doc["measured"]["dram_bytes_per_s"] == pytest.approx((12 << 27) / 5.0e-4)
    json.dumps(doc, allow_nan=False)


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda d: d.pop("results"), "missing 'results'"),
        (lambda d: d.update(schema="tether.bench/2"), "not one of"),
        (lambda d: d.update(simulator="no"), "expected boolean"),
        (lambda d: d["results"][0].pop("time_s"), "missing 'time_s'"),
        (lambda d: d["results"][0].update(precision="fp4"), "not one of"),
        (lambda d: d["results"][0].update(flops=-1), "below 0"),
        (lambda d: d["results"][0].update(flops=1.5), "expected integer"),
        (lambda d: d["results"][0].update(bound="cache"), "not one of"),
        (lambda d: d["results"][0]["time_s"].pop("n"), "missing 'n'"),
        (lambda d: d["results"][0].update(ai=float("nan")), "expected number"),
        (lambda d: d["theoretical"]["flops"].pop("fp16"), "missing 'fp16'"),
        (lambda d: d["results"][0].update(simulated=True), "simulated result placed"),
        (lambda d: d["results"][0].update(verified=False), "timed although not verified"),
    ],
)
def test_validator_rejects(mutate, message: str) -> None:
    doc = copy.deepcopy(document())
    mutate(doc)
    problems = report.validate(doc)
    assert any(message in p for p in problems), problems


def test_validator_rejects_non_object() -> None:
    assert report.validate([]) != []


def test_table_plain_and_rich(capsys: pytest.CaptureFixture[str]) -> None:
    doc = document()
    doc["results"].append(
        result(
            verified=False, time_s=None, error="verification failed: boom", roofline_fraction=None
        )
    )
    text = report.render_plain(doc)
    assert "triad/grid-stride" in text and "96.0%" in text and "FAILED" in text and "boom" in text
    report.print_table(doc)
    out = capsys.readouterr().out
    assert "gemm/regblock" in out and "fp16 (fp32 acc)" in out


def test_simulator_title() -> None:
    doc = document(simulator=True, name="Numba CUDA simulator")
    assert "SIMULATOR" in report.render_plain(doc)


@pytest.mark.parametrize("suffix", [".png", ".svg"])
def test_plot_renders(tmp_path: Path, suffix: str) -> None:
    out = tmp_path / f"roofline{suffix}"
    summary = plot.render([document()], out)
    assert out.stat().st_size > 1000
    assert summary["points"] == 5 and summary["simulated_skipped"] == 0  # copy (AI 0): no place
    if suffix == ".png":
        assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    else:
        assert "<svg" in out.read_text()


def test_plot_overlays_files_and_skips_simulated(tmp_path: Path) -> None:
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    a.write_text(json.dumps(document()))
    sim = document(
        [result(simulated=True, roofline_fraction=None)],
        simulator=True,
        name="Numba CUDA simulator",
    )
    b.write_text(json.dumps(sim))
    out = tmp_path / "both.png"
    assert cli.main(["plot", str(a), str(b), "-o", str(out)]) == 0
    assert out.stat().st_size > 1000
    assert plot.render([plot.load(a), plot.load(b)], out)["simulated_skipped"] == 1


def test_plot_rejects_bad_files(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text('{"schema": "something else"}')
    assert cli.main(["plot", str(bad), "-o", str(tmp_path / "x.png")]) == 65
    assert cli.main(["plot", str(tmp_path / "missing.json"), "-o", str(tmp_path / "x.png")]) == 65
    good = tmp_path / "good.json"
    good.write_text(json.dumps(document()))
    assert cli.main(["plot", str(good), "-o", str(tmp_path / "x.jpg")]) == 2
    assert "Traceback" not in capsys.readouterr().err
