"""The results store and `tether results` on hand-made tether.bench/1 documents (built with the
suite's own report helpers: synthetic test data, not measurements)."""

from __future__ import annotations

import csv
import io
import json
import os
from pathlib import Path

import pytest
from tether.cli.main import main
from tether.errors import BadHostData, UsageError
from tether.results.store import ResultsStore, ingest_file, load_document
from tether_kernels import gpus, report, roofline

H100 = gpus.lookup("H100 SXM")
PEAKS = H100.peaks()


def gemm(variant: str, precision: str, median_s: float, *, simulated: bool = False) -> dict:
    m = n = k = 4096
    flops = 2 * m * n * k
    nbytes = (m * k + k * n + m * n) * roofline.ITEMSIZE[precision]
    ai = roofline.arithmetic_intensity(flops, nbytes)
    rate, byte_rate = flops / median_s, nbytes / median_s
    peak, bw = PEAKS["flops"][precision], PEAKS["dram_bytes_per_s"]
    fraction = roofline.roofline_fraction(rate, byte_rate, ai, peak, bw)
    return {
        "family": "gemm",
        "kernel": "gemm",
        "variant": variant,
        "precision": precision,
        "compute_precision": precision,
        "shape": [m, n, k],
        "flops": flops,
        "bytes": nbytes,
        "ai": ai,
        "time_s": {"median": median_s, "min": median_s * 0.98, "max": median_s * 1.03, "n": 10},
        "flops_per_s": rate,
        "bytes_per_s": byte_rate,
        "bound": None if simulated else roofline.bound(ai, peak, bw),
        "roofline_fraction": None if simulated else fraction,
        "verified": True,
        "max_rel_err": 1e-7,
        "tolerance": 1e-5,
        "simulated": simulated,
        "source": "builtin",
        "error": None,
    }


def document(times: dict[tuple[str, str], float], *, simulated: bool = False) -> dict:
    if simulated:
        device = {"name": "Numba CUDA simulator", "simulator": True, "peaks": {}}
    else:
        device = {"name": "NVIDIA H100 80GB HBM3", "simulator": False, "peaks": PEAKS}
        device["peaks_source"] = "table:H100 SXM"
    results = [gemm(v, p, t, simulated=simulated) for (v, p), t in times.items()]
    doc = report.build_document(device, results, simulator=simulated)
    assert report.validate(doc) == []
    return doc


BASE = {("naive", "fp32"): 0.100, ("tiled", "fp32"): 0.020, ("regblock", "fp64"): 0.010}


@pytest.fixture
def state(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("TETHER_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.setenv("COLUMNS", "200")
    return tmp_path / "state"


def write(path: Path, doc: object) -> Path:
    path.write_text(json.dumps(doc))
    return path


def cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(["results", *args])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_ingest_file_stores_one_row_per_point(state: Path, tmp_path: Path) -> None:
    path = write(tmp_path / "a.tether.json", document(BASE))
    assert ingest_file(path, run_id="run-a", host="gpu") == 3
    assert oct((state / "results.sqlite3").stat().st_mode & 0o777) == "0o600"
    with ResultsStore() as store:
        [info] = store.runs()
        points = store.points("run-a")
    assert (info.run_id, info.host, info.device, info.points) == (
        "run-a", "gpu", "NVIDIA H100 80GB HBM3", 3
    )  # fmt: skip
    assert [(p.label, p.precision, p.shape) for p in points] == [
        ("gemm/naive", "fp32", "4096x4096x4096"),
        ("gemm/tiled", "fp32", "4096x4096x4096"),
        ("gemm/regblock", "fp64", "4096x4096x4096"),
    ]
    first = points[0]
    assert first.time_median == 0.1 and first.time_min == pytest.approx(0.098)
    assert first.flops_per_s == pytest.approx(2 * 4096**3 / 0.1)
    assert first.roofline_fraction is not None and 0 < first.roofline_fraction < 1
    assert first.verified and not first.simulated


def test_reingesting_a_run_replaces_it(state: Path, tmp_path: Path) -> None:
    path = write(tmp_path / "a.tether.json", document(BASE))
    ingest_file(path, run_id="run-a", host="gpu")
    write(path, document({("naive", "fp32"): 0.05}))
    assert ingest_file(path, run_id="run-a", host="gpu") == 1
    with ResultsStore() as store:
        assert len(store.runs()) == 1 and len(store.points("run-a")) == 1


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"{not json", "is not JSON"),
        (b"\xff\xfe", "is not JSON"),
        (json.dumps({"schema": "tether.bench/1"}).encode(), "missing 'created'"),
        (json.dumps([1, 2]).encode(), "expected object"),
    ],
)
def test_malformed_documents_are_refused_and_nothing_is_stored(
    state: Path, tmp_path: Path, content: bytes, message: str
) -> None:
    path = tmp_path / "bad.tether.json"
    path.write_bytes(content)
    with pytest.raises(BadHostData, match=message) as info:
        ingest_file(path, run_id="bad", host="gpu")
    assert info.value.exit_code == 65
    with ResultsStore() as store:
        assert store.runs() == []


def test_a_simulated_point_on_the_roofline_is_refused(state: Path) -> None:
    doc = document(BASE, simulated=True)
    doc["results"][0]["roofline_fraction"] = 0.5  # a host claiming simulator times are GPU ones
    with pytest.raises(BadHostData, match="simulated result placed on the roofline"):
        load_document(json.dumps(doc), "gpu:x.json")
    with ResultsStore() as store, pytest.raises(BadHostData):
        store.ingest(doc, run_id="sim", host="gpu")
    with ResultsStore() as store:
        assert store.runs() == []


def test_resolve_latest_prefix_and_unknown(state: Path) -> None:
    with ResultsStore() as store:
        with pytest.raises(UsageError, match="no results stored yet"):
            store.resolve()
        store.ingest(document(BASE), run_id="20260101-000000-aaaaaa", host="gpu")
        store.ingest(document(BASE), run_id="20260102-000000-bbbbbb", host="gpu")
        assert store.resolve() == "20260102-000000-bbbbbb"
        assert store.resolve("20260101") == "20260101-000000-aaaaaa"
        with pytest.raises(UsageError, match="ambiguous"):
            store.resolve("2026010")
        with pytest.raises(UsageError, match="no stored run"):
            store.resolve("1999")
        with pytest.raises(UsageError, match="no stored run"):
            store.resolve("%")  # LIKE wildcards are literal


def test_compare_speedups_and_regressions(state: Path) -> None:
    slower = dict(BASE)
    slower[("naive", "fp32")] = 0.050  # 2x faster
    slower[("tiled", "fp32")] = 0.0206  # 3% slower: noise, not a regression
    slower[("regblock", "fp64")] = 0.0111  # 11% slower: a regression
    with ResultsStore() as store:
        store.ingest(document(BASE), run_id="a", host="gpu")
        store.ingest(document(slower), run_id="b", host="gpu")
        rows = {(r.variant, r.precision): r for r in store.compare("a", "b")}
    assert rows[("naive", "fp32")].speedup == pytest.approx(2.0)
    assert not rows[("naive", "fp32")].regression
    assert not rows[("tiled", "fp32")].regression
    assert rows[("regblock", "fp64")].regression
    assert rows[("regblock", "fp64")].speedup == pytest.approx(0.010 / 0.0111)


def test_cli_lists_latest_run_csv_and_json(state: Path, capsys: pytest.CaptureFixture) -> None:
    assert cli(capsys)[0] == 0  # nothing stored yet: a note, not an error
    with ResultsStore() as store:
        store.ingest(document(BASE), run_id="old-run", host="gpu")
        store.ingest(document({("naive", "fp16"): 0.2}), run_id="new-run", host="gpu")
    code, out, _ = cli(capsys)
    assert code == 0 and "new-run" in out and "gemm/naive" in out and "fp16" in out
    assert "old-run" not in out
    code, out, _ = cli(capsys, "--csv", "old-run")
    rows = list(csv.DictReader(io.StringIO(out)))
    assert code == 0 and len(rows) == 3
    assert rows[0]["run_id"] == "old-run" and rows[0]["kernel"] == "gemm"
    assert float(rows[0]["time_median"]) == 0.1 and rows[0]["verified"] == "True"
    code, out, _ = cli(capsys, "--json", "old-run", "new-run")
    assert code == 0 and [p["run_id"] for p in json.loads(out)] == ["old-run"] * 3 + ["new-run"]
    code, out, _ = cli(capsys, "--list")
    assert code == 0 and "old-run" in out and "new-run" in out


def test_cli_compare_flags_regressions(state: Path, capsys: pytest.CaptureFixture) -> None:
    slower = {**BASE, ("regblock", "fp64"): 0.012}
    with ResultsStore() as store:
        store.ingest(document(BASE), run_id="a", host="gpu")
        store.ingest(document(slower), run_id="b", host="gpu")
        store.ingest(document({("naive", "fp16"): 0.2}), run_id="other", host="gpu")
    code, out, _ = cli(capsys, "--compare", "a", "b")
    assert code == 0 and "REGRESSION" in out and "1 regression(s)" in out and "1.00x" in out
    code, out, _ = cli(capsys, "--compare", "a", "b", "--json")
    rows = json.loads(out)["rows"]
    assert [r["regression"] for r in rows] == [False, False, True]
    assert main(["results", "--compare", "a", "other"]) == UsageError.exit_code  # nothing shared
    assert "no benchmark in common" in capsys.readouterr().err


def test_cli_plot_overlays_runs_and_never_plots_simulated(
    state: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    with ResultsStore() as store:
        store.ingest(document(BASE), run_id="a", host="gpu")
        store.ingest(document({("naive", "fp32"): 0.05}), run_id="b", host="gpu")
        store.ingest(document(BASE, simulated=True), run_id="sim", host="gpu")
    out_png = tmp_path / "plots" / "roof.png"
    code, _, err = cli(capsys, "--plot", str(out_png), "a", "b")
    assert code == 0 and "4 points" in err
    assert out_png.read_bytes()[:4] == b"\x89PNG" and out_png.stat().st_size > 1000
    code, _, err = cli(capsys, "--plot", str(tmp_path / "sim.svg"), "sim")
    assert code == 0 and "0 points" in err and "3 simulated results not plotted" in err
    assert main(["results", "--plot", str(tmp_path / "x.gif")]) == UsageError.exit_code
    assert not os.path.exists(tmp_path / "x.gif")
