"""House rules for the tests themselves that a reader would otherwise have to trust."""

from __future__ import annotations

import ast
import re
from pathlib import Path

TESTS = Path(__file__).resolve().parent


IMPORTS_A_TEST_FILE = re.compile(r"\b(?:from|import)\s+(?:tests\.)?test_\w+")
"""An import of a test module written anywhere in a file's text: in a script a test runs as a
separate Python process too (a string the import walk below does not look into)."""


def test_no_test_file_imports_another() -> None:
    """Shared fixtures live in conftest.py and shared helpers in plain modules (helpers,
    local_agent, bench_documents, fake_api...): a test file imported by another runs its own
    fixtures (an autouse one too) in the importer, and its tests can no longer change alone.
    Nor does a helper module or a script inside a test import one."""
    offenders = []
    for path in sorted(TESTS.glob("*.py")):
        offenders += [
            f"{path.name}: {match.group().strip()}"
            for match in IMPORTS_A_TEST_FILE.finditer(path.read_text(encoding="utf-8"))
        ]
    for path in sorted(TESTS.glob("test_*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = []
            if isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            elif isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            offenders += [
                f"{path.name}: {name}"
                for name in names
                if name.split(".")[-1].startswith("test_") or name.startswith("tests.test_")
            ]
    assert offenders == []


DAEMON = TESTS.parent / "daemon"
SSH_LIBRARIES = {"asyncssh", "paramiko", "aiohttp"}
"""What only the transport layer (and the daemon and CLI above it) may talk to the network with."""
LAYERS = ("cli", "service", "runs", "reports", "results", "transport", "sync", "")
"""The daemon's folders from the top of the data flow down ("" is the package's own modules:
errors, dirs, config, store, console). A module may import its own layer and those below it;
the agent's modules are never imported (the host runs them from the verified bundle)."""


def _layer_of(module: str) -> str:
    """``tether.sync.engine`` → ``sync``; ``tether.config`` → ``""``."""
    parts = module.split(".")[1:]
    if parts == ["__main__"]:
        return "cli"  # `python -m tether` is the command line
    return parts[0] if len(parts) > 1 or (parts and (DAEMON / parts[0]).is_dir()) else ""


def _imports(path: Path) -> list[str]:
    """The tether modules ``path`` imports, anywhere in it (a lazy import counts too)."""
    package = ["tether", *path.relative_to(DAEMON).with_suffix("").parts[:-1]]
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1]
                module = ".".join([*base, node.module] if node.module else base)
                names = [f"{module}.{a.name}" for a in node.names] if not node.module else []
                found += names or [module]
            elif node.module and node.module.split(".")[0] == "tether":
                found.append(node.module)
        elif isinstance(node, ast.Import):
            found += [a.name for a in node.names if a.name.split(".")[0] == "tether"]
    return found


def test_dependencies_point_down_the_layers() -> None:
    """README's "Where the code lives": the folders are the data flow's layers and each imports
    only its own and those below, so a layer can be read, tested and replaced without the ones
    above it (the sync engine without SSH, the transport without the daemon)."""
    rank = {name: i for i, name in enumerate(LAYERS)}
    upward = []
    for path in sorted(DAEMON.rglob("*.py")):
        rel = path.relative_to(DAEMON)
        if rel.parts[0] == "agent":
            continue
        mine = _layer_of(".".join(["tether", *rel.with_suffix("").parts]))
        for module in _imports(path):
            theirs = _layer_of(module)
            if theirs == "agent" or rank.get(theirs, -1) < rank[mine]:
                upward.append(f"{rel} imports {module}")
    assert upward == []


def test_the_sync_layer_speaks_no_ssh() -> None:
    """The engine takes two endpoints (:mod:`tether.sync.endpoint`) and never a connection: the
    SSH and SFTP implementations live in the transport layer."""
    speaking = []
    for path in sorted((DAEMON / "sync").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
                names = [node.module]
            else:
                continue
            speaking += [f"{path.name}: {n}" for n in names if n.split(".")[0] in SSH_LIBRARIES]
    assert speaking == []
