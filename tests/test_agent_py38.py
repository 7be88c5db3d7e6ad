"""The agent runs on the host's ``python3``, which may be as old as 3.8: a tool checks that what
ships in its bundle needs nothing newer, instead of everyone remembering."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tether.transport.agent_boot import BUNDLE

PACKAGE = Path(__file__).resolve().parents[1] / "daemon"
VERMIN = str(Path(sys.executable).with_name("vermin"))  # installed beside this Python


def oldest_python(*files: Path) -> subprocess.CompletedProcess[str]:
    """vermin's verdict on ``files`` against Python 3.8 (exit 0: they run there)."""
    return subprocess.run(
        [VERMIN, "-t=3.8-", "--no-tips", "--violations", *map(str, files)],
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_the_agent_bundle_needs_nothing_newer_than_python_3_8() -> None:
    verdict = oldest_python(*(PACKAGE / name for name in BUNDLE))
    assert verdict.returncode == 0, verdict.stdout + verdict.stderr


def test_the_check_catches_a_newer_api_and_newer_syntax(tmp_path: Path) -> None:
    for line in ('name = "x.py".removeprefix("x")\n', "match 1:\n    case _:\n        pass\n"):
        scratch = tmp_path / "agent.py"
        scratch.write_text((PACKAGE / "agent" / "agent.py").read_text() + line)
        verdict = oldest_python(scratch)
        assert verdict.returncode != 0, line
        assert "3.9" in verdict.stdout or "3.10" in verdict.stdout, verdict.stdout
