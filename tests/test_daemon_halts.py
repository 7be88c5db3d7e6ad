"""Halts in the daemon, run as a user runs it (`tether start`, a separate process): a big
deletion halts the pair and the halt survives a restart; a halted pair neither spins nor stops
the control API or the other pairs; SIGTERM still stops it; a deleted local root halts at once;
a retargeted pair deletes nothing."""

from __future__ import annotations

import json
import os
import shutil
import signal
import time
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import FILES, DaemonHome, ended, fill, tether, until, wipe, write_project
from tests.sshd import SshServer


def pairs(local: Path, env: dict[str, str]) -> dict[str, dict[str, Any]]:
    answer = tether(local, "status", "--json", env=env)  # times out (60 s) if the daemon froze
    assert answer.returncode == 0, answer.stderr
    return {p["pair"]: p for p in json.loads(answer.stdout)["projects"][0]["pairs"]}


def cpu_s(pid: int) -> float:
    """User + system CPU time the process has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def stop(daemon_home: DaemonHome) -> None:
    assert daemon_home.pid is not None
    os.kill(daemon_home.pid, signal.SIGTERM)
    assert ended(daemon_home.pid, wait_s=30), "SIGTERM did not stop the daemon"
    daemon_home.pid = None


def test_big_deletion_halts_survives_restart_and_never_freezes_the_daemon(
    sshd: SshServer,
    tmp_path: Path,
    daemon_home: DaemonHome,
) -> None:
    other_remote = tmp_path / "remote-other"
    extra = f'[pairs.other]\nhost = "gpu"\nlocal = "other"\nremote = "{other_remote}"\n'
    extra += 'mode = "two-way"\n'
    local, remote = write_project(tmp_path, sshd, extra=extra)
    fill(local)
    env = daemon_home.env
    daemon_home.start(local)
    until(lambda: all((remote / n).exists() for n in FILES), "first sync")
    stop(daemon_home)
    wipe(remote)  # rm -rf * on the host while the daemon is down, plus one new file
    (remote / "new.txt").write_text("one new file")

    daemon_home.start(local)
    code = until(
        lambda: pairs(local, env)["code"]["state"] == "halted" and pairs(local, env)["code"],
        "halted on the big deletion",
    )
    assert "would delete" in code["message"]
    assert all((local / n).exists() for n in FILES)

    # Halted, with more local changes coming: no spin, the API answers, the other pair syncs.
    assert daemon_home.pid is not None
    for i in range(20):
        (local / f"more-{i}.txt").write_text(str(i))
    before = cpu_s(daemon_home.pid)
    # The halted pair has seen the saves (and had its chance to act on them) ...
    until(lambda: pairs(local, env)["code"]["pending"] >= 20, "the halted pair holds the saves")
    time.sleep(3)  # ... and this is the window its CPU is measured over: a spin would fill it
    (local / "other").mkdir(exist_ok=True)
    (local / "other" / "o.txt").write_text("still synced")
    until(lambda: (other_remote / "o.txt").exists(), "the other pair syncs")
    assert pairs(local, env)["code"]["state"] == "halted"
    used = cpu_s(daemon_home.pid) - before
    assert used < 2.0, f"the daemon used {used:.1f} s of CPU while a pair was halted"
    assert all((local / n).exists() for n in FILES)

    stop(daemon_home)  # SIGTERM ends it, and the halt is kept across the restart
    daemon_home.start(local)
    code = until(lambda: pairs(local, env)["code"], "status")
    assert code["state"] == "halted" and "would delete" in code["message"]
    # The restarted daemon has had its chance: the other pair's first cycle is done.
    until(lambda: pairs(local, env)["other"]["state"] == "watching", "the other pair syncs")
    assert all((local / n).exists() for n in FILES)

    # `tether resume` accepts the plan shown (new local files are copies, not deletions).
    resumed = tether(local, "resume", "code", env=env)
    assert resumed.returncode == 0, resumed.stderr
    until(
        lambda: (
            not any((local / n).exists() for n in FILES)
            and (local / "new.txt").exists()
            and (remote / "more-3.txt").exists()
        ),
        "the accepted plan lands",
    )
    stop(daemon_home)


@pytest.mark.parametrize("how", ["wiped", "rm-rf", "moved-away"])
def test_a_deleted_local_root_halts_at_once(
    sshd: SshServer,
    tmp_path: Path,
    daemon_home: DaemonHome,
    how: str,
) -> None:
    """However the local root goes (emptied then removed, removed whole, moved aside), the pair
    halts within seconds, without waiting for a change on the host."""
    local, remote = write_project(tmp_path, sshd, extra='local = "tree"\n')
    fill(local / "tree")
    daemon_home.start(local)
    until(lambda: all((remote / n).exists() for n in FILES), "first sync")
    until(lambda: pairs(local, daemon_home.env)["code"]["state"] == "watching", "watching")
    if how == "wiped":
        wipe(local / "tree")
        (local / "tree").rmdir()
    elif how == "rm-rf":
        shutil.rmtree(local / "tree")
    else:
        (local / "tree").rename(local / "tree.aside")
    code = until(lambda: pairs(local, daemon_home.env)["code"]["state"] == "halted"
                 and pairs(local, daemon_home.env)["code"], "halted", timeout_s=10)  # fmt: skip
    assert "local" in code["message"]
    assert all((remote / n).exists() for n in FILES)
    stop(daemon_home)


def test_daemon_retarget_to_an_existing_folder_deletes_nothing(
    sshd: SshServer,
    tmp_path: Path,
    daemon_home: DaemonHome,
) -> None:
    local, remote = write_project(tmp_path, sshd)
    fill(local)
    daemon_home.start(local)
    until(lambda: all((remote / n).exists() for n in FILES), "first sync")
    other = tmp_path / "B"
    other.mkdir()
    (other / "only-in-b.txt").write_text("b")
    config = local / "tether.toml"
    config.write_text(config.read_text().replace(f'remote = "{remote}"', f'remote = "{other}"'))
    until(lambda: (local / "only-in-b.txt").exists(), "B's file arrives")
    until(lambda: all((other / n).exists() for n in FILES), "the local files reach B")
    assert all((local / n).exists() for n in FILES)
    stop(daemon_home)
