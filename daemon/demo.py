"""`tether demo`: the whole loop against an embedded loopback host, offline, in seconds.

The tour builds a sample project beside a :class:`~daemon.demo_host.DemoHost`, writes its
tether.toml, and walks through what a user does: check the host, then each later stage of the
loop. Every step prints what it did and how long it took; a failing step stops the tour with the
step's own error, so the demo doubles as a smoke test of an installation.
"""

from __future__ import annotations

import asyncio
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console

from .check import Status, check_host, first_failure
from .config import Config, load_config
from .console import console
from .demo_host import DemoHost
from .errors import TetherError

SAMPLE_FILES = {
    "src/saxpy.py": '''"""A sample kernel file: edit it and tether reruns it on the host."""

import numpy as np


def saxpy(a, x, y):
    return a * x + y


if __name__ == "__main__":
    x = np.arange(8, dtype=np.float32)
    print("saxpy:", saxpy(2.0, x, np.ones_like(x)))
''',
    ".gitignore": "results/\n*.log\n",
}


@dataclass
class DemoProject:
    host: DemoHost
    root: Path

    @property
    def config_path(self) -> Path:
        return self.root / "tether.toml"

    def config(self) -> Config:
        return load_config(self.config_path)


def write_sample_project(host: DemoHost, root: Path) -> DemoProject:
    """Lay out the sample project and its tether.toml pointing at ``host``."""
    for relpath, text in SAMPLE_FILES.items():
        path = root / relpath
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    (root / "tether.toml").write_text(
        "# written by `tether demo`: a project tied to an embedded loopback host\n\n"
        + host.toml_host("demo")
        + '\n[pairs.code]\nhost = "demo"\nlocal = "."\nremote = "~/src/demo"\nmode = "two-way"\n'
        'ignore = ["results/"]\n',
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


STAGES: list[tuple[str, Stage]] = [("check the host", stage_check)]


async def run_demo(workdir: Path | None = None, out: Console | None = None) -> float:
    """Run the tour; returns its wall time in seconds."""
    out = out or console()
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="tether-demo-") as scratch:
        base = workdir or Path(scratch)
        async with DemoHost(base / "host") as host:
            project = write_sample_project(host, base / "project")
            out.print(f"[bold]tether demo[/]: embedded host on 127.0.0.1:{host.port}")
            out.print(f"  project  {project.root}\n  host home {host.home}")
            for title, stage in STAGES:
                t0 = time.perf_counter()
                out.print(f"[bold cyan]▶ {title}[/]")
                summary = await stage(project, out)
                out.print(f"  [green]✓[/] {summary} [dim]({time.perf_counter() - t0:.2f}s)[/]")
    elapsed = time.perf_counter() - started
    out.print(f"[bold green]demo finished in {elapsed:.1f}s[/]")
    return elapsed


def main(workdir: Path | None = None) -> int:
    asyncio.run(run_demo(workdir))
    return 0
