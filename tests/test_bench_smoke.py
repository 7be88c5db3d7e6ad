"""The benchmarks in bench/ run end to end at their smallest (--quick) and write their figures.

Slow (each starts an sshd, a daemon and, when installed, lsyncd, unison and autossh): run with
``pytest -m slow tests/test_bench_smoke.py``. The incumbent tools' columns are exercised when all
of them are installed; otherwise the run is tether-only (--skip-tools), so the test never installs
anything.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
TOOLS = ("lsyncd", "unison", "autossh", "rsync")


@pytest.mark.slow
@pytest.mark.timeout(480)
@pytest.mark.parametrize("script", ["bench_daemon.py", "bench_runs.py"])
def test_bench_runs_quick_and_writes_json(script: str, tmp_path: Path) -> None:
    out = tmp_path / "figures.json"
    cmd = [sys.executable, str(REPO / "bench" / script), "--quick", "--json", str(out)]
    if not all(shutil.which(tool) for tool in TOOLS):
        cmd.append("--skip-tools")
    env = dict(os.environ, PYTHONPATH=str(REPO))
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=450, env=env, check=False)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "machine: " in done.stdout and "ratio" in done.stdout
    figures = json.loads(out.read_text())
    assert figures["quick"] is True
    if script == "bench_daemon.py":
        assert figures["latency"]["tether"]["latencies_s"], "no save landed"
        assert all(v is not None for v in figures["reconnect"]["tether"]["link_up_s"])
        assert figures["idle"]["cpu_fraction"] >= 0 and figures["idle"]["hwm_mb"] > 0
    else:
        assert figures["trigger"]["landed_to_run_start_s"], "no triggered run started"
        assert figures["run"]["times_s"]["tether run --no-sync -- true"]
