"""How a run the history still calls running ended, read from the host's account of it."""

from __future__ import annotations

import pytest
from tether.errors import BadHostData
from tether.runs.settle import Ending, ending


@pytest.mark.parametrize(
    ("summary", "expected"),
    [
        ({"run_id": "r", "running": True}, None),
        (None, Ending(None, None, "lost")),  # the host never heard of it
        ({"run_id": "r", "running": False}, Ending(None, None, "lost")),  # no status written
        ({"running": False, "exit_code": 3}, Ending(3, None, "exited")),  # an older agent
        (
            {"running": False, "signal": "SIGTERM", "reason": "orphaned"},
            Ending(None, 15, "orphaned"),
        ),
        ({"running": False, "signal": "SIGINT", "reason": "stopped"}, Ending(None, 2, "stopped")),
    ],
    ids=["running", "unknown", "vanished", "exited", "orphaned", "stopped"],
)
def test_ending(summary: dict | None, expected: Ending | None) -> None:
    assert ending(summary) == expected


@pytest.mark.parametrize(
    "summary", [{"exit_code": 300}, {"signal": 0.5}, {"exit_code": 0, "reason": "x"}]
)
def test_ending_rejects_what_no_host_reports(summary: dict) -> None:
    with pytest.raises(BadHostData):
        ending(summary)
