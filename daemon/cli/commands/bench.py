"""`tether bench [--host H] [--pair P] [--gemm MxNxK] [--precisions LIST|all] [--quick]
[--suite NAME] [--simulate] [--json] [--plot FILE] [FILES...]`

Run the roofline suite on the host in one command: upload ``tether_kernels`` beside the agent
(only what changed), sync the pair when user benchmark FILES are given, run the suite there with
the host's progress on stderr, fetch and validate its ``tether.bench/1`` document into
``results/``, print the table, draw the roofline locally (matplotlib may be missing on the host)
and store the points (`tether results`).

``--simulate`` runs under the Numba CUDA simulator on the host (implies ``--quick``): for tests and
demos on machines without a GPU. Simulated times are labelled and never placed on the roofline.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import shlex
import sys
import tempfile
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ...config import Config, HostConfig, PairConfig
from ...console import console, print_json
from ...errors import EX_UNAVAILABLE, TetherError, UsageError
from ...results.store import ResultsStore, load_document
from ...runs.bundle import QUIET_TABLE_ENV, cache_dir_of, kernels_argv, upload_kernels
from ...runs.history import record_run
from ...runs.remote import RunSpec, new_run_id, run_to_end
from ...sync.endpoint import Endpoint, RemoteOpError
from ...sync.engine import sync_pair
from ...transport.endpoints import SSH
from ...transport.link import Link
from ..main import config_of
from .run import STOP_SIGNALS

SUITES = ("stream", "fma", "gemm", "reduce", "library")
"""kernels.suite.SUITES (not imported: kernels.suite pulls in numpy and the harness)."""

PLOT_SUFFIXES = (".png", ".svg", ".pdf")


def add_arguments(p: argparse.ArgumentParser, verb: str) -> None:
    p.usage = (
        "tether bench [--host H] [--pair P] [--gemm MxNxK] [--precisions LIST|all] "
        "[--quick] [--suite NAME] [--simulate] [--json] [--plot FILE] [FILES...]"
    )
    p.add_argument("files", nargs="*", metavar="FILES", help="your benchmark files (in the pair)")
    p.add_argument("--host", help="the host (default: the only one, or the pair's)")
    p.add_argument("--pair", help="the pair holding FILES (synced first)")
    p.add_argument("--gemm", metavar="MxNxK", help="GEMM shape; alone it runs only the GEMMs")
    p.add_argument(
        "--precisions",
        default="all",
        help="comma list of fp64,fp32,tf32,bf16,fp16,fp8,int8, or all (default)",
    )
    p.add_argument("--quick", action="store_true", help="tiny sizes")
    p.add_argument(
        "--suite", help="comma list of stream,fma,gemm,reduce,library or all (default: all; with "
        "--gemm: gemm; with FILES: only the files)"
    )  # fmt: skip
    p.add_argument(
        "--simulate",
        action="store_true",
        help="run under the Numba CUDA simulator on the host (implies --quick; not GPU figures)",
    )
    p.add_argument("--json", action="store_true", help="print the results document as JSON")
    p.add_argument("--plot", metavar="FILE", help="roofline file (default results/bench-RUN.png)")
    p.set_defaults(handler=run)


def parse_list(text: str | None, allowed: tuple[str, ...], what: str) -> list[str]:
    """Comma list checked against ``allowed``; ``all`` (or empty) means all of them."""
    if not text or text.strip() == "all":
        return list(allowed)
    items = [t.strip() for t in text.split(",") if t.strip()]
    bad = [t for t in items if t not in allowed]
    if bad or not items:
        raise UsageError(
            f"unknown {what} {', '.join(bad) or repr(text)}",
            f"use a comma list of {', '.join(allowed)}, or all",
        )
    return list(dict.fromkeys(items))


def parse_gemm(text: str) -> str:
    parts = text.lower().split("x")
    try:
        values = [int(p) for p in parts]
    except ValueError:
        values = []
    if len(values) != 3 or min(values) < 1:
        raise UsageError(f"--gemm expects MxNxK with positive integers, got {text!r}")
    return "x".join(str(v) for v in values)


@dataclass
class BenchPlan:
    """Everything decided before connecting."""

    host: HostConfig
    pair: PairConfig | None
    files: list[str]
    """FILES relative to the pair's roots."""
    kernel_args: list[str]
    simulate: bool
    as_json: bool
    plot: Path
    results: Path
    run_id: str = field(default_factory=new_run_id)


def _precisions() -> tuple[str, ...]:
    from tether_kernels.roofline import ALL_PRECISIONS

    return ALL_PRECISIONS


def plan(args: argparse.Namespace) -> BenchPlan:
    """Check the command line (usage errors before any connection) and pick host and pair."""
    precisions = parse_list(args.precisions, _precisions(), "precision")
    gemm = parse_gemm(args.gemm) if args.gemm else None
    suites = parse_list(args.suite, SUITES, "suite") if args.suite else None
    if args.plot and Path(args.plot).suffix.lower() not in PLOT_SUFFIXES:
        raise UsageError(f"--plot must end in .png, .svg or .pdf, got {args.plot!r}")
    config = config_of(args)
    pair = _pick_pair(config, args.pair, args.host, need=bool(args.files))
    host = config.host(args.host or (pair.host if pair else None))
    files = [_relative(pair, f) for f in args.files] if pair is not None else []
    run_id = new_run_id()
    results = config.root / "results"
    kernel_args = ["run", *files, "--precisions", ",".join(precisions)]
    if gemm:
        kernel_args += ["--gemm", gemm]
    if suites is None and gemm and not files:
        suites = ["gemm"]
    if suites is not None:
        kernel_args += ["--suite", ",".join(suites)]
    if args.quick or args.simulate:
        kernel_args.append("--quick")
    return BenchPlan(
        host=host,
        pair=pair,
        files=files,
        kernel_args=kernel_args,
        simulate=args.simulate,
        as_json=args.json,
        plot=Path(args.plot) if args.plot else results / f"bench-{run_id}.png",
        results=results,
        run_id=run_id,
    )


def _pick_pair(
    config: Config, name: str | None, host: str | None, *, need: bool
) -> PairConfig | None:
    if name is not None:
        pair = config.pair(name)
        if host is not None and pair.host != host:
            raise UsageError(f"pair {pair.name} lives on host {pair.host}, not {host}")
        return pair
    host_name = config.host(host).name
    candidates = [p for p in config.pairs.values() if p.host == host_name]
    if len(candidates) == 1:
        return candidates[0]
    if need:
        raise UsageError(
            f"host {host_name} has {len(candidates)} pairs; FILES must live in one",
            "name it with --pair",
        )
    return None


def _relative(pair: PairConfig, raw: str) -> str:
    path = Path(raw)
    full = (path if path.is_absolute() else Path.cwd() / path).resolve()
    if not full.is_file():
        raise UsageError(f"{raw}: no such benchmark file")
    try:
        return full.relative_to(pair.local.resolve()).as_posix()
    except ValueError:
        raise UsageError(
            f"{raw} is not inside pair {pair.name} ({pair.local})",
            "benchmark files must be synced to the host: put them in the pair's folder",
        ) from None


def run(args: argparse.Namespace) -> int:
    bench = plan(args)
    return asyncio.run(_bench(config_of(args), bench))


class _Relay:
    """The host's output, line by line, to stderr (and the local log). Lines the suite writes
    as its own verdict (``kernels: ...``) are held back: tether decides how to show them."""

    def __init__(self, log: Callable[[bytes], Awaitable[None]], hide: tuple[str, ...]) -> None:
        self.log = log
        self.hide = hide
        self.partial = b""
        self.held: list[str] = []

    async def __call__(self, chunk: bytes) -> None:
        await self.log(chunk)
        lines = (self.partial + chunk).split(b"\n")
        self.partial = lines.pop()
        for line in lines:
            self._line(line)

    def close(self) -> None:
        if self.partial:
            self._line(self.partial)
            self.partial = b""

    def _line(self, raw: bytes) -> None:
        text = raw.decode("utf-8", "replace").rstrip("\r")
        if text.startswith("kernels: "):
            self.held.append(text[len("kernels: ") :])
        elif not text.startswith(self.hide):
            sys.stderr.write(text + "\n")
            sys.stderr.flush()


async def _bench(config: Config, bench: BenchPlan) -> int:
    err = console(stderr=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in STOP_SIGNALS:  # `timeout`'s SIGTERM, a closed terminal: stop it as Ctrl-C does
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
    host = bench.host
    async with Link(host) as link:
        await link.wait_up(host.connect_timeout_s or 15.0)
        agent = await link.wait_agent(60)
        if bench.files:
            assert bench.pair is not None
            report = await sync_pair(config, bench.pair, SSH, client=agent)
            if report.halted:
                raise TetherError(f"sync halted: {report.message}", "fix it, then bench again")
            if report.copied or report.deleted:
                err.print(f"[dim]synced {report.copied} file(s) to {host.name}[/]")
            await _check_synced(agent, bench.pair, bench.files)
        bundle = await upload_kernels(agent)
        if bundle.uploaded:
            err.print(f"[dim]uploaded {bundle.uploaded} kernels file(s) to {host.name}[/]")
        cache = cache_dir_of(agent)
        rel_json = f"bench/{bench.run_id}.tether.json"
        remote_json = f"{cache}/{rel_json}"
        kargs = [*bench.kernel_args, "--json", remote_json]
        env = {QUIET_TABLE_ENV: "1"}
        if bench.simulate:
            env["NUMBA_ENABLE_CUDASIM"] = "1"
        workdir = bench.pair if bench.files and bench.pair is not None else None
        pair = workdir or PairConfig(name="bench", host=host.name, local=config.root, remote=cache)
        spec = RunSpec(
            host=host,
            pair=pair,
            argv=kernels_argv(host.python, cache, kargs),
            env=env,
            run_id=bench.run_id,
        )
        display = "python -m tether_kernels " + shlex.join(kargs)
        if bench.simulate:
            display = "NUMBA_ENABLE_CUDASIM=1 " + display
        async with record_run(
            spec.run_id,
            project=str(config.path),
            host=host.name,
            pair=pair.name,
            command=display,
        ) as recorded:
            relay = _Relay(recorded.write, hide=(f"wrote {remote_json}",))
            outcome = recorded.outcome = await run_to_end(link, spec, relay, stop=stop)
            relay.close()
        if outcome.reason == "stopped":
            err.print(f"[yellow]stopped[/] bench {spec.run_id} on {host.name}")
            return outcome.status
        if outcome.status not in (0, 1):
            raise _host_failure(host, outcome.status, relay.held, simulated=bench.simulate)
        agent = await link.wait_agent(60)
        try:
            data, entry = await agent.read_entry(cache, rel_json)
        except RemoteOpError as exc:
            raise TetherError(
                f"{host.name}: the suite wrote no results ({exc.message})",
                f"see the run's log: {recorded.record.log}",
            ) from None
        with contextlib.suppress(RemoteOpError):
            await agent.delete(cache, rel_json, expect=entry)
        doc = load_document(data, f"{host.name}:{remote_json}")
    local_json = bench.results / f"bench-{bench.run_id}.tether.json"
    await asyncio.to_thread(_keep, local_json, data, doc, bench.run_id, host.name)
    _show(doc, bench, local_json, relay.held)
    return outcome.status


async def _check_synced(agent: Endpoint, pair: PairConfig, files: list[str]) -> None:
    for rel in files:
        probe = await agent.probe(f"{pair.remote.rstrip('/')}/{rel}")
        if not probe.exists:
            raise UsageError(
                f"{rel} did not reach the host (is it ignored in pair {pair.name}?)",
                "check the pair's ignore rules",
            )


def _host_failure(
    host: HostConfig, status: int, held: list[str], *, simulated: bool
) -> TetherError:
    said = held[-1] if held else f"the suite exited with status {status}"
    if status == EX_UNAVAILABLE and not simulated:
        return TetherError(
            f"{host.name}: {said}",
            "or run `tether bench --simulate` to use the simulator there (not GPU figures)",
            exit_code=status,
        )
    return TetherError(f"{host.name}: {said}", exit_code=status)


def _keep(local_json: Path, data: bytes, doc: dict[str, Any], run_id: str, host: str) -> None:
    """Write the results file and store its points (a file and SQLite: off the event loop)."""
    _write_atomic(local_json, data)
    with ResultsStore() as store:
        store.ingest(doc, run_id=run_id, host=host, source=str(local_json))


def _write_atomic(target: Path, data: bytes) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, 0o644)
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _show(doc: dict[str, Any], bench: BenchPlan, local_json: Path, held: list[str]) -> None:
    from tether_kernels import report

    err = console(stderr=True)
    if bench.as_json:
        print_json(doc)
    else:
        report.print_table(doc)
    err.print(f"[dim]results: {local_json}[/]")
    try:
        from tether_kernels import plot

        bench.plot.parent.mkdir(parents=True, exist_ok=True)
        summary = plot.render([doc], bench.plot, labels=[bench.run_id])
    except ImportError as exc:
        err.print(f"[yellow]no plot[/]: {exc} (install matplotlib)")
    else:
        note = f"roofline: {bench.plot} ({summary['points']} points"
        if summary["simulated_skipped"]:
            note += f"; {summary['simulated_skipped']} simulated results not plotted"
        err.print(f"[dim]{note})[/]")
    for line in held:
        err.print(f"[red]{line}[/]")


__all__ = ["BenchPlan", "parse_gemm", "parse_list", "plan"]
