"""`tether bench` and the kernels bundle against a real sshd; the suite runs on the "host" under
the Numba CUDA simulator at the smallest sizes."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from tether.config import load_config
from tether.results.store import ResultsStore
from tether.runs.bundle import ensure_kernels, kernels_argv, package_files, upload_kernels
from tether.runs.remote import RunSpec, run_to_end
from tether.transport.link import Link
from tether_kernels.report import validate

from tests.helpers import tether, write_cli_project
from tests.sshd import SshServer

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "kernels" / "examples" / "saxpy.py"


def env_of(**extra: str) -> dict[str, str]:
    """The environment of a `tether` subprocess, read when called (after monkeypatching)."""
    return {**os.environ, "COLUMNS": "200", **extra}


def _toml(sshd: SshServer, remote: Path, python: str | None = sys.executable) -> str:
    host = sshd.toml_host("gpu") + (f'python = "{python}"\n' if python else "")
    return host + f'\n[pairs.code]\nhost = "gpu"\nremote = "{remote}"\nignore = ["results/"]\n'


@pytest.fixture
def project(sshd: SshServer, tmp_path: Path, state_dir: Path) -> Path:
    return write_cli_project(
        tmp_path, sshd, host=f'python = "{sys.executable}"\n', pair='ignore = ["results/"]\n'
    )


def test_bench_simulated_gemm_end_to_end(project: Path) -> None:
    result = tether(
        project, "bench", "--simulate", "--quick", "--gemm", "32x32x32", "--precisions", "fp32"
    )
    assert result.returncode == 0, result.stderr
    assert "[1/7] gemm/naive fp32" in result.stderr  # the host's progress, streamed
    # the table, printed here, labelled as simulated
    assert "SIMULATOR" in result.stdout and "gemm/regblock" in result.stdout
    assert "(sim)" in result.stdout
    fetched = list((project / "results").glob("bench-*.tether.json"))
    assert len(fetched) == 1
    doc = json.loads(fetched[0].read_text())
    assert validate(doc) == []
    assert doc["simulator"] is True
    assert {r["kernel"] for r in doc["results"]} == {"gemm"}
    assert all(r["shape"] == [32, 32, 32] and r["precision"] == "fp32" for r in doc["results"])
    assert all(r["roofline_fraction"] is None for r in doc["results"])  # never on the roofline
    run_id = fetched[0].name.removeprefix("bench-").removesuffix(".tether.json")
    png = project / "results" / f"bench-{run_id}.png"
    assert png.stat().st_size > 1000 and png.read_bytes()[:4] == b"\x89PNG"
    assert "7 simulated results not plotted" in result.stderr
    with ResultsStore() as store:
        assert store.resolve() == run_id
        points = store.points(run_id)
    assert len(points) == 7 and all(p.simulated and p.verified for p in points)
    assert oct((Path(os.environ["TETHER_STATE_DIR"]) / "results.sqlite3").stat().st_mode)[-3:] == (
        "600"
    )
    listed = tether(project, "results", "--csv")
    assert listed.returncode == 0 and listed.stdout.count("\n") == 8  # header + 7 rungs
    runs = tether(project, "runs", "--json")
    assert run_id in runs.stdout  # in the run history like any run


def test_bench_user_file_is_synced_and_run(project: Path, tmp_path: Path) -> None:
    shutil.copy(EXAMPLE, project / "saxpy.py")
    plot = tmp_path / "roof.svg"
    result = tether(
        project, "bench", "--simulate", "--precisions", "fp32", "--json", "--plot", str(plot),
        "saxpy.py",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    doc = json.loads(result.stdout)
    assert [(r["kernel"], r["source"]) for r in doc["results"]] == [("saxpy", "saxpy.py")]
    assert (tmp_path / "remote" / "code" / "saxpy.py").exists()
    assert plot.read_text().lstrip().startswith("<?xml")


def test_bench_without_gpu_is_one_line_69(
    sshd: SshServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The host has no GPU and the run is not simulated: the suite's exit 69 comes through."""
    monkeypatch.setenv("TETHER_STATE_DIR", str(tmp_path / "state"))
    (tmp_path / "tether.toml").write_text(_toml(sshd, tmp_path / "remote", python=None))
    env = {k: v for k, v in env_of().items() if k != "NUMBA_ENABLE_CUDASIM"}
    result = subprocess.run(
        [sys.executable, "-m", "tether.cli.main", "bench", "--quick", "--precisions", "fp32"],
        cwd=tmp_path, capture_output=True, text=True, timeout=60, env=env,
    )  # fmt: skip
    assert result.returncode == 69, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.startswith("tether:")]
    assert len(lines) == 1 and "gpu:" in lines[0] and "--simulate" in lines[0], result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "results").exists()


def test_malformed_results_from_the_host_are_refused(
    sshd: SshServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A "python" on the host that writes a broken document where the suite's JSON should be."""
    monkeypatch.setenv("TETHER_STATE_DIR", str(tmp_path / "state"))
    fake = tmp_path / "fakepython"
    fake.write_text(
        '#!/bin/sh\nprev=\nfor a; do\n  if [ "$prev" = --json ]; then\n'
        '    mkdir -p "$(dirname "$a")"; echo \'{"schema": "tether.bench/1"}\' > "$a"; exit 0\n'
        f'  fi\n  prev=$a\ndone\nexec {sys.executable} "$@"\n'
    )
    fake.chmod(0o755)
    (tmp_path / "tether.toml").write_text(_toml(sshd, tmp_path / "remote", python=str(fake)))
    result = tether(tmp_path, "bench", "--simulate", "--precisions", "fp32")
    assert result.returncode == 65, result.stderr
    assert "is not a tether.bench/1 document: $: missing 'created'" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "results").exists()
    with ResultsStore() as store:
        assert store.runs() == []


def test_bad_precision_is_usage_before_connecting(tmp_path: Path) -> None:
    (tmp_path / "tether.toml").write_text(
        '[hosts.gpu]\nssh = "nobody@127.0.0.1:1"\n[pairs.code]\nhost = "gpu"\nremote = "/x"\n'
    )
    for args in (["--precisions", "fp4"], ["--gemm", "32x32"], ["--suite", "nope"]):
        result = tether(tmp_path, "bench", *args, timeout=20)
        assert result.returncode == 2, result.stderr
        assert result.stderr.startswith("tether: ") and "127.0.0.1" not in result.stderr


def test_bundle_uploads_once_and_is_never_shadowed(
    sshd: SshServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TETHER_STATE_DIR", str(tmp_path / "state"))
    remote = tmp_path / "remote" / "code"
    for name in ("kernels", "tether_kernels"):  # the working folder of the run holds both
        (remote / name).mkdir(parents=True)
        (remote / name / "__init__.py").write_text("raise SystemExit('USER KERNELS SHADOWED')\n")
    (tmp_path / "tether.toml").write_text(_toml(sshd, remote))
    config = load_config(tmp_path / "tether.toml")
    cache = tmp_path / "cache"
    cache.mkdir()
    expected = len(package_files())

    async def body() -> tuple[int, int, str, bytes]:
        async with Link(config.host("gpu")) as link:
            agent = await link.wait_agent(30)
            first = await upload_kernels(agent, remote_dir=str(cache))
            gone = cache / "lib" / "tether_kernels" / "gone.py"
            gone.write_text("# a module the package no longer has\n")
            remote_pkg = await ensure_kernels(agent, remote_dir=str(cache))
            assert remote_pkg == f"{cache}/lib/tether_kernels"
            second = await upload_kernels(agent, remote_dir=str(cache))
            seen = bytearray()
            spec = RunSpec(
                host=config.host("gpu"),
                pair=config.pair("code"),  # cwd: the folder holding the user's `kernels/`
                argv=kernels_argv(sys.executable, str(cache), ["device", "--json"]),
                env={"NUMBA_ENABLE_CUDASIM": "1"},
            )
            outcome = await run_to_end(link, spec, seen.extend)
            assert outcome.status == 0, seen.decode()
            return first.uploaded, second.uploaded, first.remote, bytes(seen)

    first, second, remote_pkg, output = asyncio.run(body())
    assert (first, second) == (expected, 0)
    assert remote_pkg == f"{cache}/lib/tether_kernels"
    assert sorted(p.name for p in (cache / "lib").iterdir()) == ["tether_kernels"]
    assert (cache / "lib" / "tether_kernels" / "examples" / "saxpy.py").exists()
    assert not (cache / "lib" / "tether_kernels" / "gone.py").exists()
    assert json.loads(output)["name"] == "Numba CUDA simulator"
    assert b"SHADOWED" not in output


def test_plain_dash_m_via_tether_run_is_not_shadowed(
    sshd: SshServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TETHER_STATE_DIR", str(tmp_path / "state"))
    root = tmp_path / "proj"
    (root / "tether_kernels").mkdir(parents=True)
    shadow = "raise SystemExit('USER KERNELS SHADOWED')\n"
    (root / "tether_kernels" / "__init__.py").write_text(shadow)
    (root / "tether.toml").write_text(_toml(sshd, tmp_path / "remote" / "code"))
    # the bundle in the agent's own cache folder, where the launcher finds it
    config = load_config(root / "tether.toml")

    async def upload() -> None:
        async with Link(config.host("gpu")) as link:
            await upload_kernels(await link.wait_agent(30))

    asyncio.run(upload())
    env = env_of(NUMBA_ENABLE_CUDASIM="1")
    result = subprocess.run(
        [sys.executable, "-m", "tether", "run", "--", "-m", "tether_kernels", "device", "--json"],
        cwd=root, capture_output=True, text=True, timeout=60, env=env,
    )  # fmt: skip
    assert "SHADOWED" not in result.stdout + result.stderr
