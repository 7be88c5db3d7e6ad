"""The `tether` entry point itself: what every verb shares."""

from __future__ import annotations

import gc
import subprocess
import sys
from pathlib import Path

from tether.cli import main as cli
from tether.errors import EX_CONFIG


def test_own_process_skips_exit_collections_a_caller_keeps_them(tmp_path: Path) -> None:
    """`tether` freezes the collector's view as it ends (shutdown then skips a full pass over
    every object: ~0.1 s after a sync), on success and on error; `main(argv)` called from
    Python leaves the caller's collector alone."""
    missing = str(tmp_path / "nowhere" / "tether.toml")
    before = gc.get_freeze_count()
    assert cli.main(["--config", missing, "conflicts"]) == EX_CONFIG
    assert gc.get_freeze_count() == before

    probe = (
        "import gc, sys; from tether.cli import main as cli; "
        f"sys.argv[1:] = ['--config', {missing!r}, 'conflicts']; "
        "code = cli.main(); print(code, gc.get_freeze_count() > 0)"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, check=True
    )
    assert out.stdout.split() == [str(EX_CONFIG), "True"], out.stderr
