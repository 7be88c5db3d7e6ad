"""Start the per-user daemon, detached, when nothing answers on its socket.

Shared by `tether start` and the tray's "Start agent": both only need a daemon to be there; the
daemon itself refuses to run twice (a second one finds the socket taken and exits).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time

from ..dirs import open_private, state_dir
from ..errors import TetherError
from .control_lite import daemon_running

START_TIMEOUT_S = 15.0


def ensure_daemon() -> bool:
    """Start `tether daemon` detached if nothing answers on the socket; True if started."""
    if daemon_running():
        return False
    log_path = state_dir() / "daemon.log"
    with open_private(log_path, "ab") as log_file:
        subprocess.Popen(
            [sys.executable, "-m", "tether.cli.main", "daemon"],
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=log_file,
            start_new_session=True,
            env=os.environ.copy(),
            cwd="/",
        )
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if daemon_running():
            return True
        time.sleep(0.05)
    raise TetherError(f"the daemon did not start within {START_TIMEOUT_S:g}s", f"see {log_path}")
