"""House rules for the tests themselves that a reader would otherwise have to trust."""

from __future__ import annotations

import ast
from pathlib import Path

TESTS = Path(__file__).resolve().parent


def test_no_test_file_imports_another() -> None:
    """Shared fixtures live in conftest.py and shared helpers in plain modules (helpers,
    local_agent, bench_documents...): a test file imported by another runs its own fixtures
    (an autouse one too) in the importer, and its tests can no longer change alone."""
    offenders = []
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
