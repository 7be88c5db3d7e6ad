"""The agent ships as the modules of one verified bundle (``BUNDLE``), which the host's bootstrap
loads in order under their bare names: each module may import only the standard library and the
bundle modules before it, no name may shadow another or the standard library's, the last one
runs, and every module stays small enough to hold one job."""

from __future__ import annotations

import ast
import sys
from pathlib import PurePosixPath

from tether.transport.agent_boot import BUNDLE, PACKAGE_ROOT

MAX_LINES = 500


def imported_names(source: str) -> set[str]:
    """The top-level module names a module imports, anywhere in it (a function's too)."""
    names = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0 and node.module, (
                "a bundle module has no package to be relative to"
            )
            names.add(node.module.split(".")[0])
    return names


def test_each_bundle_module_imports_only_the_stdlib_and_the_modules_loaded_before_it() -> None:
    stems = [PurePosixPath(rel).stem for rel in BUNDLE]
    assert len(set(stems)) == len(stems), stems
    assert not set(stems) & sys.stdlib_module_names
    for i, rel in enumerate(BUNDLE):
        source = (PACKAGE_ROOT / rel).read_text()
        foreign = imported_names(source) - sys.stdlib_module_names - {"__future__"}
        assert foreign <= set(stems[:i]), f"{rel} imports {sorted(foreign - set(stems[:i]))}"
    last = ast.parse((PACKAGE_ROOT / BUNDLE[-1]).read_text())
    assert any(isinstance(n, ast.FunctionDef) and n.name == "main" for n in last.body)


def test_every_agent_module_is_small() -> None:
    for rel in BUNDLE:
        lines = len((PACKAGE_ROOT / rel).read_text().splitlines())
        assert lines <= MAX_LINES, f"{rel} has {lines} lines: split it by job"
