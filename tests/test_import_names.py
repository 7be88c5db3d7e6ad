"""tether installs under import names of its own, and a run on the host sees the user's packages
exactly as the user's Python would: a user's own `kernels` (Hugging Face's import name) or
`daemon` (python-daemon's) is never shadowed by tether's, and the suite still runs."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from tether.transport.agent_client import BUNDLE

from tests.sshd import SshServer

REPO = Path(__file__).resolve().parents[1]


def test_the_wheel_holds_only_tethers_own_top_level_names(tmp_path: Path) -> None:
    """Build the wheel as pip would and read what it would put into site-packages."""
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(tmp_path), str(REPO)],
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


def user_package(where: Path, name: str) -> None:
    (where / name).mkdir(parents=True)
    (where / name / "__init__.py").write_text(f"WHOSE = 'the user {name} in {where.name}'\n")


@pytest.fixture
def project(sshd: SshServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A project holding its own `kernels` and `daemon` packages, and a host venv holding a
    `daemon` and a `kernels` of its own too (the project's come first, as with plain python)."""
    monkeypatch.setenv("TETHER_STATE_DIR", str(tmp_path / "state"))
    root = tmp_path / "proj"
    root.mkdir()
    user_package(root, "kernels")
    venv = tmp_path / "hostvenv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    (site,) = venv.glob("lib/python3*/site-packages")
    user_package(site, "daemon")
    user_package(site, "kernels")
    (root / "tether.toml").write_text(
        sshd.toml_host("gpu")
        + f'python = "{sys.executable}"\nvenv = "{venv}"\n'
        + f'\n[pairs.code]\nhost = "gpu"\nremote = "{tmp_path}/remote/code"\n'
        + 'ignore = ["results/"]\n'
    )
    return root


def tether(project: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tether", *args],
        cwd=project,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "COLUMNS": "200"},
    )


def test_a_run_sees_the_users_kernels_and_daemon(project: Path, tmp_path: Path) -> None:
    code = "import daemon, kernels; print(kernels.WHOSE); print(daemon.WHOSE)"
    result = tether(project, "run", "--", "python", "-c", code)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        "the user kernels in proj",  # the project's, synced to the host's pair root
        "the user daemon in site-packages",  # the host venv's
    ]
    env = tether(project, "run", "--no-sync", "--", "sh", "-c", 'echo "[$PYTHONPATH]"')
    assert env.stdout.strip() == "[]", "tether put something on a user run's PYTHONPATH"


def test_the_suite_still_runs_beside_a_users_kernels(project: Path) -> None:
    """`tether bench` reaches tether's suite (no venv: the suite needs numba, which this test's
    host venv lacks; the user's `kernels` in the project is what could shadow it)."""
    config = project / "tether.toml"
    lines = config.read_text().splitlines()
    config.write_text("\n".join(ln for ln in lines if not ln.startswith("venv =")))
    result = tether(project, "bench", "--simulate", "--quick", "--gemm", "16x16x16",
                    "--precisions", "fp32")  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "gemm/naive" in result.stdout and "SIMULATOR" in result.stdout
