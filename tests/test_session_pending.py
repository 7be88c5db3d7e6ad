"""A session's pending work is one value, replaced on every change (never half updated): what
changed, what failed and when to retry it, when the next full cycle is due, and the user's
go-aheads. Tested here as the pure value it is."""

from __future__ import annotations

import dataclasses

import pytest
from tether.service.pair_session import (
    FULL_EVERY_S,
    RETRY_FIRST_S,
    RETRY_MAX_S,
    Cycle,
    Pending,
)

FIVE = {f"f{i}": "read-only folder" for i in range(5)}
NOW = 10_000.0
"""A monotonic time well past the first full cycle's due time."""


def ran_full(pending: Pending, at: float = NOW) -> Pending:
    """``pending`` after a full cycle that started at ``at`` and landed everything."""
    _cycle, rest = pending.take(at)
    return rest.full_ran(at).with_failed({})


def test_pending_counts_what_waits() -> None:
    failed = Pending().with_failed(FIVE)
    assert failed.count() == 0  # failed paths wait for their retry, not before
    assert failed.with_retry().count() == 5
    assert Pending(full=True).count() == 1
    assert Pending(local=frozenset({"a", "b"}), remote=frozenset({"x"})).count() == 3
    assert Pending(remote=frozenset({"x", "y"})).count() == 1  # the host's paths: one sync
    assert Pending().with_retry() == Pending()  # nothing failed: nothing to retry


def test_transitions_make_new_values_and_leave_the_old_one() -> None:
    start = Pending()
    local = start.with_local({"a"}).with_local(frozenset({"b"}))
    assert local.local == {"a", "b"} and not local.remote and not local.full
    remote = local.with_remote({"x"}, rescan=False)
    assert (remote.remote, remote.count(), remote.full) == ({"x"}, 3, False)
    rescan = remote.with_remote(set(), rescan=True)
    assert (rescan.remote, rescan.full) == ({"x"}, True)
    assert rescan.with_remote({"y"}, rescan=False).full  # a later batch keeps the rescan owed
    back = Pending().put_back({"a"}, {"x"})
    assert (back.local, back.remote, back.full) == ({"a"}, {"x"}, False)
    assert start == Pending() and local.remote == frozenset()
    with pytest.raises(dataclasses.FrozenInstanceError):
        start.full = True  # type: ignore[misc]
    with pytest.raises(TypeError):
        start.with_failed({"a": "why"}).failed["b"] = "why"  # type: ignore[index]


def test_a_cycle_takes_the_changes_and_leaves_what_is_still_owed() -> None:
    pending = ran_full(Pending(full=True)).with_local({"a"}).with_remote({"x"}, rescan=False)
    cycle, rest = pending.take(NOW + 1)
    assert cycle == Cycle(
        local=frozenset({"a"}),
        remote=frozenset({"x"}),
        full=False,
        accept_halt=False,
        accept_deletes=False,
    )
    assert rest.count() == 0 and not rest.local and not rest.remote
    assert rest.full_due_at == NOW + FULL_EVERY_S  # the safety net stays scheduled


def test_a_failed_path_is_retried_in_every_cycle_and_counted_once_due() -> None:
    pending = ran_full(Pending(full=True)).with_failed({"ro/k.py": "read-only folder"})
    assert pending.count() == 0 and pending.failed == {"ro/k.py": "read-only folder"}
    # Another change's cycle rescans the failed path too.
    cycle, rest = pending.with_local({"b.py"}).take(NOW + 1)
    assert cycle.local == {"b.py", "ro/k.py"} and not cycle.full
    # It stays failed (`tether status` shows it) until a cycle says otherwise, and idle.
    assert rest.failed == {"ro/k.py": "read-only folder"} and rest.count() == 0
    # Its retry comes due (the timer, or a flush): it waits, the next cycle takes it.
    due = rest.with_retry()
    assert due.count() == 1
    cycle, rest = due.take(NOW + 2)
    assert cycle.local == {"ro/k.py"} and rest.count() == 0 and not rest.retry
    # It landed: nothing is failing any more.
    assert rest.with_failed({}).failed == {}


def test_the_retry_backs_off_and_a_clean_cycle_resets_it() -> None:
    pending, waits = Pending(), []
    for _ in range(8):
        pending = pending.with_failed({"a": "full disk"})
        waits.append(pending.retry_in_s)
    assert waits == [RETRY_FIRST_S, 2, 4, 8, 16, RETRY_MAX_S, RETRY_MAX_S, RETRY_MAX_S]
    # A cycle that could not run (link down, halt) leaves the failures and their backoff.
    assert pending.put_back({"a"}).with_full().retry_in_s == RETRY_MAX_S
    clean = pending.with_failed({})
    assert (clean.failed, clean.retry_in_s) == ({}, None)
    assert clean.with_failed({"b": "why"}).retry_in_s == RETRY_FIRST_S


def test_a_full_cycle_is_due_every_full_every_s() -> None:
    first, _rest = Pending(full=True).take(NOW)
    assert first.full
    assert Pending().take(NOW)[0].full  # no full cycle ran yet: one is due
    after = ran_full(Pending(full=True), at=NOW)
    assert not after.take(NOW + FULL_EVERY_S)[0].full
    assert after.take(NOW + FULL_EVERY_S + 0.001)[0].full
    # Incremental cycles in between do not move the due time; only a full one does.
    _cycle, later = after.with_local({"a"}).take(NOW + 5)
    assert later.take(NOW + FULL_EVERY_S + 0.001)[0].full
    assert not ran_full(later, at=NOW + 300).take(NOW + FULL_EVERY_S + 1)[0].full
    # An asked-for full cycle runs whenever it is asked.
    assert after.with_full().take(NOW + 1)[0].full
    assert after.with_remote(set(), rescan=True).take(NOW + 1)[0].full


def test_a_cycle_that_could_not_run_puts_its_paths_back() -> None:
    pending = ran_full(Pending(full=True)).with_failed({"ro": "why"}).with_local({"a"})
    cycle, rest = pending.with_remote({"x"}, rescan=False).take(NOW + 1)
    rest = rest.with_local({"b"})  # saved while the cycle ran
    # The host went away mid-cycle: everything back, and a full cycle when it returns.
    down = rest.put_back(cycle.local, cycle.remote).with_full()
    assert (down.local, down.remote, down.full) == ({"a", "b", "ro"}, {"x"}, True)
    assert down.failed == {"ro": "why"} and down.count() == 4
    # It halted: the local paths wait for the resume (which scans in full anyway).
    halted = rest.put_back(cycle.local)
    assert (halted.local, halted.remote, halted.full) == ({"a", "b", "ro"}, frozenset(), False)
    assert halted.count() == 3


def test_accept_deletes_makes_one_full_cycle_that_accepts_them() -> None:
    pending = ran_full(Pending(full=True)).with_accept_deletes()
    assert pending.count() == 0  # a go-ahead, not work: the flush that asked for it wakes it
    cycle, rest = pending.take(NOW + 1)
    assert cycle.accept_deletes and cycle.full and not cycle.accept_halt
    assert not rest.accept_deletes and not rest.take(NOW + 2)[0].accept_deletes  # once only


def test_resume_makes_a_full_cycle_and_accepts_the_halt_only_of_a_halted_pair() -> None:
    paused = ran_full(Pending(full=True)).resumed(halted=False)
    cycle, _rest = paused.take(NOW + 1)
    assert cycle.full and not cycle.accept_halt and paused.count() == 1
    halted = ran_full(Pending(full=True)).resumed(halted=True)
    cycle, rest = halted.take(NOW + 1)
    assert cycle.full and cycle.accept_halt and not cycle.accept_deletes
    assert not rest.accept_halt and not rest.take(NOW + 2)[0].accept_halt  # once only
    # A second resume before the cycle ran keeps the first's go-ahead.
    assert halted.resumed(halted=False).take(NOW + 1)[0].accept_halt
