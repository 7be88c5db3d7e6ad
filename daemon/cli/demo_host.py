"""An embedded SSH host on 127.0.0.1 for `tether demo`: no system sshd, no remote machine.

It is asyncssh's server with key-only auth, exec (commands run by the local shell with ``HOME``
set to a private folder, so everything tether puts "on the host" stays in that folder), SFTP, and
direct-tcpip forwarding for tunnels. Keys are generated fresh; the demo's known_hosts is written
from the key it generated itself, which is the one case where trusting a key needs no question.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
from pathlib import Path

import asyncssh

from ..config import HostConfig

_CHUNK = 1 << 16


def free_port() -> int:
    """A port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class _KeyOnlyServer(asyncssh.SSHServer):
    def begin_auth(self, username: str) -> bool:
        return True

    def password_auth_supported(self) -> bool:
        return False

    def kbdint_auth_supported(self) -> bool:
        return False

    def connection_requested(self, dest_host: str, dest_port: int, *_: object) -> bool:
        return dest_host in ("localhost", "127.0.0.1", "::1")


class DemoHost:
    """A loopback SSH host whose home folder is ``root/home``."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.home = root / "home"
        self.client_key = root / "id_ed25519"
        self.known_hosts = root / "known_hosts"
        self.ssh_config = root / "ssh_config"
        self.port = 0
        self._server: asyncssh.SSHAcceptor | None = None

    async def start(self) -> DemoHost:
        self.home.mkdir(parents=True, exist_ok=True)
        host_key = asyncssh.generate_private_key("ssh-ed25519")
        client_key = asyncssh.generate_private_key("ssh-ed25519")
        client_key.write_private_key(str(self.client_key))
        os.chmod(self.client_key, 0o600)
        self.ssh_config.write_text("")
        self._server = await asyncssh.create_server(
            _KeyOnlyServer,
            "127.0.0.1",
            0,
            server_host_keys=[host_key],
            authorized_client_keys=asyncssh.import_authorized_keys(
                client_key.export_public_key().decode()
            ),
            process_factory=self._run_command,
            sftp_factory=True,
            allow_scp=False,
            encoding=None,
        )
        self.port = self._server.sockets[0].getsockname()[1]
        public = host_key.export_public_key().decode().strip()
        self.known_hosts.write_text(f"[127.0.0.1]:{self.port} {public}\n")
        return self

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None

    async def __aenter__(self) -> DemoHost:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    @property
    def destination(self) -> str:
        return f"{os.environ.get('USER') or 'demo'}@127.0.0.1:{self.port}"

    def host_config(self, name: str = "demo") -> HostConfig:
        return HostConfig(
            name=name,
            ssh=self.destination,
            identity_file=self.client_key,
            known_hosts=self.known_hosts,
            ssh_config=self.ssh_config,
            connect_timeout_s=5.0,
        )

    def toml_host(self, name: str = "demo") -> str:
        return (
            f'[hosts.{name}]\nssh = "{self.destination}"\nidentity_file = "{self.client_key}"\n'
            f'known_hosts = "{self.known_hosts}"\nssh_config = "{self.ssh_config}"\n'
        )

    async def _run_command(self, process: asyncssh.SSHServerProcess) -> None:
        """Run an exec request with the local shell, streaming both ways, exit status kept."""
        env = {**os.environ, "HOME": str(self.home), "PWD": str(self.home)}
        env.pop("SSH_AUTH_SOCK", None)
        command = process.command or os.environ.get("SHELL", "/bin/sh")
        local = await asyncio.create_subprocess_exec(
            "/bin/sh",
            "-c",
            command,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            cwd=self.home,
            env=env,
        )
        assert local.stdin and local.stdout and local.stderr
        stdin = local.stdin

        async def feed() -> None:
            try:
                while data := await process.stdin.read(_CHUNK):
                    stdin.write(data)
                    await stdin.drain()
            except (asyncssh.Error, BrokenPipeError, ConnectionResetError):
                pass
            finally:
                stdin.close()

        async def pump(source: asyncio.StreamReader, sink: asyncssh.SSHWriter) -> None:
            while data := await source.read(_CHUNK):
                try:
                    sink.write(data)
                    await sink.drain()
                except (asyncssh.Error, BrokenPipeError, ConnectionResetError):
                    return

        feeder = asyncio.create_task(feed())
        try:
            await asyncio.gather(
                pump(local.stdout, process.stdout), pump(local.stderr, process.stderr)
            )
            status = await local.wait()
        finally:
            feeder.cancel()
            if local.returncode is None:
                local.kill()
                await local.wait()
        if status < 0:
            process.exit_with_signal(signal.Signals(-status).name.removeprefix("SIG"))
        else:
            process.exit(status)
