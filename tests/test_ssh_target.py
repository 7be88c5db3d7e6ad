"""How a host's destination is resolved against an ssh config file (pure: no connection)."""

from __future__ import annotations

from pathlib import Path

from tether.config import HostConfig
from tether.transport.ssh import resolve_target


def test_what_tether_toml_spells_out_wins_over_the_ssh_config(tmp_path: Path) -> None:
    """As with `ssh -p 2222 -l alice gb10`: the command line beats Port/User in ~/.ssh/config
    (a converted `SSH_OPTIONS="-p 2222"` must not be overridden by an older config entry)."""
    config = tmp_path / "ssh_config"
    config.write_text("Host gb10\n  HostName 10.0.0.7\n  Port 22022\n  User bob\n")
    given = resolve_target(HostConfig(name="gpu", ssh="alice@gb10:2222", ssh_config=config))
    assert (given.hostname, given.port, given.username) == ("10.0.0.7", 2222, "alice")
    bare = resolve_target(HostConfig(name="gpu", ssh="gb10", ssh_config=config))
    assert (bare.hostname, bare.port, bare.username) == ("10.0.0.7", 22022, "bob")
