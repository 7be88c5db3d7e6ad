"""`tether check` and the SSH layer against a real sshd: each failure named, with its exit code."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from tether.cli.main import main
from tether.errors import EX_NOPERM, EX_UNAVAILABLE, AuthRefused, HostKeyRevoked, HostUnreachable
from tether.transport.ssh import connect, open_connection, parse_destination

from tests.faultproxy import fault_proxy
from tests.sshd import SshServer, free_port, keygen, start_sshd


def write_host_config(
    root: Path, server: SshServer, extra: str = "", host_toml: str | None = None
) -> Path:
    """``root/tether.toml`` naming ``server`` as host ``gpu`` (or ``host_toml``), then ``extra``:
    `tether check` needs a host, no pair (unlike helpers.write_project's whole project)."""
    root.mkdir(parents=True, exist_ok=True)
    path = root / "tether.toml"
    path.write_text((host_toml or server.toml_host("gpu")) + extra)
    return path


def run_check(config: Path, capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, dict]:
    code = main(["--config", str(config), "check", "--json", *args])
    return code, json.loads(capsys.readouterr().out)


def failed_step(doc: dict) -> dict:
    return next(s for s in doc["steps"] if s["status"] == "FAIL")


@pytest.mark.parametrize(
    ("dest", "expected"),
    [
        ("gb10", (None, "gb10", None)),
        ("me@box", ("me", "box", None)),
        ("me@box:2222", ("me", "box", 2222)),
        ("me@[::1]:2200", ("me", "::1", 2200)),
        ("a@b@host:22", ("a@b", "host", 22)),
    ],
)
def test_parse_destination(dest: str, expected: tuple) -> None:
    assert parse_destination(dest) == expected


def test_check_passes_against_real_sshd(
    sshd: SshServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    remote = tmp_path / "remote"
    config = write_host_config(
        tmp_path / "proj",
        sshd,
        f'\n[pairs.code]\nhost = "gpu"\nremote = "{remote}"\n'
        f'[tunnels.ssh]\nhost = "gpu"\nlocal = {free_port()}\nremote = "127.0.0.1:{sshd.port}"\n'
        f'[tunnels.dead]\nhost = "gpu"\nlocal = {free_port()}\n'
        f'remote = "127.0.0.1:{free_port()}"\n',
    )
    code, doc = run_check(config, capsys)
    assert code == 0 and doc["ok"] is True
    by_name = {s["step"]: s for s in doc["steps"]}
    assert [s["step"] for s in doc["steps"]][:4] == ["tcp", "host key", "key auth", "remote python"]
    assert (
        by_name["pair code"]["status"] == "OK"
        and "will be created" in by_name["pair code"]["detail"]
    )
    assert by_name["tunnel ssh"]["status"] == "OK"
    assert by_name["tunnel dead"]["status"] == "WARN"
    assert by_name["gpu"]["status"] in ("OK", "WARN")
    assert all(s["seconds"] >= 0 for s in doc["steps"])


def test_report_roots_are_listed_with_their_counts(
    sshd: SshServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Each reports root: how many reports it holds, missing (a warning: nothing written yet),
    or not a folder (a failure)."""
    for name in ("r1", "r2"):
        (tmp_path / "mem" / name).mkdir(parents=True)
        (tmp_path / "mem" / name / "db.sqlite").write_text("x")
    (tmp_path / "afile").write_text("x")
    config = write_host_config(
        tmp_path / "proj",
        sshd,
        f'\n[reports.tt]\nhost = "gpu"\nmemory = "{tmp_path}/mem"\n'
        f'performance = "{tmp_path}/none"\ntune = "{tmp_path}/afile"\n',
    )
    code, doc = run_check(config, capsys)
    by_name = {s["step"]: s for s in doc["steps"]}
    assert by_name["reports tt.memory"]["status"] == "OK"
    assert by_name["reports tt.memory"]["detail"].endswith("2 report(s)")
    assert by_name["reports tt.performance"]["status"] == "WARN"
    assert by_name["reports tt.tune"]["status"] == "FAIL"
    assert by_name["reports tt.tune"]["detail"] == f"{tmp_path}/afile: not a folder"
    assert code == 1


def test_pair_folder_under_a_file_fails(
    sshd: SshServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "afile").write_text("x")
    config = write_host_config(
        tmp_path / "proj", sshd, f'\n[pairs.code]\nhost = "gpu"\nremote = "{tmp_path}/afile/sub"\n'
    )
    code, doc = run_check(config, capsys)
    assert code == 1
    assert "not writable" in failed_step(doc)["detail"]


def test_closed_port_is_unreachable(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    server = SshServer(tmp_path / "s", free_port())
    server.prepare()  # keys and config, but no sshd listening
    code, doc = run_check(write_host_config(tmp_path / "proj", server), capsys)
    assert code == EX_UNAVAILABLE
    step = failed_step(doc)
    assert step["step"] == "tcp" and "connection refused" in step["detail"]
    assert "sshd running" in step["hint"]


@pytest.fixture
def black_hole() -> Iterator[int]:
    """A port that accepts TCP but never says a word (a hung host)."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        listener.settimeout(0.2)
        while not stop.is_set():
            try:
                held.append(listener.accept()[0])
            except OSError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield listener.getsockname()[1]
    stop.set()
    thread.join()
    for s in held:
        s.close()
    listener.close()


def test_silent_host_times_out(tmp_path: Path, black_hole: int) -> None:
    server = SshServer(tmp_path / "s", black_hole)
    server.prepare()
    host = server.host_config(connect_timeout_s=1.0)
    with pytest.raises(HostUnreachable) as info:
        asyncio.run(connect(host))
    assert "no answer within 1s" in info.value.message
    assert info.value.exit_code == EX_UNAVAILABLE


def test_unknown_host_key_then_trust(
    private_sshd: SshServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    private_sshd.known_hosts.write_text("")
    config = write_host_config(tmp_path / "proj", private_sshd)
    code, doc = run_check(config, capsys)
    assert code == EX_NOPERM
    step = failed_step(doc)
    assert "unknown host key" in step["detail"] and "SHA256:" in step["detail"]
    assert "tether check --trust gpu" in step["hint"]
    assert private_sshd.known_hosts.read_text() == ""  # nothing trusted silently

    code, doc = run_check(config, capsys, "--trust")
    assert code == 0
    assert "trusted" in doc["steps"][1]["detail"]
    assert f"[127.0.0.1]:{private_sshd.port} ssh-ed25519" in private_sshd.known_hosts.read_text()
    code, _ = run_check(config, capsys)
    assert code == 0


def test_changed_host_key_is_refused_even_with_trust(
    private_sshd: SshServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    other = keygen(tmp_path / "other_host_key")
    kind, blob = Path(f"{other}.pub").read_text().split()[:2]
    private_sshd.known_hosts.write_text(f"[127.0.0.1]:{private_sshd.port} {kind} {blob}\n")
    before = private_sshd.known_hosts.read_text()
    config = write_host_config(tmp_path / "proj", private_sshd)
    for extra in ((), ("--trust",)):
        code, doc = run_check(config, capsys, *extra)
        assert code == EX_NOPERM
        step = failed_step(doc)
        assert "HOST KEY CHANGED" in step["detail"]
        assert "ssh-keygen -R" in step["hint"]
    assert private_sshd.known_hosts.read_text() == before


def test_wrong_key_is_refused_with_ssh_copy_id(sshd: SshServer, tmp_path: Path) -> None:
    stranger = keygen(tmp_path / "id_stranger")
    with pytest.raises(AuthRefused) as info:
        asyncio.run(connect(sshd.host_config(identity_file=stranger)))
    assert "refused the key" in info.value.message
    assert f"ssh-copy-id -p {sshd.port}" in info.value.hint


def test_password_only_server_explains_key_only(tmp_path: Path) -> None:
    server = start_sshd(tmp_path / "s", password_only=True)
    try:
        with pytest.raises(AuthRefused) as info:
            asyncio.run(connect(server.host_config()))
    finally:
        server.stop()
    assert "accepts only passwords; tether is key-only" in info.value.message
    assert "ssh-copy-id" in info.value.hint


def test_encrypted_key_without_agent_says_ssh_add(
    sshd: SshServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("SSH_AUTH_SOCK", raising=False)
    locked = keygen(tmp_path / "id_locked", passphrase="secret words")
    with pytest.raises(AuthRefused) as info:
        asyncio.run(connect(sshd.host_config(identity_file=locked)))
    assert "encrypted" in info.value.message
    assert f"ssh-add {locked}" in info.value.hint


def test_no_key_at_all_says_ssh_keygen(
    sshd: SshServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("SSH_AUTH_SOCK", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    with pytest.raises(AuthRefused) as info:
        asyncio.run(connect(sshd.host_config(identity_file=None)))
    assert "no SSH key to offer" in info.value.message
    assert "ssh-keygen -t ed25519" in info.value.hint


def test_default_key_from_home_is_used(
    sshd: SshServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("SSH_AUTH_SOCK", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / ".ssh").mkdir()
    for suffix in ("", ".pub"):
        target = tmp_path / ".ssh" / f"id_ed25519{suffix}"
        target.write_bytes(Path(f"{sshd.client_key}{suffix}").read_bytes())
        target.chmod(0o600)

    async def whoami() -> str:
        async with open_connection(sshd.host_config(identity_file=None)) as conn:
            return str((await conn.run("echo ok", check=True)).stdout).strip()

    assert asyncio.run(whoami()) == "ok"


def test_ssh_config_alias_and_proxyjump(sshd: SshServer, tmp_path: Path) -> None:
    config = tmp_path / "ssh_config"
    config.write_text(
        f"""Host jump
    HostName 127.0.0.1
    Port {sshd.port}
    User {sshd.user}
    IdentityFile {sshd.client_key}
Host gpu-alias
    HostName 127.0.0.1
    Port {sshd.port}
    User {sshd.user}
    IdentityFile {sshd.client_key}
    ConnectTimeout 7
Host gpu-behind-jump
    HostName 127.0.0.1
    Port {sshd.port}
    User {sshd.user}
    IdentityFile {sshd.client_key}
    ProxyJump jump
"""
    )

    async def hello(alias: str) -> str:
        host = sshd.host_config(
            ssh=alias, identity_file=None, ssh_config=config, connect_timeout_s=None
        )
        async with open_connection(host) as conn:
            return str((await conn.run("echo $SSH_CONNECTION", check=True)).stdout)

    assert f" {sshd.port}" in asyncio.run(hello("gpu-alias"))
    assert f" {sshd.port}" in asyncio.run(hello("gpu-behind-jump"))


def test_proxy_jump_host_key(sshd: SshServer, tmp_path: Path) -> None:
    """``proxy_jump`` in tether.toml (what `init --from` writes for ``-J``) really is the way in:
    the target's connection rides on a jump connection made through a proxy we can count."""
    known_hosts = tmp_path / "known_hosts"
    with fault_proxy(sshd.port) as proxy:
        key = sshd.known_hosts.read_text().split(" ", 1)[1]
        known_hosts.write_text(sshd.known_hosts.read_text() + f"[127.0.0.1]:{proxy.port} {key}")
        host = sshd.host_config(
            proxy_jump=f"{sshd.user}@127.0.0.1:{proxy.port}", known_hosts=known_hosts
        )

        async def through_jump() -> int:
            async with open_connection(host) as conn:
                await conn.run("true", check=True)
                return proxy.open_connections

        assert asyncio.run(through_jump()) == 1


def test_cli_prints_one_line_and_hint(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    server = SshServer(tmp_path / "s", free_port())
    server.prepare()
    config = write_host_config(tmp_path / "proj", server)
    assert main(["--config", str(config), "check"]) == EX_UNAVAILABLE
    out = capsys.readouterr().out
    assert "FAIL" in out and "connection refused" in out and "→ is sshd running" in out
    assert "Traceback" not in out


def test_key_held_by_a_real_ssh_agent(
    sshd: SshServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An encrypted key is fine when ssh-agent holds it: tether asks the agent, never a human."""
    import subprocess

    locked = keygen(tmp_path / "id_agent", passphrase="long secret words")
    authorized = sshd.root / "authorized_keys"
    original = authorized.read_text()
    authorized.write_text(original + Path(f"{locked}.pub").read_text())
    socket_path = tmp_path / "agent.sock"
    agent = subprocess.Popen(
        ["ssh-agent", "-D", "-a", str(socket_path)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        for _ in range(100):
            if socket_path.exists():
                break
            time.sleep(0.02)
        env = {**os.environ, "SSH_AUTH_SOCK": str(socket_path), "SSH_ASKPASS_REQUIRE": "never"}
        # ssh-add reads the passphrase from a helper program, as a desktop session would.
        askpass = tmp_path / "askpass.sh"
        askpass.write_text("#!/bin/sh\necho 'long secret words'\n")
        askpass.chmod(0o700)
        env.update(SSH_ASKPASS=str(askpass), SSH_ASKPASS_REQUIRE="force", DISPLAY=":0")
        subprocess.run(
            ["ssh-add", str(locked)],
            env=env,
            check=True,
            capture_output=True,
            stdin=subprocess.DEVNULL,
        )
        monkeypatch.setenv("SSH_AUTH_SOCK", str(socket_path))
        monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.ssh/id_* to fall back on

        async def whoami() -> str:
            async with open_connection(sshd.host_config(identity_file=None)) as conn:
                return str((await conn.run("echo via-agent", check=True)).stdout).strip()

        assert asyncio.run(whoami()) == "via-agent"
    finally:
        agent.terminate()
        agent.wait()
        authorized.write_text(original)


def _dist_info(site: Path, name: str, version: str) -> None:
    """An installed distribution's metadata (what pip leaves), with no package beside it."""
    info = site / f"{name.replace('-', '_')}-{version}.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")


def test_gpu_step_reports_versions_and_known_bad_combination(
    sshd: SshServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The H200's stack: numpy 2.5.2 (metadata first on the host's path; numpy 2.5 needs Python
    3.12), numba 0.68.0, numba-cuda 0.30.4, and an NVML stand-in for the GPU this machine lacks.
    The gpu step names every version and the combination's problem and fix on its one line."""
    site = tmp_path / "host-site"
    for name, version in (("numpy", "2.5.2"), ("numba", "0.68.0"), ("numba-cuda", "0.30.4")):
        _dist_info(site, name, version)
    (site / "pynvml.py").write_text(
        "def nvmlInit(): pass\n"
        "def nvmlDeviceGetHandleByIndex(i): return i\n"
        "def nvmlDeviceGetName(h): return b'NVIDIA H200'\n"
        "def nvmlSystemGetDriverVersion(): return '580.159.04'\n"
    )
    host_python = f"env PYTHONPATH={site} {sys.executable}"
    config = write_host_config(tmp_path / "proj", sshd, f'python = "{host_python}"\n')
    code, doc = run_check(config, capsys)
    assert code == 0
    step = next(s for s in doc["steps"] if s["step"] == "gpu")
    assert step["status"] == "WARN"
    detail = step["detail"]
    assert "\n" not in detail
    assert detail.startswith("NVIDIA H200 (driver 580.159.04); numba-cuda present; ")
    assert "numpy 2.5.2, numba 0.68.0, numba-cuda 0.30.4" in detail
    assert "known problem: numba-cuda 0.30.4 registers np.row_stack" in detail
    assert "pip install 'numpy<2.5'" in detail


def test_revoked_host_key_is_refused_with_77_and_never_trusted(
    private_sshd: SshServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """An ``@revoked`` line for the server's own key: `check --trust` refuses it (nothing is
    appended), and a connection says revoked with exit 77, not "try again" (69)."""
    kind, blob = Path(f"{private_sshd.host_key}.pub").read_text().split()[:2]
    line = f"@revoked [127.0.0.1]:{private_sshd.port} {kind} {blob}\n"
    private_sshd.known_hosts.write_text(line)
    config = write_host_config(tmp_path / "proj", private_sshd)
    for extra in ((), ("--trust",)):
        code, doc = run_check(config, capsys, *extra)
        assert code == EX_NOPERM
        assert "@revoked" in failed_step(doc)["detail"]
    assert private_sshd.known_hosts.read_text() == line
    with pytest.raises(HostKeyRevoked) as caught:
        asyncio.run(connect(private_sshd.host_config("gpu")))
    assert caught.value.exit_code == EX_NOPERM and "@revoked" in caught.value.message


def test_check_probes_python_inside_the_venv_and_names_a_missing_one(
    sshd: SshServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """With hosts.X.venv set, python (and numba) are probed inside it; a missing one is named."""
    venv = tmp_path / "venv"
    subprocess.run(["python3", "-m", "venv", "--without-pip", str(venv)], check=True)
    config = write_host_config(tmp_path / "proj", sshd, host_toml=sshd.toml_host("gpu"))
    config.write_text(config.read_text() + f'venv = "{venv}"\n')
    code, doc = run_check(config, capsys)
    steps = {s["step"]: s for s in doc["steps"]}
    assert steps["venv"]["status"] == "OK", doc
    assert f"{venv}/bin/python3" in steps["remote python"]["detail"]

    config.write_text(config.read_text().replace(f'venv = "{venv}"', f'venv = "{tmp_path}/nope"'))
    code, doc = run_check(config, capsys)
    assert code == 1
    assert f"venv {tmp_path}/nope does not exist" in failed_step(doc)["detail"]
