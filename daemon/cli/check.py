"""`tether check`: a preflight that walks from TCP to GPU, timing each step.

Each step ends OK, WARN or FAIL with a one-line detail; a FAIL carries the TetherError that
explains it, so the CLI exits with that error's code. Steps after a failed connection are skipped
(there is nothing to ask), steps after a failed remote probe still run.
"""

from __future__ import annotations

import asyncio
import json
import shlex
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from enum import Enum
from typing import Any

import asyncssh
from tether_kernels.compat import diagnose

from ..config import Config, HostConfig
from ..errors import BadHostData, HostKeyUnknown, HostUnreachable, TetherError
from ..transport.ssh import (
    connect,
    fetch_host_key,
    host_key_verdict,
    network_error,
    record_host_key,
    resolve_target,
)

REMOTE_TIMEOUT_S = 30.0

# Runs with the host's python (>= 3.8, stdlib only). Reads a JSON list of folders on stdin and
# reports, for each, whether it exists, could be created, is writable, and the free disk there.
_PROBE_FOLDERS = r"""
import json, os, shutil, sys
out = []
for raw in json.load(sys.stdin):
    path = os.path.expanduser(raw)
    probe = path
    while not os.path.exists(probe):
        parent = os.path.dirname(probe)
        if parent == probe:
            break
        probe = parent
    item = {"path": raw, "resolved": path, "exists": os.path.isdir(path),
            "is_file": os.path.isfile(path), "nearest": probe}
    item["writable"] = os.access(probe, os.W_OK | os.X_OK) and os.path.isdir(probe)
    try:
        item["free_bytes"] = shutil.disk_usage(probe).free
    except OSError:
        item["free_bytes"] = None
    out.append(item)
print(json.dumps(out))
"""

_PROBE_GPU = r"""
import json
from importlib import metadata
out = {"numba_cuda": None, "gpu": None, "driver": None, "error": None, "versions": {}}
for dist in ("numpy", "numba", "numba-cuda"):
    try:
        out["versions"][dist] = metadata.version(dist)
    except metadata.PackageNotFoundError:
        out["versions"][dist] = None
try:
    import numba.cuda
    out["numba_cuda"] = getattr(numba.cuda, "__version__", None) or "present"
except Exception as exc:
    out["error"] = "numba-cuda: %s" % exc
try:
    import pynvml
    pynvml.nvmlInit()
    handle = pynvml.nvmlDeviceGetHandleByIndex(0)
    name = pynvml.nvmlDeviceGetName(handle)
    driver = pynvml.nvmlSystemGetDriverVersion()
    out["gpu"] = name.decode() if isinstance(name, bytes) else name
    out["driver"] = driver.decode() if isinstance(driver, bytes) else driver
except Exception as exc:
    out["error"] = (out["error"] + "; " if out["error"] else "") + "NVML: %s" % exc
print(json.dumps(out))
"""

GPU_PIP_HINT = "pip install numba numba-cuda nvidia-ml-py"
LOW_DISK_BYTES = 1 << 30


class Status(str, Enum):
    OK = "OK"
    WARN = "WARN"
    FAIL = "FAIL"


@dataclass
class Step:
    host: str
    name: str
    status: Status
    detail: str
    seconds: float
    error: TetherError | None = None

    def as_json(self) -> dict[str, Any]:
        out = {
            "host": self.host,
            "step": self.name,
            "status": self.status.value,
            "detail": self.detail,
            "seconds": round(self.seconds, 4),
        }
        if self.error is not None:
            out["hint"] = self.error.hint
            out["exit_code"] = self.error.exit_code
        return out


class _Recorder:
    def __init__(self, host: str, on_step: Callable[[Step], None] | None) -> None:
        self.host, self._on_step = host, on_step
        self.steps: list[Step] = []

    def add(self, name: str, status: Status, detail: str, seconds: float = 0.0, **kw: Any) -> Step:
        step = Step(self.host, name, status, detail, seconds, **kw)
        self.steps.append(step)
        if self._on_step:
            self._on_step(step)
        return step

    async def run(self, name: str, body: Callable[[], Awaitable[tuple[Status, str]]]) -> Step:
        started = time.perf_counter()
        try:
            status, detail = await body()
        except TetherError as exc:
            return self.add(
                name, Status.FAIL, exc.message, time.perf_counter() - started, error=exc
            )
        return self.add(name, status, detail, time.perf_counter() - started)


def in_venv(python: str, venv: str | None) -> str:
    """The shell command that runs ``python`` as `tether run` does: inside ``venv`` (its bin first
    on PATH, VIRTUAL_ENV set) when the host has one, so check probes the interpreter and numba
    the runs will really use. ``~/`` is left to the remote shell as ``$HOME``."""
    if not venv:
        return python
    where = f'"$HOME"/{shlex.quote(venv[2:])}' if venv.startswith("~/") else shlex.quote(venv)
    return f'env VIRTUAL_ENV={where} PATH={where}/bin:"$PATH" {python}'


async def _remote_json(
    conn: asyncssh.SSHClientConnection, python: str, code: str, stdin: str = ""
) -> Any:
    command = f"{python} -c {shlex.quote(code)}"  # `python` may be "python3" or a path with args
    try:
        result = await asyncio.wait_for(
            conn.run(command, input=stdin, check=False), REMOTE_TIMEOUT_S
        )
    except asyncio.TimeoutError:
        raise HostUnreachable(f"the host did not answer within {REMOTE_TIMEOUT_S:g}s") from None
    if result.exit_status != 0:
        raise TetherError(f"{python} failed on the host: {str(result.stderr).strip()[:200]}")
    try:
        return json.loads(str(result.stdout))
    except ValueError:
        raise BadHostData(
            f"the host answered a probe with non-JSON: {str(result.stdout)[:80]!r}"
        ) from None


def _gib(n: int | None) -> str:
    return "unknown" if n is None else f"{n / (1 << 30):.1f} GiB"


async def check_host(
    config: Config,
    host: HostConfig,
    *,
    trust: bool = False,
    on_step: Callable[[Step], None] | None = None,
) -> list[Step]:
    """Run every preflight step for one host; never raises a TetherError (it becomes a FAIL)."""
    rec = _Recorder(host.name, on_step)
    loop = asyncio.get_running_loop()
    target = await loop.run_in_executor(None, resolve_target, host)

    async def tcp() -> tuple[Status, str]:
        if target.proxy_jump:
            return Status.OK, f"via ProxyJump {target.proxy_jump} (checked by the handshake)"
        try:
            _, writer = await asyncio.wait_for(
                asyncio.open_connection(target.hostname, target.port), target.connect_timeout_s
            )
        except (OSError, asyncio.TimeoutError) as exc:
            raise network_error(host, target, exc) or HostUnreachable(str(exc)) from None
        writer.close()
        return Status.OK, f"{target.hostname}:{target.port} accepts connections"

    if (await rec.run("tcp", tcp)).status is Status.FAIL:
        return rec.steps

    async def host_key() -> tuple[Status, str]:
        key = await fetch_host_key(host, target)
        shown = f"{target.known_hosts_name} {key.get_algorithm()} {key.get_fingerprint('sha256')}"
        verdict = await loop.run_in_executor(None, host_key_verdict, host, target, key)
        if verdict is None:
            return Status.OK, f"{shown} matches known_hosts"
        if trust and isinstance(verdict, HostKeyUnknown):
            path = await loop.run_in_executor(None, record_host_key, host, target, key)
            return Status.OK, f"trusted {shown} (recorded in {path})"
        raise verdict

    if (await rec.run("host key", host_key)).status is Status.FAIL:
        return rec.steps

    conn: asyncssh.SSHClientConnection | None = None

    async def auth() -> tuple[Status, str]:
        nonlocal conn
        conn = await connect(host)
        return Status.OK, f"logged in as {target.username} with a key"

    if (await rec.run("key auth", auth)).status is Status.FAIL or conn is None:
        return rec.steps
    try:
        await _remote_steps(rec, config, host, conn)
    finally:
        conn.close()
        await conn.wait_closed()
    return rec.steps


async def _remote_steps(
    rec: _Recorder, config: Config, host: HostConfig, conn: asyncssh.SSHClientConnection
) -> None:
    python_cmd = in_venv(host.python, host.venv)

    async def venv() -> tuple[Status, str]:
        found = await _remote_json(
            conn,
            host.python,
            "import json,os,sys;print(json.dumps(os.path.isdir(os.path.join("
            "os.path.expanduser(sys.stdin.read()),'bin'))))",
            host.venv or "",
        )
        if not found:
            raise TetherError(
                f"the venv {host.venv} does not exist on {host.name}",
                f"create it there, or fix hosts.{host.name}.venv in tether.toml",
            )
        return Status.OK, f"{host.venv} exists; python and numba are probed inside it"

    if host.venv and (await rec.run("venv", venv)).status is Status.FAIL:
        return

    async def python() -> tuple[Status, str]:
        info = await _remote_json(
            conn,
            python_cmd,
            "import json,sys,platform;print(json.dumps([list(sys.version_info[:3]),"
            "sys.executable,platform.platform()]))",
        )
        version, executable, plat = info
        text = ".".join(str(v) for v in version)
        if tuple(version[:2]) < (3, 8):
            raise TetherError(
                f"{executable} on the host is Python {text}; tether's agent needs >= 3.8",
                "install a newer python3 there, or point `python` in tether.toml at one",
            )
        return Status.OK, f"Python {text} at {executable} ({plat})"

    if (await rec.run("remote python", python)).status is Status.FAIL:
        return

    pairs = [p for p in config.pairs.values() if p.host == host.name]
    if pairs:
        folders = await _remote_json(
            conn, host.python, _PROBE_FOLDERS, json.dumps([p.remote for p in pairs])
        )
        for pair, folder in zip(pairs, folders, strict=True):
            status, detail = _folder_verdict(folder)
            error = TetherError(detail, f"fix pairs.{pair.name}.remote or the host's permissions")
            rec.add(
                f"pair {pair.name}", status, detail, error=error if status is Status.FAIL else None
            )

    tables = [t for t in config.reports.values() if t.host == host.name]
    if tables:
        await _report_roots(rec, host, conn, tables)

    async def gpu() -> tuple[Status, str]:
        info = await _remote_json(conn, python_cmd, _PROBE_GPU)
        stack, problem = gpu_stack(info)
        if problem:
            stack += f"; known problem: {problem}"
        if info.get("gpu"):
            cuda = (
                "numba-cuda present" if info.get("numba_cuda") else f"no numba-cuda: {GPU_PIP_HINT}"
            )
            status = Status.OK if info.get("numba_cuda") and not problem else Status.WARN
            return status, f"{info['gpu']} (driver {info['driver']}); {cuda}; {stack}"
        return (
            Status.WARN,
            f"no GPU visible ({info.get('error')}); {stack}; for the suite: {GPU_PIP_HINT}",
        )

    await rec.run("gpu", gpu)

    for tunnel in (t for t in config.tunnels.values() if t.host == host.name):

        async def tunnel_target(t=tunnel) -> tuple[Status, str]:
            where = f"{t.remote_host}:{t.remote_port}"
            try:
                _, writer = await asyncio.wait_for(
                    conn.open_connection(t.remote_host, t.remote_port), 10
                )
            except (asyncssh.ChannelOpenError, asyncio.TimeoutError, OSError) as exc:
                return Status.WARN, f"{where} does not accept connections from the host ({exc})"
            writer.close()
            return Status.OK, f"127.0.0.1:{t.local} → {where} accepts connections"

        await rec.run(f"tunnel {tunnel.name}", tunnel_target)


def gpu_stack(info: dict[str, Any]) -> tuple[str, str | None]:
    """The GPU probe's versions as ``numpy 2.5.2, numba 0.68.0, numba-cuda 0.30.4`` and the
    one-line diagnosis of a known-bad combination (``None`` if none). Values that are not
    strings are the host's nonsense and count as missing."""
    raw = info.get("versions")
    raw = raw if isinstance(raw, dict) else {}
    versions = {k: v if isinstance(v, str) else None for k, v in raw.items()}
    driver = info.get("driver")
    versions["driver"] = driver if isinstance(driver, str) else None
    text = ", ".join(f"{k} {versions.get(k) or '-'}" for k in ("numpy", "numba", "numba-cuda"))
    return text, diagnose(versions)


async def _report_roots(
    rec: _Recorder, host: HostConfig, conn: asyncssh.SSHClientConnection, tables: list[Any]
) -> None:
    """A step per reports root: listed through the agent's ``reports`` op (what `tether reports
    list` asks), so the count is the one the listing shows. A root not there yet only warns:
    the tool may not have written one."""
    from ..reports.fetch import list_host
    from ..transport.agent_client import AgentClient

    agent = await AgentClient.start(conn, python=host.python)
    try:
        listing = await list_host(agent, tables)
    finally:
        await agent.close()
    errors = {line.split(":", 1)[0]: line.split(": ", 2)[-1] for line in listing.errors}
    for table in tables:
        for kind, path in table.roots.items():
            name = f"{table.name}.{kind}"
            if name in errors:
                missing = errors[name] == "No such file or directory"
                detail = f"{path}: {errors[name]}"
                status = Status.WARN if missing else Status.FAIL
                error = TetherError(detail, f"fix reports.{name} in tether.toml, or the host")
                rec.add(f"reports {name}", status, detail, error=None if missing else error)
                continue
            found = sum(r.table == table.name and r.kind == kind for r in listing.reports)
            rec.add(f"reports {name}", Status.OK, f"{path}: {found} report(s)")


def _folder_verdict(folder: dict[str, Any]) -> tuple[Status, str]:
    path, free = folder["path"], folder.get("free_bytes")
    if folder.get("is_file"):
        return Status.FAIL, f"{path} is a file, not a folder"
    if not folder.get("writable"):
        where = path if folder.get("exists") else f"{folder['nearest']} (to create {path})"
        return Status.FAIL, f"{where} is not writable"
    state = "exists" if folder.get("exists") else f"will be created under {folder['nearest']}"
    status = Status.WARN if free is not None and free < LOW_DISK_BYTES else Status.OK
    return status, f"{path} {state}, writable, {_gib(free)} free"


def first_failure(steps: list[Step]) -> Step | None:
    return next((s for s in steps if s.status is Status.FAIL), None)
