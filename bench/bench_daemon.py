"""The daemon side by side with lsyncd, unison and autossh, against one local sshd, in one go.

    python bench/bench_daemon.py [--quick] [--skip-tools] [--json OUT] [--only PART ...]
                                 [--saves 200] [--tree-files 3000] [--idle-files 100000]
                                 [--idle-s 40] [--reconnects 3]

1. save-to-remote latency: a daemon (`tether daemon` in a subprocess, private state and runtime
   folders) watches a two-way pair over a tree of a few thousand files; one small file is saved
   N times, ~50 ms apart, and the time from the save to its content being readable in the remote
   folder (polled every 0.5 ms on this machine) is recorded. The same for lsyncd (default.rsync,
   delay = 0; once as configured by hand, once with an ssh ControlMaster) and unison (`-repeat
   watch` if `unison-fsmonitor` is installed, else `-repeat 1`, said in the output).
2. reconnect: sshd and every session it spawned are killed, and sshd restarted on the same port
   ~3 s later; from the moment it listens again: tether's `link.up` event, a file saved during the
   outage being on the host, and a tether tunnel answering with the SSH banner; autossh holding an
   `-L` forward, as the seed docs recommend it (ServerAliveInterval 60, autossh defaults) and tuned
   (ServerAliveInterval 1, AUTOSSH_POLL=1, AUTOSSH_GATETIME=0): the forward answering again.
3. idle cost: a fresh daemon watches a 100,000-file tree (1,000 folders); after the initial sync,
   its CPU (utime+stime from /proc) and memory (VmRSS, VmHWM) over --idle-s seconds; the host
   agent's too (it runs on this machine, under the test sshd).

``--only idle`` (or ``latency``, ``reconnect``; repeatable) runs just those parts; latency and
reconnect share one daemon, so either runs both for tether.

Everything runs on 127.0.0.1, bounded in time; missing tools are installed with apt-get when
running as root, else their column is skipped with the reason.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import platform
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tether.service.control_client import ControlClient  # noqa: E402
from tether.service.control_lite import daemon_running  # noqa: E402

from tests.sshd import SSHD, SshServer, free_port, start_sshd  # noqa: E402

REAL_PYTHON = os.path.realpath(sys.executable)
PARTS = ("latency", "reconnect", "idle")
CLK_TCK = os.sysconf("SC_CLK_TCK")
POLL_S = 0.0005

# -- shared helpers (bench_runs.py imports these) ---------------------------------------------


def machine_facts() -> str:
    one, five, fifteen = os.getloadavg()
    return (
        f"machine: {os.cpu_count()} cores, load average {one:.2f} {five:.2f} {fifteen:.2f} at "
        f"start, Linux {platform.release()}, Python {platform.python_version()}, "
        f"{time.strftime('%Y-%m-%d %H:%M')}"
    )


def precompile() -> None:
    """Write tether's bytecode, as `pip install` does: with PYTHONDONTWRITEBYTECODE=1 set (as in
    some CI and container images) every start would otherwise compile its modules from source."""
    subprocess.run(
        [sys.executable, "-m", "compileall", "-q", "daemon", "tests"], cwd=ROOT,
        stdout=subprocess.DEVNULL, check=False,
    )  # fmt: skip
    if os.environ.get("PYTHONDONTWRITEBYTECODE"):
        print("PYTHONDONTWRITEBYTECODE is set here: tether's modules were compiled up front "
              "(as an install does), so starts read bytecode")  # fmt: skip


def pct(values: Iterable[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..1); nan for no values."""
    xs = sorted(values)
    if not xs:
        return math.nan
    return xs[min(len(xs) - 1, max(0, math.ceil(q * len(xs)) - 1))]


def median(values: Iterable[float]) -> float:
    return pct(values, 0.5)


def ms(seconds: float) -> str:
    return "-" if math.isnan(seconds) else f"{seconds * 1000:.0f} ms"


def ratio(a: float, b: float) -> str:
    if math.isnan(a) or math.isnan(b) or b <= 0:
        return "-"
    return f"{a / b:.2f}"


def ensure_tools(tools: dict[str, str], skip: bool) -> dict[str, str | None]:
    """``{binary: apt package}`` → ``{binary: None if usable else why not}``; installs with
    apt-get (as root) what is missing."""
    if skip:
        return {b: "skipped (--skip-tools)" for b in tools}
    missing = sorted({pkg for b, pkg in tools.items() if shutil.which(b) is None})
    if missing and os.geteuid() == 0 and shutil.which("apt-get"):
        print(f"installing {' '.join(missing)} with apt-get ...", flush=True)
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        with contextlib.suppress(subprocess.SubprocessError, OSError):
            if subprocess.run(
                ["apt-get", "install", "-y", "-q", *missing], env=env, capture_output=True,
                timeout=300,
            ).returncode != 0:  # fmt: skip
                subprocess.run(["apt-get", "update", "-q"], env=env, capture_output=True,
                               timeout=300)  # fmt: skip
                subprocess.run(["apt-get", "install", "-y", "-q", *missing], env=env,
                               capture_output=True, timeout=300)  # fmt: skip
    return {
        b: None if shutil.which(b) else f"{b} not installed (apt package {pkg})"
        for b, pkg in tools.items()
    }


def descendants(pid: int) -> list[int]:
    """Every live process below ``pid`` (from /proc)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def kill_sshd(server: SshServer) -> None:
    """A real outage: sshd *and* its per-connection children (which call setsid(), so
    ``SshServer.stop()``'s killpg leaves them, and their connections, alive)."""
    assert server.proc is not None
    sessions = descendants(server.proc.pid)
    server.stop()
    for pid in sessions:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def restart_sshd(server: SshServer, timeout_s: float = 10.0) -> float:
    """Start ``server`` again on its port; ``time.time()`` when it first accepts (1 ms polls)."""
    log = open(server.root / "sshd.log", "ab")  # noqa: SIM115 - owned by the process
    server.proc = subprocess.Popen(
        [SSHD, "-D", "-e", "-f", str(server.root / "sshd_config")],
        stdout=log, stderr=log, start_new_session=True,
    )  # fmt: skip
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", server.port), 1):
            return time.time()
        time.sleep(0.001)
    raise RuntimeError(f"sshd did not come back on {server.port}")


def banner_at(port: int, timeout_s: float = 0.5) -> bool:
    """True when 127.0.0.1:port answers with an SSH banner."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout_s) as sock:
            sock.settimeout(timeout_s)
            return sock.recv(64).startswith(b"SSH-")
    except OSError:
        return False


def wait_until(check: Callable[[], bool], timeout_s: float, poll_s: float = POLL_S) -> float:
    """``time.time()`` when ``check()`` first holds, or nan after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while True:
        if check():
            return time.time()
        if time.monotonic() > deadline:
            return math.nan
        time.sleep(poll_s)


def concurrently(*calls: Callable[[], float]) -> list[float]:
    """Run blocking waits side by side (threads), so one does not delay the other's clock."""
    results = [math.nan] * len(calls)

    def run(i: int) -> None:
        results[i] = calls[i]()

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(calls))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results


def has_content(path: Path, content: bytes) -> Callable[[], bool]:
    def check() -> bool:
        try:
            if os.stat(path).st_size != len(content):
                return False
            return path.read_bytes() == content
        except OSError:
            return False

    return check


def make_tree(root: Path, files: int, per_dir: int = 100, size: int = 1500) -> list[Path]:
    """``files`` small source-like files, ``per_dir`` per folder; returns them."""
    made = []
    line = b"def f(x):\n    return x * 2  # padding padding padding padding\n"
    body = (line * (size // len(line) + 1))[:size]
    for i in range(files):
        d = root / "src" / f"pkg{i // per_dir:04}"
        if i % per_dir == 0:
            d.mkdir(parents=True, exist_ok=True)
        path = d / f"mod_{i:06}.py"
        path.write_bytes(body)
        made.append(path)
    return made


class DaemonProc:
    """`tether daemon` in a subprocess with its own state and runtime folders."""

    def __init__(self, work: Path, name: str) -> None:
        self.state, self.runtime = work / f"{name}-state", work / f"{name}-rt"
        self.state.mkdir(parents=True, exist_ok=True)
        self.runtime.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.socket = self.runtime / "control.sock"
        self.log = work / f"{name}-daemon.log"
        self.env = dict(
            os.environ,
            PYTHONPATH=str(ROOT),
            TETHER_STATE_DIR=str(self.state),
            TETHER_RUNTIME_DIR=str(self.runtime),
        )
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> DaemonProc:
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "tether.cli.main", "daemon"],
                env=self.env, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                start_new_session=True, cwd="/",
            )  # fmt: skip
        deadline = time.monotonic() + 30
        while not daemon_running(self.socket):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the daemon did not start; see {self.log}")
            time.sleep(0.05)
        return self

    def call(self, method: str, *args: Any, timeout_s: float = 120) -> Any:
        async def go() -> Any:
            async with ControlClient(self.socket, timeout_s=timeout_s) as client:
                return await getattr(client, method)(*args)

        return asyncio.run(go())

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        with contextlib.suppress(Exception):
            self.call("shutdown", timeout_s=10)
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()

    def wait_synced(self, timeout_s: float) -> dict[str, Any]:
        """Wait until every pair of every project has synced once and is watching; its status."""
        deadline = time.monotonic() + timeout_s
        while True:
            status = self.call("status")
            pairs = [p for proj in status["projects"] for p in proj["pairs"]]
            if pairs and all(
                p["last_sync"] and p["state"] == "watching" and not p["pending"] for p in pairs
            ):
                return status
            if time.monotonic() > deadline:
                raise RuntimeError(f"not synced within {timeout_s:g}s: {pairs}")
            time.sleep(0.1)


def write_tether_project(
    folder: Path, server: SshServer, local: Path, remote: str, *, mode: str = "two-way",
    extra: str = "",
) -> Path:  # fmt: skip
    """A tether.toml in ``folder`` (outside the synced tree) for ``server``."""
    folder.mkdir(parents=True, exist_ok=True)
    cfg = folder / "tether.toml"
    # The host's python is this interpreter (not a `python3` pyenv shim costing 0.1-0.3 s).
    cfg.write_text(
        server.toml_host("gpu")
        + f'python = "{REAL_PYTHON}"\n\n[pairs.code]\nhost = "gpu"\nlocal = "{local}"\n'
        f'remote = "{remote}"\nmode = "{mode}"\n{extra}'
    )
    return cfg


def proc_cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime, stime


def proc_mem_kb(pid: int) -> dict[str, int]:
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            out[key] = int(value.split()[0])
    return out


def stop_group(proc: subprocess.Popen[Any] | None) -> None:
    """End a process we started in its own session, with everything it spawned."""
    if proc is None or proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(5)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


# -- 1. save-to-remote latency ----------------------------------------------------------------


def measure_saves(
    local_files: list[Path], remote_of: Callable[[Path], Path], n: int, *,
    spacing_s: float = 0.05, timeout_s: float = 15.0,
) -> tuple[list[float], int, list[float]]:  # fmt: skip
    """Save ``n`` times (cycling over ``local_files``): latencies of those that landed, how many
    did not, and when each of those that landed was saved."""
    latencies, missed, starts = [], 0, []
    for i in range(n):
        path = local_files[i % len(local_files)]
        # A unique size per save: tools that compare size+mtime (seconds) still see each one.
        content = (f"# save {i}\n".encode() + b"x" * (200 + i))[: 200 + i]
        check = has_content(remote_of(path), content)
        started = time.time()
        path.write_bytes(content)
        landed = wait_until(check, timeout_s)
        if math.isnan(landed):
            missed += 1
        else:
            latencies.append(landed - started)
            starts.append(started)
        time.sleep(spacing_s)
    return latencies, missed, starts


def edit_targets(files: list[Path], count: int = 10) -> list[Path]:
    step = max(1, len(files) // count)
    return files[::step][:count]


def latency_tether(
    work: Path, server: SshServer, tree: int, saves: int, reps_outage: int
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Save latency, then the reconnect trials, on one daemon (its pair and a tunnel)."""
    local, remote = work / "t-local", work / "t-remote"
    files = make_tree(local, tree)
    tunnel_port = free_port()
    cfg = write_tether_project(
        work / "t-project", server, local, str(remote),
        extra=f'\n[tunnels.ssh]\nhost = "gpu"\nlocal = {tunnel_port}\n'
        f'remote = "127.0.0.1:{server.port}"\n',
    )  # fmt: skip
    daemon = DaemonProc(work, "t").start()
    try:
        started = time.monotonic()
        daemon.call("register", str(cfg))
        status = daemon.wait_synced(300)
        initial_s = time.monotonic() - started
        watch = status["projects"][0]["pairs"][0]["watch"]
        print(f"tether: initial sync of {tree} files {initial_s:.1f} s; local watcher: {watch}")
        targets = edit_targets(files)
        syncs_before = daemon.call("status")["projects"][0]["pairs"][0]["syncs"]
        lat, missed, starts = measure_saves(targets, lambda p: remote / p.relative_to(local), saves)
        time.sleep(0.5)
        syncs = daemon.call("status")["projects"][0]["pairs"][0]["syncs"] - syncs_before
        latency = {"latencies_s": lat, "missed": missed, "watch": watch, "sync_cycles": syncs,
                   **breakdown(daemon.call("logs", 2000), starts)}  # fmt: skip
        reconnect = reconnect_tether(daemon, server, local, remote, tunnel_port, reps_outage)
    finally:
        daemon.stop()
    shutil.rmtree(remote, ignore_errors=True)
    return latency, reconnect


def breakdown(events: list[dict[str, Any]], starts: list[float]) -> dict[str, list[float]]:
    """Per save, from the daemon's own `pair.synced` events (end time ``ts``, duration ``ms``):
    save -> the sync cycle that copied it starts; and that cycle's duration."""
    cycles = sorted(
        (e["ts"] - e["ms"] / 1000, e["ms"] / 1000)
        for e in events
        if e["kind"] == "pair.synced" and e.get("copied") and "ms" in e
    )
    to_cycle, cycle = [], []
    for started in starts:
        after = [c for c in cycles if c[0] >= started - 0.001]
        if after:
            to_cycle.append(after[0][0] - started)
            cycle.append(after[0][1])
    return {"save_to_cycle_start_s": to_cycle, "cycle_s": cycle}


def ssh_rsh(server: SshServer, extra: list[str] | None = None) -> str:
    return shlex.join(server.ssh_command() + (extra or []))


def wait_tree_landed(marker_remote: Path, content: bytes, timeout_s: float, what: str) -> None:
    if math.isnan(wait_until(has_content(marker_remote, content), timeout_s, 0.05)):
        raise RuntimeError(f"{what}: the initial sync did not finish within {timeout_s:g}s")


def latency_lsyncd(
    work: Path, server: SshServer, tree: int, saves: int, *, master: bool
) -> dict[str, Any]:
    name = "lsyncd-cm" if master else "lsyncd"
    local, remote = work / f"{name}-local", work / f"{name}-remote"
    files = make_tree(local, tree)
    remote.mkdir()
    extra = []
    if master:
        extra = ["-o", "ControlMaster=auto", "-o", f"ControlPath={work}/cm-%C",
                 "-o", "ControlPersist=120"]  # fmt: skip
    conf = work / f"{name}.lua"
    conf.write_text(
        f"""settings {{ logfile = "{work}/{name}.log", nodaemon = true, insist = true }}
sync {{
    default.rsync,
    source = "{local}/",
    target = "127.0.0.1:{remote}/",
    delay = 0,
    rsync = {{ archive = true, compress = false, rsh = {json.dumps(ssh_rsh(server, extra))} }},
}}
"""
    )
    proc = subprocess.Popen(
        ["lsyncd", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        start_new_session=True,
    )  # fmt: skip
    try:
        wait_tree_landed(remote / files[-1].relative_to(local), files[-1].read_bytes(), 120, name)
        targets = edit_targets(files)
        lat, missed, _ = measure_saves(targets, lambda p: remote / p.relative_to(local), saves)
    finally:
        stop_group(proc)
        if master:
            subprocess.run(
                [*server.ssh_command(), *extra, "-O", "exit", "127.0.0.1"],
                capture_output=True, timeout=10, check=False,
            )  # fmt: skip
    shutil.rmtree(remote, ignore_errors=True)
    return {"latencies_s": lat, "missed": missed}


def latency_unison(work: Path, server: SshServer, tree: int, saves: int) -> dict[str, Any]:
    local, remote = work / "u-local", work / "u-remote"
    files = make_tree(local, tree)
    remote.mkdir()
    home = work / "unison-home"
    home.mkdir()
    watch = shutil.which("unison-fsmonitor") is not None
    repeat = "watch" if watch else "1"
    sshargs = shlex.join(server.ssh_command()[1:])
    proc = subprocess.Popen(
        [
            "unison", str(local), f"ssh://127.0.0.1/{remote}", "-batch", "-auto",
            "-ui", "text", "-silent", "-repeat", repeat, "-prefer", str(local),
            "-confirmbigdel=false", "-sshargs", sshargs,
            "-servercmd", f"env UNISON={home}-server {shutil.which('unison')}",
        ],
        env=dict(os.environ, UNISON=str(home)), stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip
    try:
        wait_tree_landed(
            remote / files[-1].relative_to(local), files[-1].read_bytes(), 180, "unison"
        )
        targets = edit_targets(files)
        lat, missed, _ = measure_saves(
            targets, lambda p: remote / p.relative_to(local), saves, timeout_s=20
        )
    finally:
        stop_group(proc)
    shutil.rmtree(remote, ignore_errors=True)
    return {"latencies_s": lat, "missed": missed, "repeat": repeat}


# -- 2. reconnect ----------------------------------------------------------------------------


def reconnect_tether(
    daemon: DaemonProc, server: SshServer, local: Path, remote: Path, tunnel_port: int, reps: int
) -> dict[str, Any]:
    link_up, synced, tunnel, up_to_cycle = [], [], [], []
    for rep in range(reps):
        if math.isnan(wait_until(lambda: banner_at(tunnel_port), 30, 0.05)):
            raise RuntimeError("the tether tunnel does not answer before the outage")
        kill_sshd(server)
        time.sleep(1.0)
        content = f"saved during outage {rep}\n".encode()
        (local / f"during-{rep}.txt").write_bytes(content)
        time.sleep(2.0)
        back = restart_sshd(server)
        landed = has_content(remote / f"during-{rep}.txt", content)
        got_file, got_tunnel = concurrently(
            lambda: wait_until(landed, 30),  # noqa: B023 - called before the loop moves on
            lambda: wait_until(lambda: banner_at(tunnel_port), 30, 0.002),
        )
        # The file is readable on the host at its rename, a few ms before the cycle that wrote
        # it ends and says so: wait for that `pair.synced`, or it reads as "never".
        deadline = time.monotonic() + 5
        while True:
            events = daemon.call("logs", 500)
            cycles = sorted(
                e["ts"] - e["ms"] / 1000
                for e in events
                if e["kind"] == "pair.synced" and e.get("copied") and e["ts"] >= back
            )
            if cycles or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        ups = [e["ts"] for e in events if e["kind"] == "link.up" and e["ts"] >= back]
        link_up.append(min(ups) - back if ups else math.nan)
        up_to_cycle.append(cycles[0] - min(ups) if ups and cycles else math.nan)
        synced.append(got_file - back)
        tunnel.append(got_tunnel - back)
        time.sleep(1.0)
    return {
        "link_up_s": link_up,
        "file_synced_s": synced,
        "tunnel_banner_s": tunnel,
        "link_up_to_sync_cycle_s": up_to_cycle,
    }


def reconnect_autossh(
    work: Path, server: SshServer, reps: int, *, tuned: bool, timeout_s: float
) -> dict[str, Any]:
    port = free_port()
    alive = "1" if tuned else "60"
    env = dict(os.environ, AUTOSSH_LOGFILE=str(work / f"autossh-{alive}.log"))
    if tuned:
        env.update(AUTOSSH_POLL="1", AUTOSSH_GATETIME="0")
    cmd = [
        "autossh", "-M", "0", *server.ssh_command()[1:], "-N",
        "-L", f"127.0.0.1:{port}:127.0.0.1:{server.port}",
        "-o", f"ServerAliveInterval={alive}", "-o", "ServerAliveCountMax=3",
        "-o", "ExitOnForwardFailure=yes", "127.0.0.1",
    ]  # fmt: skip
    proc = subprocess.Popen(
        cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    back_after: list[float] = []
    launched = time.monotonic()
    try:
        for _ in range(reps):
            if math.isnan(wait_until(lambda: banner_at(port), timeout_s, 0.05)):
                raise RuntimeError("the autossh forward never answered")
            time.sleep(1.0)
            if not tuned:  # an outage within AUTOSSH_GATETIME (30 s) of the start ends autossh
                time.sleep(max(0.0, launched + 31 - time.monotonic()))
            kill_sshd(server)
            time.sleep(3.0)
            back = restart_sshd(server)
            back_after.append(wait_until(lambda: banner_at(port), timeout_s, 0.002) - back)
            if math.isnan(back_after[-1]):
                break  # it may never come back; do not spend the budget waiting again
    finally:
        stop_group(proc)
        if server.proc is None or server.proc.poll() is not None:
            restart_sshd(server)
    return {"banner_s": back_after, "timeout_s": timeout_s}


# -- 3. idle cost --------------------------------------------------------------------------------


def idle_cost(work: Path, server: SshServer, files: int, idle_s: float) -> dict[str, Any]:
    local, remote = work / "idle-local", work / "idle-remote"
    started = time.monotonic()
    base = local / "tree"
    for i in range(files):
        d = base / f"d{i // 100:04}"
        if i % 100 == 0:
            d.mkdir(parents=True, exist_ok=True)
        (d / f"f{i:06}.txt").write_bytes(b"%d\n" % i)
    made_s = time.monotonic() - started
    limit = int(Path("/proc/sys/fs/inotify/max_user_watches").read_text())
    cfg = write_tether_project(work / "idle-project", server, local, str(remote), mode="push")
    daemon = DaemonProc(work, "idle").start()
    try:
        assert daemon.proc is not None
        pid = daemon.proc.pid
        started = time.monotonic()
        daemon.call("register", str(cfg))
        status = daemon.wait_synced(600)
        initial_s = time.monotonic() - started
        pair = status["projects"][0]["pairs"][0]
        warnings = [e["message"] for e in daemon.call("logs", 500) if "warning" in e["kind"]]
        time.sleep(min(5.0, idle_s / 4))  # let the post-sync echoes settle
        agents = [
            p
            for p in descendants(server.proc.pid if server.proc else 0)
            if b"python" in Path(f"/proc/{p}/cmdline").read_bytes().split(b"\0")[0]
        ]
        cpu0, t0 = proc_cpu_s(pid), time.monotonic()
        agent_cpu0 = {p: proc_cpu_s(p) for p in agents}
        rss_samples = []
        while time.monotonic() - t0 < idle_s:
            time.sleep(1.0)
            rss_samples.append(proc_mem_kb(pid)["VmRSS"])
        wall = time.monotonic() - t0
        cpu = (proc_cpu_s(pid) - cpu0) / wall
        mem = proc_mem_kb(pid)
        agent_cpu, agent_rss = 0.0, 0
        for p in agents:
            with contextlib.suppress(OSError):
                agent_cpu += (proc_cpu_s(p) - agent_cpu0[p]) / wall
                agent_rss += proc_mem_kb(p)["VmRSS"]
        syncs = daemon.call("status")["projects"][0]["pairs"][0]["syncs"]
    finally:
        daemon.stop()
    shutil.rmtree(local, ignore_errors=True)
    shutil.rmtree(remote, ignore_errors=True)
    return {
        "files": files,
        "folders": (files + 99) // 100,
        "tree_made_s": made_s,
        "inotify_max_user_watches": limit,
        "watch": pair["watch"],
        "warnings": warnings,
        "initial_sync_s": initial_s,
        "idle_s": wall,
        "cpu_fraction": cpu,
        "rss_mb": max(rss_samples or [mem["VmRSS"]]) / 1024,
        "hwm_mb": mem["VmHWM"] / 1024,
        "agent_cpu_fraction": agent_cpu,
        "agent_rss_mb": agent_rss / 1024,
        "agent_processes": len(agents),
        "syncs_after": syncs,
    }


# -- main --------------------------------------------------------------------------------------


def no_nan(value: Any) -> Any:
    """JSON has no NaN: a figure that was never reached becomes null."""
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {k: no_nan(v) for k, v in value.items()}
    if isinstance(value, list):
        return [no_nan(v) for v in value]
    return value


def summary(lat: list[float]) -> tuple[float, float, float]:
    return pct(lat, 0.5), pct(lat, 0.95), max(lat) if lat else math.nan


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="tiny sizes, few repetitions (smoke)")
    ap.add_argument("--skip-tools", action="store_true", help="tether only")
    ap.add_argument("--json", type=Path, metavar="OUT", help="write the figures as JSON")
    ap.add_argument("--saves", type=int, help="tether saves (default 200; tools fewer)")
    ap.add_argument("--tree-files", type=int, help="files in the latency tree (default 3000)")
    ap.add_argument("--idle-files", type=int, help="files in the idle tree (default 100000)")
    ap.add_argument("--idle-s", type=float, help="idle measurement window (default 40)")
    ap.add_argument("--reconnects", type=int, help="outages per tool (default 3)")
    ap.add_argument("--only", action="append", choices=PARTS, metavar="PART",
                    help=f"run only this part ({', '.join(PARTS)}; repeatable)")  # fmt: skip
    args = ap.parse_args()
    parts = set(args.only or PARTS)
    q = args.quick
    saves = args.saves or (8 if q else 200)
    tree = args.tree_files or (200 if q else 3000)
    idle_files = args.idle_files or (2000 if q else 100_000)
    idle_s = args.idle_s or (3.0 if q else 40.0)
    reps = args.reconnects or (1 if q else 3)

    facts = machine_facts()
    print(facts)
    precompile()
    print(f"host agent runs with {REAL_PYTHON} (not a `python3` shim on PATH)", flush=True)
    wanted = {"lsyncd": "lsyncd", "unison": "unison"} if "latency" in parts else {}
    if "reconnect" in parts:
        wanted["autossh"] = "autossh"
    tools = ensure_tools(wanted, args.skip_tools)
    for name, why in tools.items():
        if why:
            print(f"{name}: column skipped: {why}")
    work = Path(tempfile.mkdtemp(prefix="tether-bench-daemon-"))
    server = start_sshd(work / "sshd")
    out: dict[str, Any] = {"machine": facts, "quick": q}
    try:
        if parts & {"latency", "reconnect"}:
            measure_latency_and_reconnect(out, work, server, tools, parts, tree, saves, reps, q)
        if "idle" in parts:
            print(f"[3/3] idle cost watching {idle_files} files", flush=True)
            out["idle"] = idle_cost(work, server, idle_files, idle_s)
    finally:
        server.stop()
        shutil.rmtree(work, ignore_errors=True)

    print_report(out, tools, saves)
    if args.json:
        args.json.write_text(json.dumps(no_nan(out), indent=1))
    return 0


def measure_latency_and_reconnect(
    out: dict[str, Any], work: Path, server: SshServer, tools: dict[str, str | None],
    parts: set[str], tree: int, saves: int, reps: int, quick: bool,
) -> None:  # fmt: skip
    """Parts 1 and 2 (tether's share one daemon); the tools' columns only for the parts asked."""
    tool_saves = max(3, saves // 2)
    unison_saves = max(3, saves // 10)
    autossh_timeout = 20.0 if quick else 45.0
    print(f"\n[1/3] save-to-remote latency, {tree}-file tree", flush=True)
    t_lat, t_rec = latency_tether(work, server, tree, saves, reps)
    out["latency"] = {"tether": t_lat}
    if "latency" in parts:
        if not tools["lsyncd"]:
            out["latency"]["lsyncd"] = latency_lsyncd(work, server, tree, tool_saves, master=False)
            out["latency"]["lsyncd+ControlMaster"] = latency_lsyncd(
                work, server, tree, tool_saves, master=True
            )
        if not tools["unison"]:
            out["latency"]["unison"] = latency_unison(work, server, tree, unison_saves)

    print("[2/3] reconnect after sshd is killed and restarted ~3 s later", flush=True)
    out["reconnect"] = {"tether": t_rec}
    if "reconnect" in parts and not tools["autossh"]:
        out["reconnect"]["autossh, recommended"] = reconnect_autossh(
            work, server, reps, tuned=False, timeout_s=autossh_timeout
        )
        out["reconnect"]["autossh, tuned"] = reconnect_autossh(
            work, server, reps, tuned=True, timeout_s=autossh_timeout
        )


def print_report(out: dict[str, Any], tools: dict[str, str | None], saves: int) -> None:
    print(f"\n{out['machine']}; load average at the end {os.getloadavg()[0]:.2f}")
    if "latency" in out:
        print_latency(out["latency"], tools)
        print_reconnect(out["reconnect"])
    if "idle" in out:
        print_idle(out["idle"])


def print_latency(lat: dict[str, Any], tools: dict[str, str | None]) -> None:
    t50, t95, _ = summary(lat["tether"]["latencies_s"])
    print("\nsave -> content readable in the remote folder (polled every 0.5 ms)")
    print(f"{'tool':<34} {'saves':>6} {'p50':>8} {'p95':>8} {'max':>8} "
          f"{'p50 ratio':>10} {'p95 ratio':>10}")  # fmt: skip
    for name, row in lat.items():
        label = name
        if name == "tether":
            label = f"tether (two-way, watcher {row['watch']})"
        if name == "unison":
            label = f"unison -repeat {row['repeat']}"
        p50, p95, mx = summary(row["latencies_s"])
        n = len(row["latencies_s"])
        missed = f" ({row['missed']} missed)" if row["missed"] else ""
        print(f"{label:<34} {n:>6} {ms(p50):>8} {ms(p95):>8} {ms(mx):>8} "
              f"{ratio(t50, p50):>10} {ratio(t95, p95):>10}{missed}")  # fmt: skip
    print("ratio = tether / tool (below 1: tether is faster); target: tether p50 <= 30 ms, "
          "p95 <= 100 ms")  # fmt: skip
    t = lat["tether"]
    if t.get("cycle_s"):
        wait, cycle = t["save_to_cycle_start_s"], t["cycle_s"]
        print(f"tether, where it goes (from its own pair.synced events): save -> the sync cycle "
              f"that copies it starts: p50 {ms(median(wait))}, p95 {ms(pct(wait, 0.95))}; that "
              f"cycle: p50 {ms(median(cycle))}, p95 {ms(pct(cycle, 0.95))}; "
              f"{t['sync_cycles']} cycles ran for {len(t['latencies_s'])} saves")  # fmt: skip
    if "unison" in lat and lat["unison"]["repeat"] != "watch":
        print(
            "unison: no unison-fsmonitor on this machine (Debian ships none), so `-repeat "
            "watch` is unavailable; measured with `-repeat 1` (a rescan every second)"
        )
    for name, why in tools.items():
        if why:
            print(f"{name}: skipped: {why}")


def print_reconnect(rec: dict[str, Any]) -> None:
    t = rec["tether"]
    print("\nreconnect: sshd and its sessions killed, back ~3 s later; from sshd listening again "
          "(median of each)")  # fmt: skip
    print(f"{'what':<58} {'median':>8} {'max':>8}  each")
    rows = [
        ("tether link up (`link.up` event)", t["link_up_s"]),
        ("  then: link up -> the sync cycle starts (agent start)", t["link_up_to_sync_cycle_s"]),
        ("tether: file saved during the outage on the host", t["file_synced_s"]),
        ("tether tunnel answers with the SSH banner", t["tunnel_banner_s"]),
    ]
    for name in ("autossh, recommended", "autossh, tuned"):
        if name in rec:
            how = ("ServerAliveInterval 60, autossh defaults (the seed docs)"
                   if "recommended" in name else
                   "ServerAliveInterval 1, AUTOSSH_POLL=1, GATETIME=0")  # fmt: skip
            rows.append((f"autossh -L forward answers: {how}", rec[name]["banner_s"]))
    for name, values in rows:
        each = " ".join("never" if math.isnan(v) else f"{v:.2f}" for v in values)
        finite = [v for v in values if not math.isnan(v)]
        print(f"{name:<58} {ms(median(values)):>8} {ms(max(finite) if finite else math.nan):>8}"
              f"  {each}")  # fmt: skip
    tun = median(t["tunnel_banner_s"])
    for name in ("autossh, recommended", "autossh, tuned"):
        if name in rec:
            print(f"tunnel ratio tether / {name}: {ratio(tun, median(rec[name]['banner_s']))}")
    print("target: tether's link up within 1 s of sshd returning ('never': not within the wait)")
    if "autossh, recommended" in rec:
        print("autossh, recommended: the first outage comes >= 31 s after it started (an outage "
              "within AUTOSSH_GATETIME, 30 s by default, makes autossh exit for good); on a "
              "loopback kill ssh sees the reset at once, so ServerAliveInterval plays no part: "
              "the wait is autossh's own restart backoff (capped by AUTOSSH_POLL)")  # fmt: skip


def print_idle(idle: dict[str, Any]) -> None:
    print(f"\nidle cost: one daemon watching {idle['files']} files in {idle['folders']} folders "
          f"(push pair), over {idle['idle_s']:.0f} s after the initial sync")  # fmt: skip
    print(
        f"  inotify max_user_watches {idle['inotify_max_user_watches']}; local watcher: "
        f"{idle['watch']}" + (f"; warnings: {idle['warnings']}" if idle["warnings"] else "")
    )
    print(f"  initial sync of {idle['files']} files: {idle['initial_sync_s']:.1f} s "
          f"(tree made in {idle['tree_made_s']:.1f} s)")  # fmt: skip
    print(
        f"  daemon CPU {idle['cpu_fraction'] * 100:.2f} % (target < 1 %), RSS "
        f"{idle['rss_mb']:.0f} MB, peak RSS (VmHWM) {idle['hwm_mb']:.0f} MB (target < 150 MB)"
    )
    print(f"  host agent ({idle['agent_processes']} process(es) under sshd): CPU "
          f"{idle['agent_cpu_fraction'] * 100:.2f} %, RSS {idle['agent_rss_mb']:.0f} MB; "
          f"syncs run by then: {idle['syncs_after']}")  # fmt: skip


if __name__ == "__main__":
    sys.exit(main())
