"""`tether demo`: the whole loop against an embedded loopback host, offline, in seconds.

The tour builds a sample project beside a :class:`~tether.cli.demo_host.DemoHost`, writes its
tether.toml, and walks through what a user does: check the host, then each later stage of the
loop. Every step prints what it did and how long it took; a failing step stops the tour with the
step's own error, so the demo doubles as a smoke test of an installation.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import os
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console

from ..config import Config, load_config
from ..console import console
from ..dirs import RUNTIME_ENV, STATE_ENV
from ..errors import TetherError
from ..runs.bundle import local_package
from ..service.control import ControlServer, serve
from ..service.daemon import Daemon, Project
from ..sync.engine import sync_pair
from ..transport.endpoints import SSH
from .check import Status, check_host, first_failure
from .demo_host import DemoHost, free_port


def sample_kernel() -> Path:
    """The sample user benchmark the demo edits: shipped with the suite's examples."""
    return local_package() / "examples" / "saxpy.py"


SAMPLE_FILES = {
    "README.md": "A sample project for `tether demo`: edit src/saxpy.py and tether reruns it.\n",
    ".gitignore": "*.log\n",
}

RESULT = "results/latest.tether.json"


def has_numba() -> bool:
    return importlib.util.find_spec("numba") is not None


@dataclass
class DemoProject:
    host: DemoHost
    root: Path
    daemon: Daemon | None = None
    server: ControlServer | None = None

    async def close(self) -> None:
        if self.daemon is not None:
            if str(self.config_path) in self.daemon.projects:
                await self.daemon.unregister(str(self.config_path))  # stops its web server too
            await self.daemon.close()
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()

    @property
    def config_path(self) -> Path:
        return self.root / "tether.toml"

    def config(self) -> Config:
        return load_config(self.config_path)

    def running(self) -> Project:
        """The project as the demo's daemon holds it; the stages after stage_daemon need it."""
        if self.daemon is None:
            raise TetherError("demo: the agent has not been started")
        return next(iter(self.daemon.projects.values()))


def write_sample_project(host: DemoHost, root: Path, *, api_port: int) -> DemoProject:
    """Lay out the sample project and its tether.toml pointing at ``host``.

    The trigger reruns the sample kernel on the host under the Numba CUDA simulator (this
    laptop has no GPU), and a tunnel reaches a small web server that tether keeps running there.
    """
    for relpath, text in SAMPLE_FILES.items():
        path = root / relpath
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    (root / "src").mkdir(parents=True, exist_ok=True)
    (root / "src" / "saxpy.py").write_text(sample_kernel().read_text(encoding="utf-8"))
    python = sys.executable
    if has_numba():
        run = (
            f"{python} -m tether_kernels run src/saxpy.py --quick --precisions fp32 --json {RESULT}"
        )
    else:  # no numba here: still show the loop, with a plain script
        run = f"mkdir -p results && {python} -c \"print('numba missing')\" > results/note.txt"
    server_port = free_port()
    server = f"{python} -m http.server {server_port} --bind 127.0.0.1"
    (root / "tether.toml").write_text(
        "# written by `tether demo`: a project tied to an embedded loopback host\n\n"
        + host.toml_host("demo")
        + f"python = {json.dumps(python)}\n"
        + '\n[pairs.code]\nhost = "demo"\nlocal = "."\nremote = "~/src/demo"\n'
        'mode = "two-way"\nignore = ["results/"]\n'
        + '\n[triggers.roofline]\npair = "code"\non = ["src/**/*.py"]\n'
        + f"run = {json.dumps(run)}\n"
        + 'fetch = ["results/"]\non_busy = "restart"\ntimeout = "2m"\n'
        + 'env = { NUMBA_ENABLE_CUDASIM = "1" }\n'
        + f'\n[tunnels.api]\nhost = "demo"\nlocal = {api_port}\n'
        + f'remote = "127.0.0.1:{server_port}"\n'
        + f"keep_running = {json.dumps(server)}\n",
        encoding="utf-8",
    )
    return DemoProject(host, root)


Stage = Callable[[DemoProject, Console], Awaitable[str]]


async def stage_check(project: DemoProject, out: Console) -> str:
    config = project.config()
    steps = await check_host(config, config.host("demo"))
    for step in steps:
        out.print(f"    {step.status.value:<4} {step.name:<14} {step.detail}")
    failed = first_failure(steps)
    if failed is not None:
        raise failed.error or TetherError(failed.detail)
    warns = sum(s.status is Status.WARN for s in steps)
    return f"{len(steps)} checks, {warns} warnings (no GPU here is expected)"


async def stage_sync(project: DemoProject, out: Console) -> str:
    config = project.config()
    report = await sync_pair(config, config.pair("code"), SSH)
    return f"{report.copied} files pushed to ~/src/demo on the host in {report.total_s:.2f}s"


async def _eventually(check: Callable[[], bool], timeout_s: float, what: str) -> float:
    started = time.perf_counter()
    while not check():
        if time.perf_counter() - started > timeout_s:
            raise TetherError(f"demo: {what} did not happen within {timeout_s:g}s")
        await asyncio.sleep(0.002)
    return time.perf_counter() - started


async def stage_daemon(project: DemoProject, out: Console) -> str:
    """Start the agent, edit the kernel, watch the edit land and the trigger rerun it."""
    daemon = project.daemon = Daemon()
    project.server = await serve(daemon)
    await daemon.register(str(project.config_path))
    await daemon.flush(str(project.config_path), 30)
    target = project.host.home / "src" / "demo" / "src" / "saxpy.py"
    edited = (project.root / "src" / "saxpy.py").read_text() + "\n# tuned by the demo\n"
    (project.root / "src" / "saxpy.py").write_text(edited)
    landed = await _eventually(
        lambda: target.is_file() and target.read_text() == edited, 20, "the edit landing"
    )
    out.print(f"    edited src/saxpy.py; on the host {landed * 1000:.0f} ms later")
    return "the agent is watching both sides"


async def stage_trigger(project: DemoProject, out: Console) -> str:
    runner = project.running().triggers[0]
    await _eventually(lambda: runner.fired >= 1, 20, "the trigger firing")
    await _eventually(lambda: not runner.busy, 120, "the run finishing")
    last = runner.last or {}
    out.print(f"    run {last.get('run')} {last.get('reason')} with status {last.get('status')}")
    result = project.root / RESULT
    if not has_numba():
        return "numba is not installed here: `pip install '.[gpu]'` for the simulator run"
    await _eventually(result.is_file, 20, "the result coming back")
    doc = json.loads(result.read_text())
    for point in doc["results"]:
        out.print(
            f"    {point['kernel']}/{point['variant']} {point['precision']} {point['shape']}: "
            f"verified={point['verified']} (max rel err {point['max_rel_err']:.1e}), "
            f"{point['time_s']['median'] * 1000:.1f} ms on the simulator (not a GPU figure)"
        )
    return f"fetched {RESULT}; `tether results` and `tether bench` go further"


async def stage_tunnel(project: DemoProject, out: Console) -> str:
    port = project.running().tunnels[0].port

    async def get() -> bytes:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET / HTTP/1.0\r\n\r\n")
        data = await asyncio.wait_for(reader.read(), 5)
        writer.close()
        return data

    started = time.perf_counter()
    while True:
        try:
            if (await get()).startswith(b"HTTP/1.0 200"):
                break
        except (OSError, asyncio.TimeoutError):
            pass
        if time.perf_counter() - started > 20:
            raise TetherError("demo: the tunnelled server never answered")
        await asyncio.sleep(0.1)
    return f"127.0.0.1:{port} reaches a web server tether keeps running on the host"


STAGES: list[tuple[str, Stage]] = [
    ("check the host", stage_check),
    ("sync the project", stage_sync),
    ("start the agent and edit a kernel", stage_daemon),
    ("the trigger reruns it on the host", stage_trigger),
    ("a tunnel that stays put", stage_tunnel),
]


async def run_demo(workdir: Path | None = None, out: Console | None = None) -> float:
    """Run the tour; returns its wall time in seconds.

    Everything tether keeps (state, the control socket, run logs) goes under the demo's own
    folder, so the demo never touches a real daemon or real projects.
    """
    out = out or console()
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="tether-demo-") as scratch:
        base = workdir or Path(scratch)
        saved = {k: os.environ.get(k) for k in (STATE_ENV, RUNTIME_ENV)}
        os.environ[STATE_ENV] = str(base / "state")
        (base / "rt").mkdir(mode=0o700, parents=True, exist_ok=True)
        os.environ[RUNTIME_ENV] = str(base / "rt")
        try:
            async with DemoHost(base / "host") as host:
                project = write_sample_project(host, base / "project", api_port=free_port())
                out.print(f"[bold]tether demo[/]: embedded host on 127.0.0.1:{host.port}")
                out.print(f"  project   {project.root}\n  host home {host.home}")
                try:
                    for title, stage in STAGES:
                        t0 = time.perf_counter()
                        out.print(f"[bold cyan]▶ {title}[/]")
                        summary = await stage(project, out)
                        out.print(
                            f"  [green]✓[/] {summary} [dim]({time.perf_counter() - t0:.2f}s)[/]"
                        )
                finally:
                    await project.close()
        finally:
            for key, value in saved.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value
    elapsed = time.perf_counter() - started
    out.print(f"[bold green]demo finished in {elapsed:.1f}s[/]")
    return elapsed


def main(workdir: Path | None = None) -> int:
    asyncio.run(run_demo(workdir))
    return 0
