"""A real OpenSSH ``sshd`` on 127.0.0.1 for tests: own host key, own authorized_keys, no passwords.

Each :class:`SshServer` lives in its own folder with its own config, so tests can run variants
(password-only, wrong client key, unknown or changed host key) and kill or restart the daemon.
"""

from __future__ import annotations

import contextlib
import getpass
import os
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from tether.config import HostConfig

SSHD = shutil.which("sshd") or "/usr/sbin/sshd"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def keygen(path: Path, *, passphrase: str = "", kind: str = "ed25519") -> Path:
    subprocess.run(
        ["ssh-keygen", "-q", "-t", kind, "-N", passphrase, "-C", "tether-test", "-f", str(path)],
        check=True,
    )
    return path


def wait_for_port(port: int, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.02)
    raise RuntimeError(f"sshd did not listen on {port} within {timeout_s}s")


@dataclass
class SshServer:
    root: Path
    port: int
    password_only: bool = False
    proc: subprocess.Popen | None = None
    user: str = field(default_factory=getpass.getuser)

    @property
    def host_key(self) -> Path:
        return self.root / "ssh_host_ed25519_key"

    @property
    def client_key(self) -> Path:
        return self.root / "id_ed25519"

    @property
    def known_hosts(self) -> Path:
        return self.root / "known_hosts"

    @property
    def ssh_config(self) -> Path:
        return self.root / "ssh_config"

    @property
    def destination(self) -> str:
        return f"{self.user}@127.0.0.1:{self.port}"

    def prepare(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        if not self.host_key.exists():
            keygen(self.host_key)
        if not self.client_key.exists():
            keygen(self.client_key)
        (self.root / "authorized_keys").write_text(
            Path(f"{self.client_key}.pub").read_text(), encoding="utf-8"
        )
        os.chmod(self.root / "authorized_keys", 0o600)
        pub = Path(f"{self.host_key}.pub").read_text().split()
        self.known_hosts.write_text(f"[127.0.0.1]:{self.port} {pub[0]} {pub[1]}\n")
        self.ssh_config.write_text("")
        pubkey = "no" if self.password_only else "yes"
        password = "yes" if self.password_only else "no"
        (self.root / "sshd_config").write_text(
            f"""Port {self.port}
ListenAddress 127.0.0.1
HostKey {self.host_key}
PidFile {self.root}/sshd.pid
AuthorizedKeysFile {self.root}/authorized_keys
PubkeyAuthentication {pubkey}
PasswordAuthentication {password}
KbdInteractiveAuthentication no
PermitRootLogin yes
UsePAM no
StrictModes no
MaxStartups 100:30:200
MaxSessions 50
ClientAliveInterval 0
Subsystem sftp internal-sftp
LogLevel ERROR
SetEnv PYENV_REHASH_TIMEOUT=1
"""
        )
        # SetEnv: a login shell here may run `pyenv rehash` from ~/.bashrc (pyenv's init does),
        # which waits up to 60 s on a lock file that a login killed by a fault test leaves
        # behind; every later login to this sshd would then stall for a minute.

    def start(self) -> SshServer:
        Path("/run/sshd").mkdir(parents=True, exist_ok=True)
        log = open(self.root / "sshd.log", "ab")  # noqa: SIM115 - owned by the process
        self.proc = subprocess.Popen(
            [SSHD, "-D", "-e", "-f", str(self.root / "sshd_config")],
            stdout=log,
            stderr=log,
            start_new_session=True,
        )
        wait_for_port(self.port)
        return self

    def stop(self) -> None:
        """Kill sshd and every session it spawned (a real outage, not a polite close).

        Per-connection sshd processes call setsid(), so they are outside the listener's process
        group: find them as its children (and theirs) and kill them too.
        """
        if self.proc is not None and self.proc.poll() is None:
            doomed = _descendants(self.proc.pid)
            os.killpg(self.proc.pid, 9)
            for pid in doomed:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, 9)
            self.proc.wait()
        self.proc = None

    def host_config(self, name: str = "test", **changes: object) -> HostConfig:
        values: dict[str, object] = {
            "name": name,
            "ssh": self.destination,
            "identity_file": self.client_key,
            "known_hosts": self.known_hosts,
            "ssh_config": self.ssh_config,
            "connect_timeout_s": 5.0,
        }
        values.update(changes)
        return HostConfig(**values)  # type: ignore[arg-type]

    def toml_host(self, name: str = "test") -> str:
        return (
            f'[hosts.{name}]\nssh = "{self.destination}"\nidentity_file = "{self.client_key}"\n'
            f'known_hosts = "{self.known_hosts}"\nssh_config = "{self.ssh_config}"\n'
            f'connect_timeout = "5s"\n'
        )

    def ssh_command(self) -> list[str]:
        """The OpenSSH client command line that reaches this server (for rsync, benchmarks)."""
        return [
            "ssh", "-F", str(self.ssh_config), "-i", str(self.client_key), "-p", str(self.port),
            "-o", f"UserKnownHostsFile={self.known_hosts}", "-o", "StrictHostKeyChecking=yes",
            "-o", "BatchMode=yes", "-l", self.user,
        ]  # fmt: skip


def _descendants(pid: int) -> list[int]:
    """Every process below ``pid``, from /proc (children first found, then theirs)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(entry.name))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def start_sshd(root: Path, *, password_only: bool = False, port: int | None = None) -> SshServer:
    server = SshServer(root, port or free_port(), password_only=password_only)
    server.prepare()
    return server.start()
