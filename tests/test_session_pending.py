"""A session's pending work is one value, replaced on every change (never half updated)."""

from __future__ import annotations

import dataclasses

import pytest
from tether.service.pair_session import Pending


def test_pending_counts_what_waits() -> None:
    assert Pending().count(failing=5) == 0  # failed paths wait for their retry, not before
    assert Pending(retry=True).count(failing=5) == 5
    assert Pending(full=True).count(0) == 1
    assert Pending(local=frozenset({"a", "b"}), remote_dirty=True).count(0) == 3


def test_transitions_make_new_values_and_leave_the_old_one() -> None:
    start = Pending()
    local = start.with_local({"a"}).with_local(frozenset({"b"}))
    assert local.local == {"a", "b"} and not local.remote_dirty and not local.full
    remote = local.with_remote({"x"}, rescan=False)
    assert (remote.remote, remote.remote_dirty, remote.full) == ({"x"}, True, False)
    rescan = remote.with_remote(set(), rescan=True)
    assert (rescan.remote, rescan.full) == ({"x"}, True)
    assert rescan.with_remote({"y"}, rescan=False).full  # a later batch keeps the rescan owed
    back = Pending().put_back({"a"}, {"x"})
    assert (back.local, back.remote, back.full) == ({"a"}, {"x"}, False)
    assert start == Pending() and local.remote == frozenset()
    with pytest.raises(dataclasses.FrozenInstanceError):
        start.full = True  # type: ignore[misc]
