"""What the card was doing: the flags and the refusal, from recorded NVML samples (no GPU here;
the real pynvml calls run in bench/gpu_check.sh on a GPU), and the harness wiring under the
simulator with a recorded source standing in for NVML."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from tether_kernels import cardstate
from tether_kernels.cardstate import Sample

ROOT = Path(__file__).resolve().parents[1]
ME = 4242

CLEAN = [
    Sample(1980, 3201, 120.0, 40, 0x0, {ME: 1 << 30}, 100 << 30),
    Sample(1980, 3201, 690.0, 61, 0x1, {ME: 2 << 30}, 99 << 30),
]


def test_clean_run_is_not_flagged() -> None:
    card = cardstate.summarize(CLEAN, baseline=set(), own_pid=ME)
    assert card["sm_clock_mhz"] == [1980.0, 1980.0]
    assert card["power_w_max"] == 690.0 and card["temperature_c_max"] == 61.0
    assert card["throttle_reasons"] == ["gpu idle"]
    assert not card["throttled"] and not card["shared"]
    assert cardstate.flags(card) == ""


def test_power_cap_during_the_run_is_flagged() -> None:
    capped = [*CLEAN, Sample(1410, 3201, 700.0, 70, 0x4 | 0x1, {ME: None}, None)]
    card = cardstate.summarize(capped, baseline=set(), own_pid=ME)
    assert card["throttled"] and card["sm_clock_mhz"] == [1410.0, 1980.0]
    assert cardstate.flags(card) == "THROTTLED (sw power cap)"
    assert cardstate.reasons(0x40 | 0x1000) == ["hw thermal slowdown", "0x1000"]


def test_a_notebook_on_the_gpu_is_flagged_shared() -> None:
    notebook = [Sample(1980, 3201, 200.0, 45, 0, {ME: 1 << 30, 77: 8 << 30}, 90 << 30)]
    card = cardstate.summarize(notebook, baseline={77}, own_pid=ME)
    assert card["shared"] and card["other_pids"] == [77]
    assert cardstate.flags(card) == "SHARED (1 other processes)"


def test_in_a_container_our_host_pid_is_not_someone_else() -> None:
    # NVML reports host pids: ours (9001) is not os.getpid(); it appeared with our context.
    assert cardstate.other_processes(set(), {9001}, own_pid=ME) == set()
    assert cardstate.other_processes({77}, {77, 9001}, own_pid=ME) == {77}
    # two newcomers: one is us, but which is unknown, so both are reported
    assert cardstate.other_processes(set(), {9001, 9002}, own_pid=ME) == {9001, 9002}


def test_refusal_is_one_line_with_the_fix() -> None:
    assert cardstate.refusal(1 << 30, 80 << 30) is None
    assert cardstate.refusal(1 << 30, None) is None  # unknown: try it
    why = cardstate.refusal(3 << 30, 2 << 30)
    assert why is not None and "\n" not in why
    assert "needs 3.00 GiB" in why and "2.00 GiB is free" in why and "--gemm" in why


class Recorded:
    """A source replaying samples, repeating the last one."""

    def __init__(self, samples: list[Sample]) -> None:
        self.samples = list(samples)

    def sample(self) -> Sample:
        return self.samples.pop(0) if len(self.samples) > 1 else self.samples[0]


def test_monitor_records_samples_around_the_timed_part() -> None:
    src = Recorded([Sample(processes={77: 1}), *CLEAN])
    mon = cardstate.CardMonitor(src, interval_s=3600, own_pid=ME)
    mon.open()
    mon.begin()
    card = mon.end()
    assert mon.baseline == {77}
    assert card["samples"] == 2 and card["shared"] and card["other_pids"] == [77]


HARNESS = """
import json, sys
from tether_kernels import cardstate, report, stream
from tether_kernels.cardstate import Sample
from tether_kernels.harness import run_benchmark

class Recorded:
    def __init__(self, samples):
        self.samples = list(samples)
    def sample(self):
        return self.samples.pop(0) if len(self.samples) > 1 else self.samples[0]

triad = next(b for b in stream.benchmarks(["fp32"]) if b.name == "triad")
full = cardstate.CardMonitor(Recorded([Sample(memory_free_bytes=1 << 30)]), own_pid=1)
refused = run_benchmark(triad, card=full)  # 3 x 512 MiB does not fit in 1 GiB
busy = cardstate.CardMonitor(Recorded([
    Sample(processes={77: 1}, memory_free_bytes=80 << 30),
    Sample(1980, 3201, 300.0, 50, 0x20, {77: 1, 1: 1}, 80 << 30),
]), interval_s=3600, own_pid=1)
busy.open()
ran = run_benchmark(triad, quick=True, card=busy)
doc = report.build_document({"name": "sim", "simulator": True}, [refused, ran], simulator=True)
assert report.validate(doc) == [], report.validate(doc)
print(json.dumps({"refused": refused, "ran": ran, "table": report.render_plain(doc)}))
"""


def test_harness_refuses_what_does_not_fit_and_flags_the_table() -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "NUMBA_ENABLE_CUDASIM": "1"}
    p = subprocess.run([sys.executable, "-c", HARNESS], env=env, cwd=ROOT, capture_output=True,
                       text=True, timeout=110)  # fmt: skip
    assert p.returncode == 0, p.stderr[-3000:]
    out = json.loads(p.stdout.strip().splitlines()[-1])
    refused, ran = out["refused"], out["ran"]
    assert refused["error"].startswith("refused: needs 1.50 GiB") and not refused["verified"]
    assert refused["time_s"] is None and refused["card"] is None
    assert ran["verified"] and ran["card"]["throttled"] and ran["card"]["shared"]
    assert ran["card"]["throttle_reasons"] == ["sw thermal slowdown"]
    assert "THROTTLED (sw thermal slowdown); SHARED (1 other processes)" in out["table"]
