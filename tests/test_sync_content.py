"""Every change of content is seen, a file that keeps changing is reported, names are bytes:
against a real sshd, in two-way pairs."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from tests.sshd import SshServer
from tests.test_sync_engine import sync, write


@pytest.fixture
def project(tmp_path: Path, sshd: SshServer, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("TETHER_STATE_DIR", str(tmp_path / "state"))
    local, remote = tmp_path / "local", tmp_path / "remote"
    local.mkdir()
    remote.mkdir()
    (tmp_path / "tether.toml").write_text(
        sshd.toml_host() + f'\n[pairs.code]\nhost = "test"\nlocal = "local"\nremote = "{remote}"\n'
        'mode = "two-way"\n'
    )
    return tmp_path, local, remote


def rewrite_in_place(path: Path, data: bytes) -> None:
    """Same size, same inode, and the old mtime put back (as `touch -r` or some tools do)."""
    st = os.stat(path)
    assert len(data) == st.st_size
    with open(path, "r+b") as fh:
        fh.write(data)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert os.stat(path).st_mtime_ns == st.st_mtime_ns and os.stat(path).st_ino == st.st_ino


def before_first_apply(monkeypatch: pytest.MonkeyPatch, act) -> None:
    """Run ``act()`` between the sync's first scan and its first apply."""
    from daemon.sync import apply as apply_mod

    real = apply_mod.apply_plan
    done: list[bool] = []

    async def racing(actions, sides, **kw):
        if not done:
            done.append(True)
            act()
        return await real(actions, sides, **kw)

    monkeypatch.setattr("daemon.sync.engine.apply_plan", racing)


def conflict_copies(root: Path) -> dict[str, bytes]:
    return {p: (root / p).read_bytes() for p in os.listdir(root) if ".conflict-" in p}


# -- point 3: a same-size rewrite with its old mtime put back -------------------------------------


def test_a_local_same_size_rewrite_with_its_mtime_put_back_lands(project, monkeypatch) -> None:
    tmp, local, remote = project
    monkeypatch.setattr("daemon.sync.scan.RACY_NS", 0)  # the digest is cached at once
    write(local / "k.py", "x = 1\n", mtime=time.time() - 3600)
    assert sync(tmp)[0] == 0
    assert sync(tmp)[1]["hashed"]["local"] == 0  # cached: the cache is what is under test
    rewrite_in_place(local / "k.py", b"x = 2\n")
    code, report = sync(tmp)
    assert code == 0, report
    assert (remote / "k.py").read_bytes() == b"x = 2\n"


def test_a_host_same_size_rewrite_before_apply_is_not_clobbered(project, monkeypatch) -> None:
    """The host's file changes (same size, old mtime) after its scan, before a push over it:
    the agent must not trust the mtime; the host's edit is kept."""
    tmp, local, remote = project
    write(local / "a.txt", "base\n", mtime=time.time() - 3600)
    assert sync(tmp)[0] == 0
    write(local / "a.txt", "local edit\n")
    before_first_apply(monkeypatch, lambda: rewrite_in_place(remote / "a.txt", b"HOST\n"))
    code, report = sync(tmp)
    assert code == 0, report
    kept = [(remote / "a.txt").read_bytes(), *conflict_copies(remote).values()]
    assert b"HOST\n" in kept and b"local edit\n" in kept


def test_a_local_same_size_rewrite_before_apply_is_not_clobbered(project, monkeypatch) -> None:
    """The same on this side: a host edit pulled over a local file rewritten meanwhile."""
    tmp, local, remote = project
    write(local / "a.txt", "base\n", mtime=time.time() - 3600)
    assert sync(tmp)[0] == 0
    write(remote / "a.txt", "host edit\n")
    before_first_apply(monkeypatch, lambda: rewrite_in_place(local / "a.txt", b"MINE\n"))
    code, report = sync(tmp)
    assert code == 0, report
    kept = [(local / "a.txt").read_bytes(), *conflict_copies(local).values()]
    assert b"MINE\n" in kept and b"host edit\n" in kept


def test_a_file_written_just_before_the_scan_is_not_cached(project) -> None:
    """Racy: an entry recorded within a timestamp tick of the file's change could miss a later
    same-tick rewrite, so a fresh file's digest is not kept (it is hashed again next time)."""
    from daemon.sync.state import StateStore, pair_key

    tmp, local, _remote = project
    write(local / "fresh.txt", "now", mtime=time.time() - 3600)  # old mtime, ctime now
    assert sync(tmp)[0] == 0
    with StateStore() as store:
        assert "fresh.txt" not in store.load_digests(pair_key(tmp / "tether.toml", "code"))
