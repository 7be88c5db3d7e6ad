"""`tether init`: a starter that validates, and faithful conversion of remote_tools configs."""

from __future__ import annotations

from pathlib import Path

import pytest
from tether.cli.init import connect_timeout_of, convert_remote_config, excludes_of, starter_config
from tether.cli.main import main
from tether.config import load_config, parse_config
from tether.errors import ConfigError

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
    cfg = parse_config(convert_remote_config(source), tmp_path / "tether.toml")
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


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        ("-av --exclude='.git' --exclude=build", [".git", "build"]),
        ("--exclude 'a b/' -z", ["a b/"]),
        ("-av", []),
    ],
)
def test_excludes(options: str, expected: list[str]) -> None:
    assert excludes_of(options) == expected


@pytest.mark.parametrize(
    ("options", "expected"),
    [("-o ConnectTimeout=10", 10.0), ("-oConnectTimeout=7 -v", 7.0), ("-v", None)],
)
def test_connect_timeout(options: str, expected: float | None) -> None:
    assert connect_timeout_of(options) == expected


def test_cli_init_from_and_refuses_to_overwrite(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "remote_tools").mkdir()
    (tmp_path / "remote_tools" / ".remote_config").write_text(REMOTE_CONFIG)
    assert main(["init", "--from", "remote_tools/.remote_config"]) == 0
    assert load_config(tmp_path / "tether.toml").hosts["gpu"].ssh == "trn1-dev"
    assert main(["init"]) == 78
    assert "already exists" in capsys.readouterr().err
    assert main(["init", "--force", "--ssh", "me@box:2222"]) == 0
    assert load_config(tmp_path / "tether.toml").hosts["gpu"].ssh == "me@box:2222"
