"""tether sync vs `rsync -a` over ssh, against one local sshd, in one go; prints ratios.

    python bench/bench_sync.py [--initial-files 5000] [--initial-mb 50] [--resync-files 20000]
                               [--memory-files 100000] [--skip-memory] [--only initial|memory]

1. initial sync of N files / M MB into an empty remote folder (tether push vs rsync -a), each
   tool --repeat times (3), alternating, before every run dirty pages flushed (`sync`) and the
   trees read whole (warm in the page cache, as for every tool); the medians are compared;
   one-shot: `tether sync` on its own (starts, connects, starts the agent, syncs);
   daemon: a new project handed to a running `tether daemon`: `tether start` (it connects,
           starts the agent and the watchers, syncs in full) until `tether flush` returns;
   floor: what no asyncssh-based tool can go under, taken in the same loop: a fresh python
          imports asyncssh, connects as tether does and streams M MB into `cat >/dev/null`
          on the host (no files read, hashed, created or recorded on either side);
2. re-sync after one changed file in a 20,000-file tree (both tools already synced once), twice:
   each tool --repeat times, alternating, one more change each time, medians compared;
   cold: `tether sync` as a one-shot process (no daemon: connects, starts the agent, scans
         both sides in full, through the digest caches);
   warm: the user daemon runs with the project registered (`tether start`), so `tether sync`
         asks it: it flushes the watchers' dirty paths over its live link (an incremental sync)
         and returns once the change has landed;
3. peak memory (max RSS of the `tether sync` process) for a 100,000-file tree.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.sshd import SshServer, start_sshd  # noqa: E402

REAL_PYTHON = os.path.realpath(sys.executable)


def make_tree(root: Path, files: int, total_bytes: int) -> None:
    size = max(1, total_bytes // files)
    per_dir = 100
    for i in range(files):
        d = root / f"d{i // per_dir:04}"
        if i % per_dir == 0:
            d.mkdir(parents=True, exist_ok=True)
        (d / f"f{i:06}.txt").write_bytes(os.urandom(size // 2).hex().encode()[:size])


def settle(*trees: Path) -> None:
    """Put every tool's run on the same footing: flush dirty pages, so no run pays for the
    writeback of a tree made (or a folder deleted) before it (on a shared disk that costs
    seconds), and read ``trees`` whole, so none finds them cold in the page cache where the
    tool before it found them warm (as a working tree one just edited is)."""
    os.sync()
    for tree in trees:
        for folder, _dirs, files in os.walk(tree):
            for name in files:
                with contextlib.suppress(OSError), open(os.path.join(folder, name), "rb") as fh:
                    while fh.read(1 << 20):
                        pass
    time.sleep(0.5)


def fmt(samples: list[float]) -> str:
    return " ".join(f"{t:.2f}s" for t in samples)


def write_config(
    work: Path, server: SshServer, local: Path, remote: Path, *, name: str = ""
) -> Path:
    """A project (one push pair, ``local`` -> ``remote``); ``name`` makes it a new one."""
    cfg = work / f"{name or local.name}.d" / "tether.toml"
    cfg.parent.mkdir(exist_ok=True)
    # The host's `python` is this interpreter itself (as the CLI runs under sys.executable): a
    # `python3` on PATH may be a pyenv shim, a bash script costing ~0.1-0.3 s per start that is
    # the environment's, not tether's. rsync's remote side is a C binary with no such cost.
    host = server.toml_host() + f'python = "{REAL_PYTHON}"\n'
    cfg.write_text(
        host + f'\n[pairs.bench]\nhost = "test"\nlocal = "{local}"\nremote = "{remote}"\n'
        'mode = "push"\n'
    )
    return cfg


def cli(cfg: Path, env: dict[str, str], *verb: str) -> None:
    subprocess.run(
        [sys.executable, "-m", "tether.cli.main", "--config", str(cfg), *verb],
        check=True,
        env=env,
        stdout=subprocess.DEVNULL,
    )


@contextlib.contextmanager
def user_daemon(work: Path, env: dict[str, str]) -> Iterator[dict[str, str]]:
    """A `tether daemon` with its own runtime folder; yields the env that reaches it."""
    env = dict(env, TETHER_RUNTIME_DIR=str(work / "rt"))
    (work / "rt").mkdir(mode=0o700, exist_ok=True)
    daemon = subprocess.Popen(
        [sys.executable, "-m", "tether.cli.main", "daemon"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=open(work / "daemon.log", "ab"),  # noqa: SIM115
    )
    try:
        deadline = time.monotonic() + 30
        while not (work / "rt" / "control.sock").exists():
            if time.monotonic() > deadline or daemon.poll() is not None:
                raise RuntimeError(f"the daemon did not start; see {work / 'daemon.log'}")
            time.sleep(0.05)
        yield env
    finally:
        with contextlib.suppress(subprocess.CalledProcessError):
            subprocess.run(
                [sys.executable, "-m", "tether.cli.main", "stop", "--all"],
                env=env,
                check=True,
                stdout=subprocess.DEVNULL,
            )
        try:
            daemon.wait(timeout=15)
        except subprocess.TimeoutExpired:
            daemon.kill()


def daemon_initial(
    work: Path, server: SshServer, env: dict[str, str], src: Path, n: int
) -> tuple[list[float], list[float]]:
    """``n`` times, alternating: a new project (its own config, an empty remote folder) handed
    to a running daemon, timed from `tether start` until `tether flush` returns (the daemon
    connects, starts the host's agent and syncs everything); then rsync into a fresh folder."""
    ours: list[float] = []
    theirs: list[float] = []
    with user_daemon(work, env) as env:
        for i in range(n):
            cfg = write_config(work, server, src, work / f"t-daemon-{i}", name=f"daemon-{i}")
            settle(src)
            start = time.perf_counter()
            cli(cfg, env, "start")
            cli(cfg, env, "flush", "--timeout", "120s")
            ours.append(time.perf_counter() - start)
            cli(cfg, env, "stop")
            settle(src)
            theirs.append(rsync(server, src, work / f"r-daemon-{i}"))
    return ours, theirs


def warm_resync(
    work: Path,
    cfg: Path,
    env: dict[str, str],
    victim: Path,
    rsync_once: Callable[[], float],
    n: int,
    trees: list[Path],
) -> tuple[list[float], list[float]]:
    """``n`` times, alternating: one change, then the wall time of `tether sync` through a
    running daemon, then of rsync (the daemon started, the project registered and in sync
    first; stopped after)."""
    ours: list[float] = []
    theirs: list[float] = []
    with user_daemon(work, env) as env:
        cli(cfg, env, "start")
        cli(cfg, env, "flush", "--timeout", "120s")  # the first (full) cycle is done
        for i in range(n):
            settle(*trees)
            victim.write_bytes(f"warm {i} ".encode() + victim.read_bytes())
            start = time.perf_counter()
            cli(cfg, env, "sync", "--json")
            ours.append(time.perf_counter() - start)
            settle(*trees)
            theirs.append(rsync_once())
    return ours, theirs


def tether(cfg: Path, env: dict[str, str]) -> tuple[float, int]:
    """Wall time and peak RSS (kB) of one `tether sync`."""
    start = time.perf_counter()
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    subprocess.run(
        [sys.executable, "-m", "tether.cli.main", "--config", str(cfg), "sync", "--json"],
        check=True,
        env=env,
        stdout=subprocess.DEVNULL,
    )
    rss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return time.perf_counter() - start, max(rss, before)


FLOOR = r"""
import asyncio, os, sys
import asyncssh
port, user, key, known, ciphers, total = sys.argv[1:]
async def main() -> None:
    async with asyncssh.connect(
        "127.0.0.1", int(port), username=user, client_keys=[key], known_hosts=known,
        config=[], encryption_algs=ciphers.split(","),
    ) as conn:
        proc = await conn.create_process("cat >/dev/null", encoding=None)
        block, left = os.urandom(1 << 20), int(total)
        while left > 0:
            proc.stdin.write(block[:left])
            left -= len(block)
            await proc.stdin.drain()
        proc.stdin.write_eof()
        await proc.wait(check=True)
asyncio.run(main())
"""
"""The asyncssh floor: import, connect (tether's cipher choice), stream bytes into `cat`."""


def floor(server: SshServer, total_bytes: int) -> float:
    """Wall time of :data:`FLOOR` in a fresh interpreter, as the CLI starts."""
    from tether.transport.ssh import PREFERRED_CIPHERS

    argv = [
        *(str(server.port), server.user, str(server.client_key), str(server.known_hosts)),
        ",".join(PREFERRED_CIPHERS),
        str(total_bytes),
    ]
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", FLOOR, *argv], check=True)
    return time.perf_counter() - start


def rsync(server: SshServer, src: Path, dst: Path) -> float:
    ssh = " ".join(server.ssh_command())
    start = time.perf_counter()
    subprocess.run(
        ["rsync", "-a", "--delete", "-e", ssh, f"{src}/", f"127.0.0.1:{dst}/"],
        check=True,
        stdout=subprocess.DEVNULL,
    )
    return time.perf_counter() - start


def peak_rss_of(cmd: list[str], env: dict[str, str]) -> int:
    """Peak RSS (kB) of a fresh child (ru_maxrss of RUSAGE_CHILDREN only grows, so fork one)."""
    code = (
        "import resource, subprocess, sys; subprocess.run(sys.argv[1:], check=True, "
        "stdout=subprocess.DEVNULL); print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, *cmd], env=env, check=True, capture_output=True, text=True
    )
    return int(out.stdout.strip().splitlines()[-1])


def memory_case(work: Path, server: SshServer, env: dict[str, str], files: int) -> int:
    """Peak RSS (kB) of a one-shot `tether sync` of ``files`` small files to an empty remote."""
    src = work / "memory"
    make_tree(src, files, files * 100)
    cfg = write_config(work, server, src, work / "t-memory")
    cmd = [sys.executable, "-m", "tether.cli.main", "--config", str(cfg), "sync", "--json"]
    start = time.perf_counter()
    rss_kb = peak_rss_of(cmd, env)
    elapsed = time.perf_counter() - start
    print(f"peak memory, {files} files: {rss_kb / 1024:.0f} MB (limit 200 MB) in {elapsed:.1f} s")
    return rss_kb


def print_rows(rows: list[tuple[str, float, float, str]]) -> None:
    print(f"\n{'case':<48} {'tether':>9} {'rsync':>9} {'ratio':>7}  target")
    for name, a, b, target in rows:
        print(f"{name:<48} {a:>8.2f}s {b:>8.2f}s {a / b:>7.2f}  {target}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--initial-files", type=int, default=5000)
    ap.add_argument("--initial-mb", type=float, default=50)
    ap.add_argument("--resync-files", type=int, default=20000)
    ap.add_argument("--memory-files", type=int, default=100000)
    ap.add_argument("--skip-memory", action="store_true")
    ap.add_argument(
        "--repeat", type=int, default=3, help="initial-sync runs per tool, alternating (median)"
    )
    ap.add_argument(
        "--only",
        choices=["initial", "memory"],
        help="run just this case (initial: the first sync; memory: the 100k-file sync)",
    )
    args = ap.parse_args()
    print(f"host agent and CLI run with {REAL_PYTHON} (not a `python3` shim on PATH)")
    # As `pip install` does: under PYTHONDONTWRITEBYTECODE=1 every CLI start would otherwise
    # compile tether's modules from source.
    subprocess.run([sys.executable, "-m", "compileall", "-q", "daemon"], cwd=ROOT, check=True)
    work = Path(tempfile.mkdtemp(prefix="tether-bench-"))
    server = start_sshd(work / "sshd")
    env = dict(os.environ, PYTHONPATH=str(ROOT), TETHER_STATE_DIR=str(work / "state"))
    rows: list[tuple[str, float, float, str]] = []
    try:
        if args.only == "memory":
            memory_case(work, server, env, args.memory_files)
            return 0
        # 1. initial sync, each tool into a fresh folder, alternating, `--repeat` times
        src = work / "initial"
        make_tree(src, args.initial_files, int(args.initial_mb * 1e6))
        times: dict[str, list[float]] = {"tether": [], "rsync": [], "floor": []}
        for i in range(args.repeat):
            cfg = write_config(work, server, src, work / f"t-initial-{i}")
            fresh = dict(env, TETHER_STATE_DIR=str(work / f"state-initial-{i}"))  # no base yet
            settle(src)
            times["tether"].append(tether(cfg, fresh)[0])
            settle(src)
            times["rsync"].append(rsync(server, src, work / f"r-initial-{i}"))
            settle(src)
            times["floor"].append(floor(server, int(args.initial_mb * 1e6)))
        print(
            f"initial sync, each run: tether {fmt(times['tether'])}; rsync {fmt(times['rsync'])}"
            f"; asyncssh floor {fmt(times['floor'])}"
        )
        rows.append(
            (
                f"initial {args.initial_files} files / {args.initial_mb:g} MB, one-shot",
                statistics.median(times["tether"]),
                statistics.median(times["rsync"]),
                "<= 1.00",
            )
        )
        rows.append(
            (
                f"  asyncssh floor: connect, {args.initial_mb:g} MB into cat",
                statistics.median(times["floor"]),
                statistics.median(times["rsync"]),
                "-",
            )
        )
        ours, theirs = daemon_initial(work, server, env, src, args.repeat)
        print(f"initial sync through the daemon, each run: tether {fmt(ours)}; rsync {fmt(theirs)}")
        rows.append(
            (
                f"initial {args.initial_files} files / {args.initial_mb:g} MB, daemon",
                statistics.median(ours),
                statistics.median(theirs),
                "<= 1.00",
            )
        )
        for folder in work.glob("[tr]-*"):  # not between runs: a deletion slows later creates
            shutil.rmtree(folder, ignore_errors=True)
        if args.only == "initial":
            print_rows(rows)
            return 0
        # 2. re-sync after one change
        src = work / "resync"
        make_tree(src, args.resync_files, args.resync_files * 1000)
        cfg = write_config(work, server, src, work / "t-resync")
        tether(cfg, env)
        rsync(server, src, work / "r-resync")
        time.sleep(2.1)  # let the digest cache take the fresh files (racy window)
        tether(cfg, env)  # a no-op sync that fills the digest caches on both sides
        victim = next((src / "d0000").iterdir())
        trees = [src, work / "t-resync", work / "r-resync"]
        cold: dict[str, list[float]] = {"tether": [], "rsync": []}
        for i in range(args.repeat):
            victim.write_bytes(f"changed {i} ".encode() + victim.read_bytes())
            settle(*trees)
            cold["tether"].append(tether(cfg, env)[0])
            settle(*trees)
            cold["rsync"].append(rsync(server, src, work / "r-resync"))
        print(f"re-sync cold, each run: tether {fmt(cold['tether'])}; rsync {fmt(cold['rsync'])}")
        rows.append(
            (
                f"re-sync cold (one-shot), 1 change in {args.resync_files}",
                statistics.median(cold["tether"]),
                statistics.median(cold["rsync"]),
                "<= 0.25",
            )
        )
        ours, theirs = warm_resync(
            work,
            cfg,
            env,
            victim,
            lambda: rsync(server, src, work / "r-resync"),
            args.repeat,
            trees,
        )
        print(f"re-sync warm, each run: tether {fmt(ours)}; rsync {fmt(theirs)}")
        rows.append(
            (
                f"re-sync warm (daemon), 1 change in {args.resync_files}",
                statistics.median(ours),
                statistics.median(theirs),
                "<= 0.25",
            )
        )
        # 3. memory at 100k files
        if not args.skip_memory:
            memory_case(work, server, env, args.memory_files)
        print_rows(rows)
    finally:
        server.stop()
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
