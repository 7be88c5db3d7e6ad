"""tether installs under import names of its own, and a run on the host sees the user's packages
exactly as the user's Python would: a user's own `kernels` (Hugging Face's import name) or
`daemon` (python-daemon's) is never shadowed by tether's, and the suite still runs."""

from __future__ import annotations

import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest
from tether.transport.agent_boot import BUNDLE

from tests.helpers import tether, write_cli_project
from tests.sshd import SshServer

REPO = Path(__file__).resolve().parents[1]


def test_the_wheel_holds_only_tethers_own_top_level_names(tmp_path: Path) -> None:
    """Build the wheel as pip would and read what it would put into site-packages: only
    tether's two names, and exactly the package's modules. It builds from a copy of the
    checkout, because setuptools leaves a ``build/`` folder behind that the next build of the
    same tree ships from, stale modules included."""
    source = tmp_path / "src"
    shutil.copytree(REPO, source, symlinks=True, ignore=shutil.ignore_patterns(*NOT_SOURCE))
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(tmp_path), str(source)],
        check=True,
        capture_output=True,
        timeout=300,
    )
    (wheel,) = tmp_path.glob("tether-*.whl")
    with zipfile.ZipFile(wheel) as zf:
        top = {name.split("/")[0] for name in zf.namelist()}
        names = zf.namelist()
    assert {t for t in top if not t.endswith(".dist-info")} == {"tether", "tether_kernels"}
    assert {f"tether/{rel}" for rel in BUNDLE} <= set(names)
    assert "tether_kernels/examples/saxpy.py" in names and "tether/py.typed" in names
    modules = {n for n in names if n.endswith(".py")}
    for folder, name in (("daemon", "tether"), ("kernels", "tether_kernels")):
        ours = {
            f"{name}/{p.relative_to(REPO / folder).as_posix()}"
            for p in (REPO / folder).rglob("*.py")
        }
        assert {m for m in modules if m.startswith(f"{name}/")} == ours


NOT_SOURCE = ("build", "dist", ".venv", ".git", "*.egg-info", "__pycache__", ".*_cache", "*.pyc")
"""What a checkout holds besides its source: never copied into the wheel's build folder."""


def user_package(where: Path, name: str) -> None:
    (where / name).mkdir(parents=True)
    (where / name / "__init__.py").write_text(f"WHOSE = 'the user {name} in {where.name}'\n")


@pytest.fixture
def project(sshd: SshServer, tmp_path: Path, state_dir: Path) -> Path:
    """A project holding its own `kernels` and `daemon` packages, and a host venv holding a
    `daemon`, a `kernels` and a `venvonly` of its own too (the project's come first, as with
    plain python). The venv also sees this interpreter's packages through a ``.pth`` (after its
    own), so the suite finds numba there as it would in a user's venv on a GPU host."""
    venv = tmp_path / "hostvenv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    (site,) = venv.glob("lib/python3*/site-packages")
    for name in ("daemon", "kernels", "venvonly"):
        user_package(site, name)
    (site / "zz-test-host-packages.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    root = write_cli_project(
        tmp_path,
        sshd,
        host=f'python = "{sys.executable}"\nvenv = "{venv}"\n',
        pair='ignore = ["results/"]\n',
    )
    user_package(root, "kernels")
    user_package(root, "daemon")
    return root


def test_a_run_sees_the_users_kernels_and_daemon(project: Path, tmp_path: Path) -> None:
    code = "import daemon, kernels, venvonly\nfor m in (kernels, daemon, venvonly): print(m.WHOSE)"
    result = tether(project, "run", "--", "python", "-c", code, module="tether")
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        "the user kernels in proj",  # the project's, synced to the host's pair root
        "the user daemon in proj",
        "the user venvonly in site-packages",  # the host venv's: it is active for the run
    ]
    env = tether(
        project, "run", "--no-sync", "--", "sh", "-c", 'echo "[$PYTHONPATH]"', module="tether"
    )
    assert env.stdout.strip() == "[]", "tether put something on a user run's PYTHONPATH"


def test_the_suite_still_runs_beside_a_users_kernels(project: Path) -> None:
    """`tether bench` reaches tether's suite with the user's `kernels` and `daemon` both in the
    project (the run's working folder) and in the host's active venv."""
    result = tether(project, "bench", "--simulate", "--quick", "--gemm", "16x16x16",
                    "--precisions", "fp32", module="tether")  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "gemm/naive" in result.stdout and "SIMULATOR" in result.stdout
