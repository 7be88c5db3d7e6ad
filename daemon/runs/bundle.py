"""Ship tether's roofline suite (``tether_kernels``) to the host and run it there unshadowed.

:func:`ensure_kernels` uploads ``kernels/**/*.py`` (and its README) into
``<agent.remote_dir>/lib/tether_kernels/`` through the agent's atomic ``write`` op. One scan of
the remote folder first: files whose digest already matches are skipped, so a second call uploads
nothing; files the package no longer has are removed. ``lib/`` holds that one package and nothing
else, so putting it on a run's ``sys.path`` can shadow nothing of the user's; a user's own run
gets no path from tether at all and sees its packages exactly as its Python would.

:func:`kernels_argv` is how tether runs the suite on the host: the launcher puts ``lib/`` first on
``sys.path`` (with ``-m`` alone Python would put the working folder first and need the package
on ``PYTHONPATH``), then runs the package as ``__main__``.
"""

from __future__ import annotations

import asyncio
import hashlib
import shlex
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from ..errors import TetherError
from ..sync.endpoint import ExpectationFailed
from ..sync.entry import Entry, EntryKind
from ..transport.agent_client import AgentClient

PACKAGE = "tether_kernels"
LIB = "lib"
"""The folder under the host's cache that holds :data:`PACKAGE` and nothing else."""

_IGNORE = [(r"^(.*/)?__pycache__/$", True), (r"^(.*/)?[^/]*\.pyc$", True)]
"""Agent ignore rules ([regex, ignored]) for the remote scan: bytecode is the host's business."""

QUIET_TABLE_ENV = "TETHER_KERNELS_NO_TABLE"
"""Set in a run's environment: the host does not print the results table (tether prints it)."""

LAUNCHER = (
    "import os, runpy, sys\n"
    f"lib = os.path.join(os.path.expanduser(sys.argv.pop(1)), {LIB!r})\n"
    "sys.path[:] = [lib] + [p for p in sys.path if p != lib]\n"
    f"if os.environ.get({QUIET_TABLE_ENV!r}):\n"
    f"    import {PACKAGE}.report\n"
    f"    {PACKAGE}.report.print_table = lambda *args, **kwargs: None\n"
    f"runpy.run_module({PACKAGE!r}, run_name='__main__', alter_sys=True)\n"
)
"""``python -c LAUNCHER CACHE ARGS...``: the suite's ``lib/`` first on sys.path, then the suite."""


@dataclass(frozen=True)
class BundleReport:
    """What :func:`upload_kernels` did."""

    remote: str
    """The remote package folder (``<cache>/lib/tether_kernels``)."""
    files: int
    uploaded: int
    deleted: int


def local_package() -> Path:
    """The folder of the ``tether_kernels`` package tether ships, found by location beside
    tether's own: ``site-packages/tether_kernels`` when installed, ``kernels/`` in a checkout
    (an editable install maps the name there).

    Never by import: the current folder, first on ``sys.path`` for ``python -m tether``, may hold
    a folder of the same name, which would then be shipped as the suite.
    """
    beside = Path(__file__).resolve().parents[2]
    for folder in (beside / PACKAGE, beside / "kernels"):
        if (folder / "__init__.py").is_file() and (folder / "harness.py").is_file():
            return folder
    raise TetherError(
        f"tether's roofline suite ({PACKAGE}) is not installed beside tether in {beside}",
        "reinstall tether (pipx install --force tether, or ./scripts/demo in a checkout)",
    )


def package_files(root: Path | None = None) -> dict[str, Path]:
    """``kernels``-relative path → local file, for every ``.py`` file and the README."""
    root = root or local_package()
    out: dict[str, Path] = {}
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root)
        if "__pycache__" in rel.parts or not path.is_file() or path.is_symlink():
            continue
        if path.suffix == ".py" or (path.name == "README.md" and len(rel.parts) == 1):
            out[rel.as_posix()] = path
    return out


def _digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def cache_dir_of(agent: AgentClient, remote_dir: str | None = None) -> str:
    folder = remote_dir or agent.remote_dir
    if not folder:
        raise TetherError(
            "this agent has no cache folder on the host to put the kernels in",
            "start the agent over SSH (a Link), or pass remote_dir",
        )
    return folder.rstrip("/")


async def upload_kernels(
    agent: AgentClient, *, remote_dir: str | None = None, source: Path | None = None
) -> BundleReport:
    """Make ``<remote_dir>/kernels`` on the host hold exactly our ``kernels`` package.

    Args:
        agent: a running agent on the host.
        remote_dir: the cache folder (default: ``agent.remote_dir``, next to the agent).
        source: the local package folder (default: the imported ``kernels``).

    Raises:
        TetherError: the cache folder is unknown; RemoteOpError: a write failed on the host.
    """
    cache = cache_dir_of(agent, remote_dir)
    remote = f"{cache}/{LIB}/{PACKAGE}"
    loop = asyncio.get_running_loop()
    files = await loop.run_in_executor(None, package_files, source)
    scan = await agent.scan(remote, _IGNORE)
    have = scan.entries if scan.is_dir else {}

    async def put(rel: str, path: Path) -> bool:
        data, st = await loop.run_in_executor(None, lambda: (path.read_bytes(), path.stat()))
        digest = _digest(data)
        old = have.get(rel)
        if old is not None and old.kind is EntryKind.FILE and old.digest == digest:
            return False
        expect: Entry | None = old
        for attempt in range(2):
            try:
                await agent.write(
                    cache,
                    f"{LIB}/{PACKAGE}/{rel}",
                    data,
                    mode=st.st_mode & 0o777,
                    mtime_ns=st.st_mtime_ns,
                    expect=expect,
                )
                return True
            except ExpectationFailed:
                if attempt:
                    raise
                # another tether process is uploading the same file: look again
                again = await agent.scan(remote, _IGNORE, paths=[rel])
                expect = again.entries.get(rel)
                if expect is not None and expect.digest == digest:
                    return False
        return True  # pragma: no cover - the loop returns or raises

    async def drop(rel: str, entry: Entry) -> bool:
        try:
            await agent.delete(remote, rel, expect=entry)
        except ExpectationFailed:
            return False
        return True

    written = await asyncio.gather(*(put(rel, path) for rel, path in files.items()))
    stale = [
        (rel, e)
        for rel, e in have.items()
        if e.kind is EntryKind.FILE and rel not in files and rel.endswith((".py", ".md"))
    ]
    deleted = await asyncio.gather(*(drop(rel, e) for rel, e in stale))
    return BundleReport(remote, len(files), sum(written), sum(deleted))


async def ensure_kernels(agent: AgentClient, *, remote_dir: str | None = None) -> str:
    """Upload what changed of ``kernels`` beside the agent; returns the remote package folder."""
    return (await upload_kernels(agent, remote_dir=remote_dir)).remote


def kernels_argv(python: str, cache: str, args: Sequence[str]) -> list[str]:
    """The argv that runs ``python -m tether_kernels ARGS`` on the host with the suite's ``lib/``
    under ``cache`` first on sys.path (see the module docstring for why not ``-m``)."""
    return [*shlex.split(python), "-c", LAUNCHER, cache, *args]


__all__ = [
    "LAUNCHER",
    "QUIET_TABLE_ENV",
    "BundleReport",
    "ensure_kernels",
    "kernels_argv",
    "package_files",
    "upload_kernels",
]
