"""Remote runs: trigger latency and `tether run` end to end, side by side with ssh and rsync+ssh.

    python bench/bench_runs.py [--quick] [--skip-tools] [--json OUT]
                               [--samples 30] [--runs 20] [--tree-files 3000]

1. change landed -> run started: a daemon (`tether daemon` in a subprocess, private folders)
   watches a two-way pair with a trigger (``on = ["src/**/*.py"]``, ``run = "date +%s.%N >> F"``);
   a matching file is saved, the moment its content is readable in the remote folder is taken
   (polled every 0.5 ms on this machine), and the run's own start time (the ``date`` it wrote, same
   clock) is read back. Also the `trigger.started` event's ``latency_ms`` (trigger fired -> the
   host agent answered the exec) and save -> run start.
2. `tether run -- true` end to end (a fresh CLI process each time, the agent already installed on
   the host), with and without the sync of a few-thousand-file tree; next to `ssh host 'cd DIR &&
   true'` and the seed's `rsync -a ... && ssh host 'cd DIR && true'`; and where tether's time
   goes: interpreter start, imports (`-X importtime`), SSH connect, agent start, exec + attach.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))

from bench_daemon import (  # noqa: E402
    REAL_PYTHON,
    ROOT,
    DaemonProc,
    has_content,
    machine_facts,
    make_tree,
    median,
    ms,
    no_nan,
    pct,
    precompile,
    ratio,
    start_sshd,
    wait_until,
    write_tether_project,
)

from tests.sshd import SshServer  # noqa: E402

# -- 1. change landed -> run started ------------------------------------------------------------


def read_starts(path: Path) -> list[float]:
    try:
        return [float(x) for x in path.read_text().split()]
    except (OSError, ValueError):
        return []


def trigger_latency(work: Path, server: SshServer, tree: int, samples: int) -> dict[str, Any]:
    local, remote = work / "trig-local", work / "trig-remote"
    starts_file = work / "run-starts.txt"
    files = make_tree(local, tree)
    cfg = write_tether_project(
        work / "trig-project", server, local, str(remote),
        extra=f'\n[triggers.bench]\npair = "code"\non = ["src/**/*.py"]\n'
        f'run = "date +%s.%N >> {starts_file}"\n',
    )  # fmt: skip
    daemon = DaemonProc(work, "trig").start()
    landed_to_start, save_to_start, missed = [], [], 0
    try:
        daemon.call("register", str(cfg))
        daemon.wait_synced(300)
        # The initial sync lands every src/**/*.py: that fires one run; let it pass.
        wait_until(lambda: len(read_starts(starts_file)) >= 1, 20, 0.01)
        time.sleep(0.5)
        first = time.time()
        targets = files[:: max(1, len(files) // 10)][:10]
        for i in range(samples):
            before = len(read_starts(starts_file))
            path = targets[i % len(targets)]
            content = (f"# edit {i}\n".encode() + b"y" * (300 + i))[: 300 + i]
            saved = time.time()
            path.write_bytes(content)
            landed = wait_until(has_content(remote / path.relative_to(local), content), 15)
            if math.isnan(wait_until(lambda: len(read_starts(starts_file)) > before, 15)):  # noqa: B023
                missed += 1
                continue
            run_start = read_starts(starts_file)[before]
            landed_to_start.append(run_start - landed)
            save_to_start.append(run_start - saved)
            time.sleep(0.3)  # the run (`date`) ends; the trigger is idle again
        events = [e for e in daemon.call("logs", 2000) if e["ts"] >= first]
    finally:
        daemon.stop()
    started = [e["latency_ms"] / 1000 for e in events if e["kind"] == "trigger.started"]
    return {
        "landed_to_run_start_s": landed_to_start,
        "save_to_run_start_s": save_to_start,
        "trigger_started_latency_s": started,
        "runs_fired": len(started),
        "missed": missed,
    }


# -- 2. `tether run -- true` ------------------------------------------------------------------


def timed(cmd: list[str], n: int, env: dict[str, str] | None = None, warm: int = 1) -> list[float]:
    """Wall times of ``n`` runs of ``cmd`` after ``warm`` untimed ones."""
    times = []
    for i in range(warm + n):
        started = time.perf_counter()
        done = subprocess.run(cmd, env=env, capture_output=True, timeout=120, check=False)
        took = time.perf_counter() - started
        if done.returncode != 0:
            raise RuntimeError(f"{cmd} exited {done.returncode}: {done.stderr.decode()[-500:]}")
        if i >= warm:
            times.append(took)
    return times


IMPORTS = "import tether.cli.main, tether.cli.commands.run"
"""What `tether run` imports before it connects (the CLI may load a verb's module on demand)."""


def import_profile(env: dict[str, str]) -> tuple[list[tuple[str, float]], float]:
    """`-X importtime` of IMPORTS: the modules they pull in directly, heaviest first
    (cumulative s), and the total."""
    out = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", IMPORTS],
        env=env, capture_output=True, text=True, check=True,
    )  # fmt: skip
    children: list[tuple[str, float]] = []
    heavy: dict[str, float] = {}
    total = 0.0
    for line in out.stderr.splitlines():
        m = re.match(r"import time:\s+(\d+) \|\s+(\d+) \|( *)(\S+)", line)
        if not m:
            continue
        cumulative, depth, name = int(m.group(2)) / 1e6, len(m.group(3)), m.group(4)
        if depth == 3:  # one level in: a direct import of the next top-level line
            children.append((name, cumulative))
        elif depth == 1:  # a top-level import; its children were printed just before it
            if name.startswith("tether"):
                total += cumulative
                for child, t in children:
                    heavy[child] = heavy.get(child, 0.0) + t
            children = []
    return sorted(heavy.items(), key=lambda kv: -kv[1]), total


def agent_costs(work: Path, n: int = 5) -> dict[str, list[float]]:
    """Two costs inside the host's share, measured here (the host is this machine): compiling
    the agent's bundle (the bootstrap compiles the source it verified, so no bytecode is cached)
    on each agent start, and one `exec` answered by a running agent (it forks the run's
    supervisor, which reports the pid)."""
    from tether.transport.agent_boot import bundle_files
    from tether.transport.agent_client import AgentClient

    sources = bundle_files()
    compile_s = []
    for _ in range(n):
        started = time.perf_counter()
        for name, source in sources:
            compile(source, name, "exec")
        compile_s.append(time.perf_counter() - started)

    async def execs() -> list[float]:
        client = await AgentClient.spawn_local(REAL_PYTHON)
        times = []
        try:
            for _ in range(n):
                started = time.perf_counter()
                await client.exec(["true"], cwd=str(work))
                times.append(time.perf_counter() - started)
        finally:
            await client.close()
        return times

    return {"compile_agent": compile_s, "exec_answered": asyncio.run(execs())}


def inprocess_breakdown(cfg: Path, n: int, state: Path) -> dict[str, list[float]]:
    """The CLI's steps timed inside one process: connect, agent start, sync, exec + attach."""
    os.environ["TETHER_STATE_DIR"] = str(state)
    from tether.config import load_config
    from tether.runs.remote import RunSpec, run_to_end
    from tether.sync.engine import sync_pair
    from tether.transport.endpoints import SSH
    from tether.transport.link import Link

    config = load_config(cfg)
    pair = config.pair(None)
    host = config.host(pair.host)
    steps: dict[str, list[float]] = {"connect": [], "agent": [], "sync": [], "exec": []}

    async def once() -> None:
        t0 = time.perf_counter()
        async with Link(host) as link:
            await link.wait_up(15)
            t1 = time.perf_counter()
            agent = await link.wait_agent(30)
            t2 = time.perf_counter()
            await sync_pair(config, pair, SSH, client=agent)
            t3 = time.perf_counter()
            spec = RunSpec(host=host, pair=pair, argv=["true"])
            await run_to_end(link, spec, lambda _chunk: None)
            t4 = time.perf_counter()
        steps["connect"].append(t1 - t0)
        steps["agent"].append(t2 - t1)
        steps["sync"].append(t3 - t2)
        steps["exec"].append(t4 - t3)

    for _ in range(n):
        asyncio.run(once())
    return steps


def run_cli(work: Path, server: SshServer, tree: int, n: int, skip_tools: bool) -> dict[str, Any]:
    local, remote = work / "run-local", work / "run-remote"
    make_tree(local, tree)
    cfg = write_tether_project(work / "run-project", server, local, str(remote), mode="push")
    state = work / "run-state"
    state.mkdir()
    env = dict(os.environ, PYTHONPATH=str(ROOT), TETHER_STATE_DIR=str(state))
    tether = [sys.executable, "-m", "tether.cli.main", "--config", str(cfg), "run"]
    out: dict[str, Any] = {}
    # warm: the first run installs the agent on the host and syncs the tree
    sync_times = timed([*tether, "--", "true"], n, env, 1)
    out["tether run --no-sync -- true"] = timed([*tether, "--no-sync", "--", "true"], n, env, 1)
    out["tether run -- true (sync)"] = sync_times
    # The same with the agent (daemon) watching the project: its link and agent are warm.
    runtime = work / "run-runtime"
    runtime.mkdir(mode=0o700)
    warm_env = dict(env, TETHER_RUNTIME_DIR=str(runtime))
    base_cmd = [sys.executable, "-m", "tether.cli.main", "--config", str(cfg)]
    subprocess.run([*base_cmd, "start"], env=warm_env, check=True, capture_output=True)
    try:
        out["tether run --no-sync -- true, daemon running"] = timed(
            [*tether, "--no-sync", "--", "true"], n, warm_env, 2
        )
        out["tether run -- true (sync), daemon running"] = timed(
            [*tether, "--", "true"], n, warm_env, 1
        )
    finally:
        subprocess.run([*base_cmd, "stop", "--all"], env=warm_env, capture_output=True)
    if not skip_tools and shutil.which("rsync"):
        ssh = server.ssh_command()
        r_remote = work / "rsync-remote"
        out["ssh host 'cd DIR && true'"] = timed([*ssh, "127.0.0.1", f"cd {local} && true"], n)
        script = (
            f"rsync -a --delete -e {json.dumps(' '.join(ssh))} {local}/ 127.0.0.1:{r_remote}/ "
            f"&& {' '.join(ssh)} 127.0.0.1 'cd {r_remote} && true'"
        )
        out["rsync -a ... && ssh host 'cd DIR && true'"] = timed(["sh", "-c", script], n)
    # where tether's time goes
    py = {
        "python -c pass": timed([sys.executable, "-c", "pass"], 5, env),
        "imports": timed([sys.executable, "-c", IMPORTS], 5, env),
    }
    heavy, imports_total = import_profile(env)
    steps = inprocess_breakdown(cfg, max(3, n // 2), state)
    steps.update(agent_costs(work))
    return {
        "times_s": out,
        "python_s": py,
        "imports_total_s": imports_total,
        "heaviest_imports": heavy[:6],
        "steps_s": steps,
        "tree_files": tree,
    }


# -- main -------------------------------------------------------------------------------------


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="tiny sizes, few repetitions (smoke)")
    ap.add_argument("--skip-tools", action="store_true", help="tether only")
    ap.add_argument("--json", type=Path, metavar="OUT", help="write the figures as JSON")
    ap.add_argument("--samples", type=int, help="trigger samples (default 30)")
    ap.add_argument("--runs", type=int, help="runs per command (default 20)")
    ap.add_argument("--tree-files", type=int, help="files in the synced tree (default 3000)")
    args = ap.parse_args()
    q = args.quick
    samples = args.samples or (4 if q else 30)
    runs = args.runs or (3 if q else 20)
    tree = args.tree_files or (200 if q else 3000)

    facts = machine_facts()
    print(facts)
    precompile()
    print(f"host agent and runs use {REAL_PYTHON} (not a `python3` shim on PATH)", flush=True)
    if not args.skip_tools and not shutil.which("rsync"):
        print("rsync: not installed; the incumbent columns are skipped")
    work = Path(tempfile.mkdtemp(prefix="tether-bench-runs-"))
    server = start_sshd(work / "sshd")
    out: dict[str, Any] = {"machine": facts, "quick": q}
    try:
        print(f"\n[1/2] change landed -> run started, {samples} samples", flush=True)
        out["trigger"] = trigger_latency(work, server, tree, samples)
        print(f"[2/2] `tether run -- true`, {runs} runs each", flush=True)
        out["run"] = run_cli(work, server, tree, runs, args.skip_tools)
    finally:
        server.stop()
        shutil.rmtree(work, ignore_errors=True)
    print_report(out)
    if args.json:
        args.json.write_text(json.dumps(no_nan(out), indent=1))
    return 0


def line(name: str, values: list[float], width: int = 48, base: float | None = None) -> str:
    p50, p95 = pct(values, 0.5), pct(values, 0.95)
    r = f"{ratio(base, p50):>8}" if base is not None else ""
    return f"{name:<{width}} {len(values):>4} {ms(p50):>8} {ms(p95):>8} {r}"


def print_report(out: dict[str, Any]) -> None:
    print(f"\n{out['machine']}; load average at the end {os.getloadavg()[0]:.2f}")
    t = out["trigger"]
    print("\nchange landed on the host -> the triggered run's process starts (same clock)")
    print(f"{'what':<48} {'n':>4} {'p50':>8} {'p95':>8}")
    print(line("landed (remote content readable) -> run start", t["landed_to_run_start_s"]))
    print(line("trigger.started latency_ms (fire -> exec answered)",
               t["trigger_started_latency_s"]))  # fmt: skip
    print(line("local save -> run start (whole loop)", t["save_to_run_start_s"]))
    print(f"target: landed -> run start under 100 ms; {t['runs_fired']} runs fired"
          + (f", {t['missed']} saves started no run" if t["missed"] else ""))  # fmt: skip

    r = out["run"]
    times = r["times_s"]
    base = pct(times["tether run --no-sync -- true, daemon running"], 0.5)
    base_sync = pct(times["tether run -- true (sync), daemon running"], 0.5)
    print(f"\nrun `true` on the host, a fresh process each time ({r['tree_files']}-file tree)")
    print(f"{'command':<48} {'n':>4} {'p50':>8} {'p95':>8} {'ratio':>8}")
    for name, values in times.items():
        b = None
        if name.startswith("ssh"):
            b = base
        elif name.startswith("rsync"):
            b = base_sync
        print(line(name, values, base=b))
    print(
        "ratio = tether / it, p50, with the daemon running (the warm agent): `tether run "
        "--no-sync` vs plain ssh, `tether run` (with sync) vs rsync+ssh; target: < 0.5 s on "
        "loopback with a warm agent"
    )
    py = r["python_s"]
    steps = r["steps_s"]
    print("\nwhere `tether run -- true` goes (medians)")
    p_pass = median(py["python -c pass"])
    p_imp = median(py["imports"])
    parts = [
        ("interpreter start (`python -c pass`)", p_pass),
        (f"imports (`-c '{IMPORTS}'` minus the above)", p_imp - p_pass),
        ("SSH connect (Link up, in-process)", median(steps["connect"])),
        ("agent start on the host (in-process)", median(steps["agent"])),
        ("exec + attach until `true` exits (in-process)", median(steps["exec"])),
    ]
    for name, value in parts:
        print(f"  {name:<62} {ms(value):>8}")
    rest = base - sum(v for _, v in parts)
    print(f"  {'the rest (config, history, teardown) = --no-sync p50 - sum':<62} {ms(rest):>8}")
    print(f"  {'sync of the unchanged tree (in-process; the with-sync extra)':<62} "
          f"{ms(median(steps['sync'])):>8}")  # fmt: skip
    print(
        f"  inside those: each agent start compiles the agent's bundle from source: "
        f"{ms(median(steps['compile_agent']))}; a running agent's exec "
        f"(it forks the supervisor) answers after {ms(median(steps['exec_answered']))}"
    )
    heavy = ", ".join(f"{name} {s * 1000:.0f}" for name, s in r["heaviest_imports"])
    print(
        f"  -X importtime: tether's modules {r['imports_total_s'] * 1000:.0f} ms cumulative; "
        f"heaviest direct imports (ms): {heavy}"
    )


if __name__ == "__main__":
    sys.exit(main())
