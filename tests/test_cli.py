"""The `tether` entry point itself: what every verb shares."""

from __future__ import annotations

import argparse
import gc
import os
import pkgutil
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from tether.cli import commands
from tether.cli import main as cli
from tether.errors import EX_CONFIG

from tests.helpers import imports_of


def test_own_process_skips_exit_collections_a_caller_keeps_them(tmp_path: Path) -> None:
    """`tether` freezes the collector's view as it ends (shutdown then skips a full pass over
    every object: ~0.1 s after a sync), on success and on error; `main(argv)` called from
    Python leaves the caller's collector alone."""
    missing = str(tmp_path / "nowhere" / "tether.toml")
    before = gc.get_freeze_count()
    assert cli.main(["--config", missing, "conflicts"]) == EX_CONFIG
    assert gc.get_freeze_count() == before

    probe = (
        "import gc, sys; from tether.cli import main as cli; "
        f"sys.argv[1:] = ['--config', {missing!r}, 'conflicts']; "
        "code = cli.main(); print(code, gc.get_freeze_count() > 0)"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, check=True
    )
    assert out.stdout.split() == [str(EX_CONFIG), "True"], out.stderr


def test_every_command_module_is_in_the_verb_table_and_back() -> None:
    """A module in commands/ that no verb names is dead; a verb naming no module breaks parsing."""
    package = Path(commands.__file__).parent
    on_disk = {info.name for info in pkgutil.iter_modules([str(package)])}
    assert on_disk == {verb.module for verb in commands.VERBS.values()}


def _subparsers(parser: argparse.ArgumentParser) -> list[argparse.ArgumentParser]:
    actions = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return [sub for action in actions for sub in action.choices.values()]


def _handled(parser: argparse.ArgumentParser, inherited: object = None) -> bool:
    """Whether every command line ``parser`` accepts ends at a handler (its own, or the one a
    parent parser sets)."""
    handler = parser.get_default("handler") or inherited
    nested = _subparsers(parser)
    return all(_handled(sub, handler) for sub in nested) if nested else callable(handler)


def test_each_verb_parser_builds_with_a_handler() -> None:
    parser = cli.build_parser()
    verbs = _subparsers(parser)
    assert [sub.prog for sub in verbs] == [f"tether {verb}" for verb in commands.VERBS]
    listing = " ".join(parser.format_help().split())  # as wrapped to any terminal width
    for verb, sub in zip(commands.VERBS, verbs, strict=True):
        assert _handled(sub), verb
        assert f"{verb} {commands.VERBS[verb].help}" in listing
        assert sub.format_help().startswith("usage: "), verb


def test_a_verb_parses_only_its_own_arguments() -> None:
    args = cli.parse(["-v", "pause", "mypair"])
    assert (args.command, args.verb, args.pair, args.verbose) == ("pause", "pause", "mypair", 1)
    args = cli.parse(["run", "--no-sync", "--", "python", "-c", "print(1)"])
    assert (args.no_sync, args.command[-3:]) == (True, ["python", "-c", "print(1)"])


def test_help_lists_every_verb_without_importing_a_command_module() -> None:
    probe = (
        "import contextlib, io, sys; from tether.cli import main as cli\n"
        "with contextlib.suppress(SystemExit), contextlib.redirect_stdout(io.StringIO()):\n"
        "    cli.main(['--help'])\n"
        "print(sorted(m for m in sys.modules if m.startswith('tether.cli.commands.')))"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, check=True
    )
    assert out.stdout.strip() == "[]", out.stderr


def test_the_frequent_verbs_start_without_heavy_imports(tmp_path: Path) -> None:
    """`sync`, `run`, `status`, `pause`, `resume`, `flush` parse (their help) without aiohttp,
    asyncssh or rich; `status`, `pause`, `resume` with no daemon running say so (exit 69) and
    still import none of them: those reach the daemon with the stdlib client."""
    for verb in ("sync", "run", "status", "pause", "resume", "flush"):
        started = imports_of([verb, "--help"])
        assert (started.code, started.loaded) == (0, []), (verb, started.output)
    config = tmp_path / "tether.toml"
    config.write_text(
        '[hosts.gpu]\nssh = "gpu-box"\n\n[pairs.p]\nhost = "gpu"\nlocal = "."\nremote = "~/p"\n'
    )
    runtime = Path(tempfile.mkdtemp(prefix="tt-", dir="/tmp"))
    try:
        env = dict(os.environ, TETHER_RUNTIME_DIR=str(runtime / "run"))
        for argv in (["status"], ["pause"], ["resume", "p"]):
            started = imports_of(["--config", str(config), *argv], env=env)
            assert (started.code, started.loaded) == (69, []), (argv, started.output)
    finally:
        shutil.rmtree(runtime, ignore_errors=True)
