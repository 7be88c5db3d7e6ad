"""Temporaries: one definition for every side, and none outlives a killed transfer.

Each case kills a real transfer midway (the process holding the temporary open, or the sync
process over SFTP) against the real sshd, checks that the temporary was left, then syncs again.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from tether.sync import tempnames
from tether.sync.tempnames import (
    STALE_AGE_S,
    barrier_name,
    barrier_token,
    is_stale,
    is_temp,
    machine_id,
    temp_name,
)
from tether.transport.agent_boot import BUNDLE

from tests.helpers import sync, sync_over_sftp
from tests.helpers import write as write_text
from tests.sshd import SshServer

ROOT = Path(__file__).parents[1]
BIG = 96 << 20
LOOKALIKES = (
    ".foo.tether-notours.tmp",
    "foo.tether-0123abcd.tmp",  # no leading dot: never one of ours
    ".foo.tether-0123abcd-12-0123abcd.tmp.bak",
    ".foo.tether-0123ABCD.tmp",
    ".foo.tether-0123abcd-0-0123abcd.tmp",  # pid 0 is never a writer
)


def dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_the_name_says_who_writes_it() -> None:
    mine = temp_name("data.bin")
    assert is_temp(mine) and mine.startswith(".data.bin.tether-")
    assert not is_stale(mine, 10 * STALE_AGE_S, machine_id(), tempnames.pid_alive)
    gone = f".data.bin.tether-{machine_id()}-{dead_pid()}-0000abcd.tmp"
    assert is_stale(gone, 0.0, machine_id(), tempnames.pid_alive)
    elsewhere = f".data.bin.tether-{'f' * 8 if machine_id() != 'f' * 8 else 'e' * 8}-1-0.tmp"
    for other in (elsewhere.replace("-0.tmp", "-0000abcd.tmp"), ".a.tether-0123abcd.tmp",
                  ".a.tether-0123456789ab.tmp"):  # fmt: skip
        assert is_temp(other), other
        assert not is_stale(other, STALE_AGE_S - 1, machine_id(), lambda pid: False)
        assert is_stale(other, STALE_AGE_S, machine_id(), lambda pid: True)
    for name in LOOKALIKES:
        assert not is_temp(name) and not is_stale(name, 1e9, machine_id(), lambda pid: False)
    assert len(temp_name("é" * 200).encode()) < 255


def test_a_flush_barrier_is_a_temporary_no_scanner_lists() -> None:
    """The daemon's flush barrier lands in the user's folder: it must be a temporary (never
    synced, never listed, cleaned once stale), and only its own name gives back a token."""
    name = barrier_name("0123abcd")
    assert is_temp(name) and barrier_token(name) == "0123abcd"
    assert is_stale(name, STALE_AGE_S + 1, machine_id(), lambda pid: True)
    others = [temp_name(".flush"), name + ".x", name[1:], name.upper(), "sub/" + name, name[:-5]]
    for other in others:
        assert barrier_token(other) is None, other


def test_every_side_takes_its_temporaries_from_one_module() -> None:
    """The agent (shipped in its bundle), the local scanner, the SFTP endpoint: one definition."""
    assert (
        "sync/tempnames.py" in BUNDLE
        and Path(tempnames.__file__) == ROOT / "daemon/sync/tempnames.py"
    )
    for rel in (
        "daemon/agent/agent_scan.py",
        "daemon/sync/scan.py",
        "daemon/transport/sftp_endpoint.py",
        "daemon/service/pair_session.py",
    ):
        source = (ROOT / rel).read_text()
        assert "tempnames" in source and "tether-" not in source.replace("tether-agent", ""), rel
    for rel in (r for r in BUNDLE if r.startswith("agent/")):  # nor does any other agent module
        source = (ROOT / "daemon" / rel).read_text()
        assert "tether-" not in source.replace("tether-agent", ""), rel


def holder_of(path: Path) -> int | None:
    """The process that has ``path`` open for writing (Linux /proc), if any."""
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            for fd in os.listdir(f"/proc/{pid}/fd"):
                if os.readlink(f"/proc/{pid}/fd/{fd}") == str(path):
                    return int(pid)
        except OSError:
            continue
    return None


def listing(root: Path) -> dict[str, int]:
    return {p.relative_to(root).as_posix(): p.stat().st_size for p in root.rglob("*")}


def temporaries(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if ".tether-" in p.name and p.name not in LOOKALIKES]


def wait_for_temporary(root: Path, proc: subprocess.Popen[bytes]) -> Path:
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline and proc.poll() is None:
        found = [p for p in temporaries(root) if p.name.startswith(".big.bin.")]
        if found:
            return found[0]
        time.sleep(0.002)
    out = proc.stdout.read().decode() if proc.stdout and proc.poll() is not None else ""
    raise AssertionError(f"no temporary appeared in {root}: {out}")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
@pytest.mark.parametrize("mode", ["push", "pull"])
def test_an_agent_killed_midway_leaves_no_temporary(sync_project, mode: str) -> None:
    """push: the host's agent is killed writing; pull: the local one. The next sync removes
    the leftover, syncs the look-alike user files, and lists no temporary as a user file."""
    tmp, local, remote, configure = sync_project
    configure(mode)
    source, dest = (local, remote) if mode == "push" else (remote, local)
    source.mkdir(exist_ok=True)
    (source / "big.bin").write_bytes(os.urandom(1 << 20) * (BIG >> 20))
    for name in LOOKALIKES:
        write_text(source / name, "a user's own file")
    cmd = [sys.executable, "-m", "tether.cli.main", "--config", str(tmp / "tether.toml"), "sync"]
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        temp = wait_for_temporary(dest, proc)
        deadline = time.monotonic() + 30
        while (writer := holder_of(temp)) is None and time.monotonic() < deadline:
            time.sleep(0.001)
        assert writer is not None and writer != proc.pid, (temp, temp.exists(), proc.poll())
        os.kill(writer, signal.SIGKILL)  # the agent writing it, mid-file
    finally:
        proc.kill()
        proc.wait()
    assert temp.exists()  # what the issue saw: left behind

    code, report = sync(tmp)
    assert code == 0, report
    assert temporaries(local) == [] and temporaries(remote) == []
    assert listing(dest) == listing(source)
    assert all((dest / name).read_text() == "a user's own file" for name in LOOKALIKES)


SFTP_SYNC = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    from tests.helpers import sync_over_sftp
    sync_over_sftp(Path(sys.argv[1]))
    """
)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_a_sync_over_sftp_killed_midway_leaves_no_temporary(
    sshd: SshServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:

    monkeypatch.setenv("TETHER_STATE_DIR", str(tmp_path / "state"))
    local, remote = tmp_path / "local", tmp_path / "remote"
    local.mkdir()
    config = local / "tether.toml"
    config.write_text(
        sshd.toml_host("gpu")
        + f'[pairs.code]\nhost = "gpu"\nremote = "{remote}"\nmode = "two-way"\n'
    )
    (local / "big.bin").write_bytes(os.urandom(1 << 20) * (BIG >> 20))
    write_text(local / LOOKALIKES[0], "a user's own file")
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.Popen(
        [sys.executable, "-c", SFTP_SYNC, str(config)],
        env=env,
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        temp = wait_for_temporary(remote, proc)
    finally:
        proc.kill()
        proc.wait()
    assert temp.exists()

    report = sync_over_sftp(config)
    assert report.status.value == "ok", report.message
    assert temporaries(local) == [] and temporaries(remote) == []
    assert (remote / "big.bin").stat().st_size == BIG
    assert (remote / LOOKALIKES[0]).read_text() == "a user's own file"
