"""`tether init`: a starter that validates, and faithful conversion of remote_tools configs."""

from __future__ import annotations

import shlex
from pathlib import Path

import pytest
from tether.cli.init import (
    Conversion,
    convert_remote_config,
    destination,
    starter_config,
    write_config,
)
from tether.cli.main import main
from tether.config import Config, PairMode, load_config, parse_config
from tether.errors import ConfigError
from tether.sync.ignore import IgnoreRules

REMOTE_CONFIG = """\
# SSH hostname/alias
REMOTE_HOST=trn1-dev
REMOTE_CODE_PATH="/home/ubuntu/nki autotune"   # spaces survive quoting
export REMOTE_VENV_PATH='/opt/aws_neuron_venv_pytorch'
RSYNC_OPTIONS="-av --exclude='.git' --exclude='__pycache__' --exclude='*.pyc' \\
--exclude 'cache/' --exclude=*.log"
SSH_OPTIONS="-o ConnectTimeout=10"
"""


def test_starter_is_valid_and_commented(tmp_path: Path) -> None:
    text = starter_config(ssh='odd"name', remote="~/src/x y")
    cfg = parse_config(text, tmp_path / "tether.toml")
    assert cfg.hosts["gpu"].ssh == 'odd"name'
    assert cfg.pairs["code"].remote == "~/src/x y"
    assert text.count("#") > 10


def test_convert_remote_config(tmp_path: Path) -> None:
    source = tmp_path / ".remote_config"
    source.write_text(REMOTE_CONFIG)
    cfg = parse_config(convert_remote_config(source)[0], tmp_path / "tether.toml")
    host, pair = cfg.hosts["gpu"], cfg.pairs["code"]
    assert host.ssh == "trn1-dev"
    assert host.venv == "/opt/aws_neuron_venv_pytorch"
    assert host.connect_timeout_s == 10.0
    assert pair.remote == "/home/ubuntu/nki autotune"
    assert pair.ignore == ("cache/", "*.log")  # .git, __pycache__, *.pyc are defaults already


def test_convert_requires_host_and_path(tmp_path: Path) -> None:
    source = tmp_path / ".remote_config"
    source.write_text("REMOTE_HOST=x\n")
    with pytest.raises(ConfigError, match="REMOTE_CODE_PATH is missing"):
        convert_remote_config(source)


def test_convert_rejects_garbage_lines(tmp_path: Path) -> None:
    source = tmp_path / ".remote_config"
    source.write_text("REMOTE_HOST=x\nrm -rf /\n")
    with pytest.raises(ConfigError, match=r":2: expected KEY=value"):
        convert_remote_config(source)


def convert(tmp_path: Path, text: str) -> tuple[Config, Conversion]:
    """Convert ``text`` as remote_tools/.remote_config, write it, load it as `tether check` does."""
    folder = tmp_path / "remote_tools"
    folder.mkdir(exist_ok=True)
    (folder / ".remote_config").write_text(text)
    toml, conversion = convert_remote_config(folder / ".remote_config")
    write_config(tmp_path / "tether.toml", toml, force=True)
    return load_config(tmp_path / "tether.toml"), conversion


def old_config(ssh_options: str = "", rsync_options: str = "-av") -> str:
    return (
        "REMOTE_HOST=trn1-dev\nREMOTE_CODE_PATH=/srv/code\n"
        f"SSH_OPTIONS={shlex.quote(ssh_options)}\nRSYNC_OPTIONS={shlex.quote(rsync_options)}\n"
    )


@pytest.mark.parametrize(
    "ssh_options",
    [
        "-p 2222 -i '/keys/my key' -J 'ops@bastion:2200,jump2'",
        "-p2222 -i'/keys/my key' -Jops@bastion:2200,jump2",
        "-o Port=2222 -o 'IdentityFile=/keys/my key' -o ProxyJump=ops@bastion:2200,jump2",
        "-oPort=2222 -o 'IdentityFile /keys/my key' -o 'ProxyJump ops@bastion:2200,jump2'",
    ],
)
def test_ssh_options_carry_over(tmp_path: Path, ssh_options: str) -> None:
    cfg, conversion = convert(tmp_path, old_config(ssh_options))
    host = cfg.hosts["gpu"]
    assert host.ssh == "trn1-dev:2222"
    assert host.identity_file == Path("/keys/my key")
    assert host.proxy_jump == "ops@bastion:2200,jump2"
    assert conversion.warnings == []


def test_ssh_user_and_port_fold_into_the_destination(tmp_path: Path) -> None:
    cfg, _ = convert(tmp_path, old_config("-l ubuntu -o ConnectTimeout=7 -p 2200"))
    assert cfg.hosts["gpu"].ssh == "ubuntu@trn1-dev:2200"
    assert cfg.hosts["gpu"].connect_timeout_s == 7.0
    assert destination("::1", Conversion(port=22)) == "[::1]:22"
    assert destination("me@box:22", Conversion(user="other", port=2222)) == "me@box:2222"


def test_unmapped_options_are_named_one_line_each(tmp_path: Path) -> None:
    _, conversion = convert(
        tmp_path,
        old_config(
            "-C -o ServerAliveInterval=60 -o StrictHostKeyChecking=no -i /a -i /b stray",
            "-avz --bwlimit 100 --delete-excluded --filter='- x' -e 'ssh -p 2201 -4' src/",
        )
        + "EXTRA=1\n",
    )
    dropped = [w.split("dropped `", 1)[1].split("`", 1)[0] for w in conversion.warnings]
    assert dropped == [
        "-C",
        "-o ServerAliveInterval=60",
        "-o StrictHostKeyChecking=no",
        "-i /b",
        "stray",
        "-z",
        "--bwlimit 100",
        "--delete-excluded",
        "--filter - x",
        "-4",
        "src/",
        "EXTRA=...",
    ]
    assert all("\n" not in w and ": dropped `" in w for w in conversion.warnings)
    assert conversion.port == 2201  # rsync's -e 'ssh -p ...' is read as ssh options


def test_delete_means_mirror_and_is_said(tmp_path: Path) -> None:
    cfg, conversion = convert(tmp_path, old_config(rsync_options="-a --delete-after"))
    assert cfg.pairs["code"].mode is PairMode.MIRROR
    assert any(n.startswith('mode = "mirror"') for n in conversion.notes)
    cfg, conversion = convert(tmp_path, old_config(rsync_options="-a"))
    assert cfg.pairs["code"].mode is PairMode.PUSH
    assert any(n.startswith('mode = "push"') for n in conversion.notes)


def test_exclude_from_and_include(tmp_path: Path) -> None:
    """rsync's first match wins, gitignore's last: the list is reversed, includes become ``!``."""
    (tmp_path / "remote_tools" / "lists").mkdir(parents=True)
    (tmp_path / "remote_tools" / "lists" / "ex.txt").write_text(
        "# a comment\n; another\n\nbuild/\n- data/\n+ data/keep/\n.git\n"
    )
    cfg, conversion = convert(
        tmp_path,
        old_config(
            rsync_options="--exclude-from=lists/ex.txt --include 'keep me.log' "
            "--exclude='*.log' --include=late.txt"
        ),
    )
    assert cfg.pairs["code"].ignore == (
        "*.log",
        "!keep me.log",
        "!data/keep/",
        "data/",
        "build/",
    )
    assert conversion.warnings == [
        "RSYNC_OPTIONS: dropped `--include late.txt`: no --exclude after it to override"
    ]
    ignored = IgnoreRules(extra=cfg.pairs["code"].ignore)
    assert ignored("x.log") and not ignored("keep me.log") and ignored("data", is_dir=True)


def test_unreadable_exclude_from_is_named(tmp_path: Path) -> None:
    _, conversion = convert(tmp_path, old_config(rsync_options="--exclude-from missing.txt"))
    [warning] = conversion.warnings
    assert "`--exclude-from missing.txt`" in warning
    assert str(tmp_path / "remote_tools" / "missing.txt") in warning


def test_cli_init_from_and_refuses_to_overwrite(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "remote_tools").mkdir()
    (tmp_path / "remote_tools" / ".remote_config").write_text(REMOTE_CONFIG)
    assert main(["init", "--from", "remote_tools/.remote_config"]) == 0
    assert load_config(tmp_path / "tether.toml").hosts["gpu"].ssh == "trn1-dev"
    assert main(["init"]) == 78
    captured = capsys.readouterr()
    assert "already exists" in captured.err
    assert 'mode = "push"' in captured.out
    assert captured.err.count("warning:") == 0
    assert main(["init", "--force", "--ssh", "me@box:2222"]) == 0
    assert load_config(tmp_path / "tether.toml").hosts["gpu"].ssh == "me@box:2222"


def test_cli_init_from_carries_options_over_and_warns(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "remote_tools").mkdir()
    (tmp_path / "remote_tools" / "excludes").write_text("build/\n")
    (tmp_path / "remote_tools" / ".remote_config").write_text(
        old_config(
            "-p 2222 -i ~/.ssh/trn.pem -J bastion -o ServerAliveInterval=60",
            "-avz --delete --exclude-from=excludes --include='keep.log' --exclude='*.log'",
        )
    )
    assert main(["init", "--from", "remote_tools/.remote_config"]) == 0
    host, pair = (cfg := load_config(tmp_path / "tether.toml")).hosts["gpu"], cfg.pairs["code"]
    assert (host.ssh, host.identity_file, host.proxy_jump) == (
        "trn1-dev:2222",
        Path("~/.ssh/trn.pem").expanduser(),
        "bastion",
    )
    assert pair.mode is PairMode.MIRROR
    assert pair.ignore == ("*.log", "!keep.log", "build/")
    captured = capsys.readouterr()
    assert captured.err.splitlines() == [
        "warning: SSH_OPTIONS: dropped `-o ServerAliveInterval=60`: tether's link sends its own "
        "keepalives and reconnects by itself",
        "warning: RSYNC_OPTIONS: dropped `-z`: tether's SSH link does not compress",
    ]
    assert 'mode = "mirror"' in captured.out
