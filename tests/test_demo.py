"""`tether demo` runs the whole loop offline, as a user would run it: a subprocess, no sshd."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path


def test_demo_runs_the_whole_loop(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TETHER_")}
    env["HOME"] = str(tmp_path)  # the demo must not need (or touch) the user's own state
    result = subprocess.run(
        [sys.executable, "-m", "tether.cli.main", "demo", "--keep", str(tmp_path / "demo")],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        stdin=subprocess.DEVNULL,
    )
    out = result.stdout
    assert result.returncode == 0, out + result.stderr
    for line in (
        "check the host",
        "files pushed",
        "on the host",
        "verified=True",
        "not a GPU figure",
        "reaches a web server",
        "demo finished",
    ):
        assert line in out, f"missing {line!r} in:\n{out}"
    assert "Traceback" not in out + result.stderr
    assert "Task exception was never retrieved" not in result.stderr
    # Everything the demo kept stayed inside its own folder.
    assert (tmp_path / "demo" / "project" / "results" / "latest.tether.json").is_file()
    assert not (tmp_path / ".local" / "state" / "tether").exists()
    # Nothing the demo started is left running (its web server on the host included).
    left = subprocess.run(["pgrep", "-f", str(tmp_path / "demo")], capture_output=True, text=True)
    assert left.stdout.strip() == "", "the demo left processes behind"
