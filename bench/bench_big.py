"""Big files: tether sync vs `rsync -a` over the same local sshd, one run each; prints ratios.

    python bench/bench_big.py [--gib 1] [--sparse-gib 2] [--daemon]

Cases (tether pushes into its folder, rsync into its own, both over the same sshd):

1. first transfer of a 1 GiB file of random bytes (rsync -a);
2. the same file after 1 MiB in its middle was rewritten (both already hold the old version;
   rsync sends a delta by default over ssh);
3. after 64 MiB were appended to it;
4. a 2 GiB sparse file with 10 % data in 64 spread-out extents (rsync -a --sparse), and how
   much of each copy is allocated.

Peak RSS per case: the `tether sync` process and its local agent (ru_maxrss of the finished
children), the host's agent (VmHWM sampled from /proc under the sshd), each minus its idle
size: a `tether sync` that has nothing to do, and the agent of that sync. With ``--daemon``
the first transfer is also run through a running `tether daemon` and the daemon's peak RSS is
read from /proc. Goals: first transfer within 1.2x rsync, deltas at or under rsync, peak RSS
under 200 MB above idle everywhere.
"""

from __future__ import annotations

import argparse
import os
import random
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from bench_sync import cli, floor, settle, user_daemon, write_config  # noqa: E402

from tests.sshd import SshServer, _descendants, start_sshd  # noqa: E402

MiB = 1 << 20


def vm_hwm(pid: int) -> int:
    """Peak RSS of a live process, in bytes (0 once it is gone)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


class AgentPeaks:
    """Samples the peak RSS of every tether agent below the sshd while a case runs."""

    def __init__(self, server: SshServer) -> None:
        self.server = server
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            for pid in _descendants(self.server.proc.pid):  # type: ignore[union-attr]
                try:
                    cmd = Path(f"/proc/{pid}/cmdline").read_bytes()
                except OSError:
                    continue
                if b"TETHER-SEND" in cmd or b"agent" in cmd:
                    self.peak = max(self.peak, vm_hwm(pid))
            time.sleep(0.05)

    def __enter__(self) -> AgentPeaks:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def cpu_seconds(server: SshServer) -> float:
    """CPU time (user + system) used so far by this process's finished children (a `tether
    sync` and its local agent; rsync and its ssh) and by the sshd's finished sessions (the
    host's agent, the remote rsync): the work a run cost, whatever else the machine was doing."""
    own = resource.getrusage(resource.RUSAGE_CHILDREN)
    fields = Path(f"/proc/{server.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()  # type: ignore[union-attr]
    ticks = os.sysconf("SC_CLK_TCK")
    return own.ru_utime + own.ru_stime + (int(fields[13]) + int(fields[14])) / ticks


def settled_cpu(server: SshServer, before: float) -> float:
    """CPU seconds since ``before``, once the session the run used has ended on the host."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and any(
        p != server.proc.pid
        for p in _descendants(server.proc.pid)  # type: ignore[union-attr]
    ):
        time.sleep(0.05)
    return cpu_seconds(server) - before


def tether_sync(cfg: Path, env: dict[str, str], server: SshServer) -> tuple[float, int, int]:
    """Wall time, peak RSS of the CLI (and its local agent), peak RSS of the host's agent."""
    code = (
        "import resource, subprocess, sys, time; t = time.perf_counter(); "
        "subprocess.run(sys.argv[1:], check=True, stdout=subprocess.DEVNULL); "
        "print(time.perf_counter() - t, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)"
    )
    cmd = [sys.executable, "-m", "tether.cli.main", "--config", str(cfg), "sync", "--json"]
    with AgentPeaks(server) as host:
        out = subprocess.run(
            [sys.executable, "-c", code, *cmd], env=env, check=True, capture_output=True, text=True
        )
    seconds, rss_kb = out.stdout.split()
    return float(seconds), int(rss_kb) * 1024, host.peak


def rsync(server: SshServer, src: Path, dst: Path, *extra: str) -> float:
    ssh = " ".join(server.ssh_command())
    start = time.perf_counter()
    subprocess.run(
        ["rsync", "-a", *extra, "-e", ssh, f"{src}/", f"127.0.0.1:{dst}/"],
        check=True,
        stdout=subprocess.DEVNULL,
    )
    return time.perf_counter() - start


def write_random(path: Path, size: int, seed: int) -> None:
    rng = random.Random(seed)
    with path.open("wb") as fh:
        for i in range(0, size, 8 * MiB):
            fh.write(rng.randbytes(min(8 * MiB, size - i)))


def write_sparse(path: Path, size: int, extents: int = 64) -> None:
    """``size`` bytes, 10 % of them data in ``extents`` runs spread evenly, the rest holes."""
    rng = random.Random(2)
    run = size // 10 // extents
    with path.open("wb") as fh:
        for i in range(extents):
            fh.seek(i * (size // extents))
            fh.write(rng.randbytes(run))
        fh.truncate(size)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--gib", type=float, default=1.0, help="size of the big file (GiB)")
    ap.add_argument("--sparse-gib", type=float, default=2.0, help="size of the sparse file")
    ap.add_argument("--daemon", action="store_true", help="also the first transfer via a daemon")
    args = ap.parse_args()
    subprocess.run([sys.executable, "-m", "compileall", "-q", "daemon"], cwd=ROOT, check=True)
    work = Path(tempfile.mkdtemp(prefix="tether-bench-big-"))
    server = start_sshd(work / "sshd")
    env = dict(os.environ, PYTHONPATH=str(ROOT), TETHER_STATE_DIR=str(work / "state"))
    rows: list[tuple[str, float, float, int, int, str]] = []
    cpu: list[tuple[float, float]] = []
    try:
        src = work / "src"
        src.mkdir()
        big = src / "big.bin"
        size = int(args.gib * (1 << 30))
        write_random(big, size, seed=1)
        cfg = write_config(work, server, src, work / "t")
        empty = work / "empty"
        empty.mkdir()
        idle_cfg = write_config(work, server, empty, work / "t-empty")
        tether_sync(idle_cfg, env, server)
        _, idle, idle_agent = tether_sync(idle_cfg, env, server)  # nothing to do: idle sizes
        print(f"idle: tether sync {idle / MiB:.0f} MiB, host agent {idle_agent / MiB:.0f} MiB")

        def case(name: str, goal: str, rsync_extra: tuple[str, ...] = (), dst: str = "r") -> None:
            settle(src)
            before = cpu_seconds(server)
            ours, rss, agent = tether_sync(cfg, env, server)
            our_cpu = settled_cpu(server, before)
            settle(src)
            before = cpu_seconds(server)
            theirs = rsync(server, src, work / dst, *rsync_extra)
            their_cpu = settled_cpu(server, before)
            rows.append((name, ours, theirs, rss - idle, agent - idle_agent, goal))
            cpu.append((our_cpu, their_cpu))
            print(
                f"{name}: tether {ours:.2f}s ({our_cpu:.2f} CPU s), "
                f"rsync {theirs:.2f}s ({their_cpu:.2f} CPU s)",
                flush=True,
            )

        gib = f"{args.gib:g} GiB"
        case(f"first transfer, {gib}", "<= 1.20")
        settle(src)
        before = cpu_seconds(server)
        seconds = floor(server, size)
        print(
            f"asyncssh floor (stream {gib} into `cat` on the host): {seconds:.2f}s, "
            f"{settled_cpu(server, before):.1f} CPU s"
        )
        with big.open("r+b") as fh:
            fh.seek(size // 2)
            fh.write(os.urandom(MiB))
        case(f"{gib}, 1 MiB changed in the middle", "<= 1.00")
        with big.open("ab") as fh:
            fh.write(os.urandom(64 * MiB))
        case(f"{gib}, 64 MiB appended", "<= 1.00")

        big.unlink()
        sparse_size = int(args.sparse_gib * (1 << 30))
        write_sparse(src / "sparse.img", sparse_size)
        cfg = write_config(work, server, src, work / "t-sparse", name="sparse")
        case(f"sparse {args.sparse_gib:g} GiB, 10 % data", "<= 1.00", ("--sparse",), "r-sparse")
        for who in ("t-sparse", "r-sparse"):
            st = (work / who / "sparse.img").stat()
            print(
                f"{who}: {st.st_size / MiB:.0f} MiB, {st.st_blocks * 512 / MiB:.0f} MiB allocated"
            )

        if args.daemon:
            (src / "sparse.img").unlink()
            write_random(src / "big.bin", size, seed=3)
            with user_daemon(work, env) as denv:
                dcfg = write_config(work, server, src, work / "t-daemon", name="daemon")
                start = time.perf_counter()
                with AgentPeaks(server) as host:
                    cli(dcfg, denv, "start")
                    cli(dcfg, denv, "flush", "--timeout", "600s")
                    seconds = time.perf_counter() - start
                    peak = max(
                        (
                            vm_hwm(pid)
                            for pid in _descendants(os.getpid())
                            if Path(f"/proc/{pid}/cmdline").read_bytes().endswith(b"\0daemon\0")
                        ),
                        default=0,
                    )
                print(
                    f"through the daemon, first transfer of {gib}: {seconds:.2f}s, daemon peak "
                    f"{peak / MiB:.0f} MiB, host agent peak {host.peak / MiB:.0f} MiB"
                )
    finally:
        server.stop()
        shutil.rmtree(work, ignore_errors=True)  # gigabytes of test files

    head = f"{'tether':>8} {'rsync':>8} {'ratio':>6} {'goal':>8} {'RSS+':>7} {'agent+':>7}"
    print(f"\n{'case':<40} {head} {'CPU s':>13} {'CPU ratio':>9}")
    for (name, ours, theirs, rss, agent, goal), (our_cpu, their_cpu) in zip(rows, cpu, strict=True):
        print(
            f"{name:<40} {ours:>7.2f}s {theirs:>7.2f}s {ours / theirs:>6.2f} {goal:>8} "
            f"{rss / MiB:>6.0f}M {agent / MiB:>6.0f}M {our_cpu:>6.1f}/{their_cpu:<6.1f} "
            f"{our_cpu / max(their_cpu, 1e-9):>9.2f}"
        )
    print(
        "RSS+: peak RSS of `tether sync` (its local agent included) above idle; "
        "agent+: the host's agent above idle (goal: both under 200 MB); CPU s: user + system "
        "seconds of every process of the run on both ends (tether/rsync), which the machine's "
        "other load moves far less than wall time"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
