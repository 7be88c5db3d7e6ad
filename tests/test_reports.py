"""`tether reports` against a real sshd: TT-NN-shaped report trees listed in one round trip,
pulled incrementally, whole or reported as still changing; `tether run --auto-fetch`."""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
from tether.reports.model import LocalStatus, Report, Settler, changed_since, local_status

from tests.helpers import tether, write_cli_project
from tests.sshd import SshServer

MEMORY = "gen/ttnn/reports"
PERF = "gen/profiler/reports"
UNICODE = "run ü ✓"


def tree(host: Path) -> None:
    """Memory reports (one named in config.json, one nested in generated folders, one with
    spaces and unicode), a folder with no marker, performance reports, autotune entries."""
    mem = host / MEMORY
    (mem / "1001").mkdir(parents=True)
    (mem / "1001" / "db.sqlite").write_bytes(b"S" * 5000)
    (mem / "1001" / "config.json").write_text(json.dumps({"report_name": "résumé ✓"}))
    (mem / "1001" / "tensors").mkdir()
    (mem / "1001" / "tensors" / "t0.bin").write_bytes(b"T" * 300)
    (mem / "nested" / "generated" / "2002").mkdir(parents=True)
    (mem / "nested" / "generated" / "2002" / "db.sqlite").write_bytes(b"x")
    (mem / UNICODE).mkdir()
    (mem / UNICODE / "db.sqlite").write_bytes(b"u" * 10)
    (mem / "no marker").mkdir()
    (mem / "no marker" / "notes.txt").write_text("not a report")
    perf = host / PERF / "2024_05_01_10_00"
    perf.mkdir(parents=True)
    (perf / "profile_log_device.csv").write_text("a,b\n1,2\n")
    (perf / "ops_perf_results.csv").write_text("op\n")
    tune = host / "tune" / "gemm" / "4096x4096"
    tune.mkdir(parents=True)
    (tune / "best.json").write_text("{}")


@pytest.fixture
def project(sshd: SshServer, tmp_path: Path, state_dir: Path) -> Path:
    host = tmp_path / "host"
    tree(host)
    return write_cli_project(
        tmp_path,
        sshd,
        pair=f'\n[reports.tt]\nhost = "gpu"\nmemory = "{host / MEMORY}"\n'
        f'performance = "{host / PERF}"\ntune = "{host / "tune"}"\n',
    )


def listed(project: Path, *args: str) -> dict[str, dict[str, object]]:
    result = tether(project, "reports", "list", "--json", *args)
    assert result.returncode == 0, result.stderr
    return {f"{r['kind']}/{r['folder']}": r for r in json.loads(result.stdout)["reports"]}


def test_list_finds_reports_by_marker_in_one_listing(project: Path) -> None:
    reports = listed(project)
    assert set(reports) == {
        "memory/1001",
        "memory/nested/generated/2002",
        f"memory/{UNICODE}",
        "performance/2024_05_01_10_00",
        "tune/gemm",  # no markers for this kind: each direct child folder is a report
    }
    first = reports["memory/1001"]
    assert first["name"] == "résumé ✓" and first["files"] == 3
    assert first["size"] == 5000 + 300 + len(json.dumps({"report_name": "résumé ✓"}))
    assert {r["status"] for r in reports.values()} == {"not pulled"}
    assert list(listed(project, "--kind", "performance")) == ["performance/2024_05_01_10_00"]

    text = tether(project, "reports", "list")
    assert text.returncode == 0, text.stderr
    assert "résumé ✓" in text.stdout and UNICODE in text.stdout and "not pulled" in text.stdout


def test_a_missing_or_unreadable_root_is_named_and_the_others_still_listed(
    project: Path, tmp_path: Path
) -> None:
    """Tests run as root here, so chmod 000 does not make a folder unreadable: the unreadable
    root is a file where a folder should be, and the other a path that does not exist."""
    (tmp_path / "afile").write_text("x")
    with (project / "tether.toml").open("a") as f:
        f.write(f'\n[reports.bad]\nhost = "gpu"\nmemory = "{tmp_path}/nowhere"\n')
        f.write(f'perf = "{tmp_path}/afile"\n')
    result = tether(project, "reports", "list", "--json")
    assert result.returncode == 1
    doc = json.loads(result.stdout)
    assert len(doc["reports"]) == 5
    assert doc["errors"] == [
        f"bad.memory: {tmp_path}/nowhere: No such file or directory",
        f"bad.perf: {tmp_path}/afile: not a folder",
    ]
    assert f"reports root bad.perf: {tmp_path}/afile: not a folder" in result.stderr


def test_pull_then_incremental_repull_moves_only_what_changed(
    project: Path, tmp_path: Path
) -> None:
    host = tmp_path / "host" / MEMORY / "1001"
    result = tether(project, "reports", "pull", "1001", f"memory/{UNICODE}")
    assert result.returncode == 0, result.stderr
    assert "pulling memory/1001 (3 files" in result.stderr
    local = project / "reports" / "gpu" / "memory"
    assert (local / "1001" / "db.sqlite").read_bytes() == b"S" * 5000
    assert (local / "1001" / "tensors" / "t0.bin").read_bytes() == b"T" * 300
    assert (local / UNICODE / "db.sqlite").read_bytes() == b"u" * 10
    reports = listed(project)
    assert reports["memory/1001"]["status"] == "up to date"
    assert reports[f"memory/{UNICODE}"]["status"] == "up to date"
    assert reports["memory/nested/generated/2002"]["status"] == "not pulled"

    (host / "tensors" / "t1.bin").write_bytes(b"N" * 77)  # the host adds to the report
    assert listed(project)["memory/1001"]["status"] == "outdated"
    again = tether(project, "reports", "pull", "--outdated", "--json")
    assert again.returncode == 0, again.stderr
    (pulled,) = json.loads(again.stdout)["pulled"]
    assert (pulled["folder"], pulled["copied"], pulled["bytes"]) == ("1001", 1, 77)
    assert (local / "1001" / "tensors" / "t1.bin").read_bytes() == b"N" * 77

    (local / "1001" / "db.sqlite").write_bytes(b"mine")
    assert listed(project)["memory/1001"]["status"] == "edited locally"


def test_a_report_still_being_written_is_not_taken_half(project: Path, tmp_path: Path) -> None:
    report = tmp_path / "host" / MEMORY / "live"
    report.mkdir()
    (report / "db.sqlite").write_bytes(b"")
    stop = tmp_path / "stop-writing"
    writer = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import os, sys, time\n"
            "path, stop = sys.argv[1], sys.argv[2]\n"
            "n = 0\n"
            "while not os.path.exists(stop):\n"
            "    with open(path, 'ab') as f: f.write(b'row %d\\n' % n)\n"
            "    n += 1; time.sleep(0.003)\n",
            str(report / "db.sqlite"),
            str(stop),
        ]
    )
    try:
        result = tether(project, "reports", "pull", "live", "--json")
    finally:
        stop.write_text("")
        writer.wait(timeout=30)
    assert result.returncode == 1, result.stderr
    (pulled,) = json.loads(result.stdout)["pulled"]
    assert pulled["changing"] is True
    calm = tether(project, "reports", "pull", "live")
    assert calm.returncode == 0, calm.stderr
    local = project / "reports" / "gpu" / "memory" / "live" / "db.sqlite"
    assert local.read_bytes() == (report / "db.sqlite").read_bytes()
    assert listed(project)["memory/live"]["status"] == "up to date"


def test_pull_of_an_unknown_folder_is_one_line(project: Path) -> None:
    result = tether(project, "reports", "pull", "nope")
    assert result.returncode != 0
    assert result.stderr.strip().splitlines()[-1].startswith("tether: no report folder 'nope'")
    assert tether(project, "reports", "pull").returncode == 2


def test_run_auto_fetch_pulls_only_what_the_run_made(project: Path, tmp_path: Path) -> None:
    new = tmp_path / "host" / MEMORY / "3003"
    script = (
        f"import os; os.makedirs({str(new)!r}); "
        f"open(os.path.join({str(new)!r}, 'db.sqlite'), 'w').write('fresh')"
    )
    (project / "make_report.py").write_text(script + "\n")
    result = tether(project, "run", "--auto-fetch", "--", "make_report.py")
    assert result.returncode == 0, result.stderr
    assert "auto-fetch: 1 report(s) pulled (memory/3003)" in result.stderr
    local = project / "reports" / "gpu" / "memory"
    assert (local / "3003" / "db.sqlite").read_text() == "fresh"
    assert not (local / "1001").exists()  # older reports are left alone


def report(folder: str, summary: tuple[int, int, int]) -> Report:
    return Report("tt", "memory", folder, "", *summary)


def test_settler_hands_out_a_report_once_it_stopped_changing() -> None:
    settler = Settler(settle_s=3)
    assert settler.observe([report("a", (1, 1, 1))], now=0) == []
    assert settler.observe([report("a", (2, 2, 2))], now=2) == []  # moved: wait again
    assert settler.observe([report("a", (2, 2, 2))], now=4) == []
    (ready,) = settler.observe([report("a", (2, 2, 2))], now=5.5)
    settler.done(ready)
    assert settler.observe([report("a", (2, 2, 2))], now=9) == []


def test_changed_since_and_local_status_are_pure() -> None:
    before = [report("a", (1, 1, 1)), report("b", (1, 1, 1))]
    after = [report("a", (1, 1, 1)), report("b", (2, 1, 1)), report("c", (1, 1, 1))]
    assert [r.folder for r in changed_since(before, after)] == ["b", "c"]
    assert local_status({}, {}, (0, 0, 0)) is LocalStatus.NOT_PULLED


def test_the_daemon_watcher_pulls_a_new_report_once_settled(project: Path, tmp_path: Path) -> None:
    """The watcher the daemon runs for `watch = true`, on a real link: a report that appears
    on the host is pulled once its listing stops moving; one already up to date is not."""
    import asyncio

    from tether.config import load_config
    from tether.reports.watcher import ReportWatcher
    from tether.transport.link import Link

    config = load_config(project / "tether.toml")
    local = project / "reports" / "gpu" / "memory" / "4004" / "db.sqlite"
    events: list[dict[str, object]] = []

    async def body() -> None:
        happened = asyncio.Event()

        def on_event(event: dict[str, object]) -> None:
            events.append(event)
            happened.set()

        async def until_pulled(n: int, deadline: float) -> None:
            while watcher.pulled < n and time.monotonic() < deadline:
                happened.clear()
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(happened.wait(), deadline - time.monotonic())

        async with Link(config.host("gpu")) as link:
            watcher = ReportWatcher(
                config, config.reports["tt"], link, on_event, poll_s=0.2, settle_s=0.6
            )
            watcher.start()
            try:
                deadline = time.monotonic() + 60
                await until_pulled(5, deadline)  # the ones there
                assert watcher.pulled == 5, events
                new = tmp_path / "host" / MEMORY / "4004"
                new.mkdir()
                (new / "db.sqlite").write_text("new report")
                await until_pulled(6, deadline)
                assert watcher.pulled == 6 and watcher.snapshot()["last"] == "tt.memory/4004"
            finally:
                await watcher.close()

    asyncio.run(body())
    assert local.read_text() == "new report"
    assert any(e["message"] == "pulled tt.memory/4004 (1 file(s))" for e in events)
