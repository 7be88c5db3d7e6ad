"""tether.toml rules: every error is one line naming file, key, value and what is allowed."""

from __future__ import annotations

from pathlib import Path

import pytest
from tether.config import (
    OnBusy,
    PairMode,
    find_config,
    load_config,
    parse_config,
    parse_duration,
)
from tether.errors import EX_CONFIG, ConfigError

FILE = Path("/proj/tether.toml")
HOST = '[hosts.gpu]\nssh = "gb10"\n'
FULL = (
    HOST
    + """identity_file = "~/.ssh/id_ed25519"
python = "python3.11"
venv = "~/venvs/nb"
connect_timeout = "20s"

[pairs.code]
host = "gpu"
local = "src"
remote = "~/src/mykernels"
mode = "two-way"
ignore = ["results/", "*.log"]

[tunnels.api]
host = "gpu"
local = 8000
remote = "localhost:8000"
keep_running = "uvicorn api:app --port 8000"

[triggers.roofline]
pair = "code"
on = ["src/**/*.py"]
run = "python -m kernels run"
fetch = ["results/"]
on_busy = "queue"
timeout = "1h30m"
env = { CUDA_VISIBLE_DEVICES = "0" }

[reports.gpu]
memory = "~/tt-metal/generated/ttnn/reports/"
"""
)


def test_full_config_parses_into_typed_values() -> None:
    cfg = parse_config(FULL, FILE)
    host = cfg.hosts["gpu"]
    assert host.identity_file == Path("~/.ssh/id_ed25519").expanduser()
    assert (host.python, host.venv, host.connect_timeout_s) == ("python3.11", "~/venvs/nb", 20.0)
    pair = cfg.pairs["code"]
    assert pair.local == Path("/proj/src") and pair.mode is PairMode.TWO_WAY
    assert pair.ignore == ("results/", "*.log")
    tunnel = cfg.tunnels["api"]
    assert (tunnel.local, tunnel.remote_host, tunnel.remote_port) == (8000, "localhost", 8000)
    trigger = cfg.triggers["roofline"]
    assert trigger.on_busy is OnBusy.QUEUE and trigger.timeout_s == 5400.0
    assert trigger.env == {"CUDA_VISIBLE_DEVICES": "0"}
    reports = cfg.reports["gpu"]
    assert reports.host == "gpu" and reports.roots["memory"].startswith("~/tt-metal")
    assert reports.markers == {"memory": ("db.sqlite",)} and not reports.watch
    assert reports.local_for("memory") == Path("/proj/reports/gpu/memory")
    assert cfg.pair(None) is pair and cfg.host(None) is host


def test_reports_tables_name_kinds_markers_and_where_they_land() -> None:
    """Any key that is not a setting names a kind's root; markers default to TT-NN's for
    memory and performance and to none (every child folder) for other kinds."""
    cfg = parse_config(
        HOST + "[reports.tt]\nhost = 'gpu'\nmemory = 'm'\nperformance = 'p'\ntune = 't'\n"
        "local = 'out'\nwatch = true\nignore = ['*.tmp']\nmarkers = {tune = 'cache.json'}\n"
        "[reports.plain]\nhost = 'gpu'\nmemory = 'm2'\nmarkers = {memory = []}\n",
        FILE,
    )
    tt = cfg.reports["tt"]
    assert tt.roots == {"memory": "m", "performance": "p", "tune": "t"}
    assert tt.markers == {
        "memory": ("db.sqlite",),
        "performance": ("profile_log_device.csv",),
        "tune": ("cache.json",),
    }
    assert tt.watch and tt.ignore == ("*.tmp",)
    assert tt.local_for("tune") == Path("/proj/out/tune")
    assert cfg.reports["plain"].markers == {"memory": ()}
    assert cfg.reports["plain"].local_for("memory") == Path("/proj/reports/gpu/memory")


def test_defaults() -> None:
    cfg = parse_config(HOST + '[pairs.p]\nhost = "gpu"\nremote = "r"\n', FILE)
    assert cfg.pairs["p"].mode is PairMode.PUSH
    assert cfg.pairs["p"].local == Path("/proj")
    assert cfg.hosts["gpu"].python == "python3"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("[hosts.gpu]\nssh = 'x'\nsssh = 1\n", "unknown key hosts.gpu.sssh (did you mean 'ssh'?"),
        ("[host.gpu]\nssh = 'x'\n", "unknown table [host] (did you mean 'hosts'?"),
        ("", "no [hosts.NAME] table"),
        ("[hosts.gpu]\n", "hosts.gpu.ssh is missing"),
        ("[hosts.gpu]\nssh = 3\n", "hosts.gpu.ssh = 3 is not allowed; expected a non-empty string"),
        (
            HOST + "[pairs.a]\nhost = 'gpx'\nremote = 'r'\n",
            "names no [hosts.gpx] (did you mean 'gpu'",
        ),
        (
            HOST + "[pairs.a]\nhost = 'gpu'\nremote = 'r'\nmode = 'sideways'\n",
            'pairs.a.mode = "sideways" is not allowed; expected one of push, pull, two-way, mirror',
        ),
        (HOST + "[pairs.a]\nhost = 'gpu'\nremote = 'r'\nignore = 'x'\n", "a list of non-empty"),
        (HOST + "[tunnels.t]\nhost = 'gpu'\nlocal = 70000\nremote = 'h:1'\n", "from 1 to 65535"),
        (HOST + "[tunnels.t]\nhost = 'gpu'\nlocal = 80\nremote = 'nohost'\n", '"HOST:PORT"'),
        (
            HOST + "[tunnels.a]\nhost='gpu'\nlocal=80\nremote='h:1'\n"
            "[tunnels.b]\nhost='gpu'\nlocal=80\nremote='h:2'\n",
            "already used by tunnels.a",
        ),
        (
            HOST + "[pairs.p]\nhost='gpu'\nremote='r'\n[triggers.t]\npair='p'\non=['*']\nrun='x'\n"
            "timeout='soon'\n",
            'a duration like "90s"',
        ),
        (HOST + "[triggers.t]\npair='nope'\non=['*']\nrun='x'\n", "names no [pairs.nope]"),
        (HOST + "[reports.other]\nmemory='x'\n", "reports.other.host is missing"),
        (HOST + "[reports.r]\nhost='gpx'\nmemory='x'\n", "names no [hosts.gpx]"),
        (HOST + "[reports.gpu]\nmemory='x'\nwach=true\n", "reports.gpu.wach (did you mean 'watch'"),
        (HOST + "[reports.gpu]\nmemory='x'\nhots='gpu'\n", "reports.gpu.hots (did you mean 'host'"),
        (HOST + "[reports.gpu]\nmemory='x'\nmarker={}\n", "(did you mean 'markers'"),
        (HOST + "[reports.gpu]\nwatch=true\n", "[reports.gpu] names no report folder"),
        (HOST + "[reports.gpu]\nmemory='x'\nwatch='yes'\n", "expected true or false"),
        (
            HOST + "[reports.gpu]\nmemory='x'\nmarkers={memroy='db.sqlite'}\n",
            "no report folder of kind 'memroy' (did you mean 'memory'",
        ),
        (HOST + "[reports.gpu]\nmemory='x'\nmarkers={memory='a/b'}\n", "a list of file names"),
        (
            HOST + "[pairs.p]\nhost='gpu'\nremote='r'\n[triggers.t]\npair='p'\non=['*']\n"
            "run='x'\nauto_fetch='yes'\n",
            "triggers.t.auto_fetch",
        ),
        ("[hosts.gpu\n", "not valid TOML"),
        ("[hosts.'bad name']\nssh='x'\n", "is not a usable name"),
    ],
)
def test_errors_are_one_line_with_file_key_and_allowed(text: str, expected: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(text, FILE)
    line = info.value.one_line()
    assert expected in line
    assert "\n" not in line
    assert str(FILE) in line
    assert info.value.exit_code == EX_CONFIG


@pytest.mark.parametrize(
    ("value", "seconds"),
    [("90s", 90), ("10m", 600), ("1h30m", 5400), ("250ms", 0.25), (30, 30), ("1.5m", 90)],
)
def test_durations(value: object, seconds: float) -> None:
    assert parse_duration(value) == pytest.approx(seconds)


@pytest.mark.parametrize("value", ["", "10", "m10", "10x", "-5s", 0, -1, True, "10m5", None])
def test_bad_durations(value: object) -> None:
    assert parse_duration(value) is None


def test_found_upward_like_git(tmp_path: Path) -> None:
    (tmp_path / "tether.toml").write_text(HOST)
    deep = tmp_path / "a" / "b"
    deep.mkdir(parents=True)
    assert find_config(deep) == tmp_path / "tether.toml"
    assert load_config(tmp_path / "tether.toml").root == tmp_path


def test_missing_config_says_what_to_do(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        find_config(tmp_path)
    assert "run `tether init` here" in info.value.one_line()


def test_pair_and_host_lookup_errors() -> None:
    cfg = parse_config(FULL, FILE)
    with pytest.raises(ConfigError) as info:
        cfg.pair("cod")
    assert "did you mean 'code'" in info.value.one_line()
    with pytest.raises(ConfigError, match="no host named"):
        cfg.host("cpu")
