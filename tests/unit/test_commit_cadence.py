"""CommitCadence: when a source commits, on a clock or after so many acks."""

from __future__ import annotations

import pytest

from jobworker.adapters.kafka.offsets.commit_cadence import CommitCadence, Due


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_the_clock_comes_first_and_sends_done_work_without_waiting() -> None:
    clock = Clock()
    cadence = CommitCadence(interval_s=1.0, every=3, clock=clock)

    assert cadence.due() is Due.NONE
    clock.now += 1.0
    for _ in range(5):
        cadence.acked()
    assert cadence.due() is Due.SENT
    cadence.committing()
    assert cadence.due() is Due.NONE


def test_a_tick_with_nothing_acked_commits_and_waits() -> None:
    # A position moved by skipped records alone (transaction markers) still lands.
    clock = Clock()
    cadence = CommitCadence(interval_s=1.0, every=3, clock=clock)

    clock.now += 1.0
    assert cadence.due() is Due.WAITING


def test_enough_acks_between_ticks_send_one_without_waiting() -> None:
    clock = Clock()
    cadence = CommitCadence(interval_s=1.0, every=3, clock=clock)

    cadence.acked()
    cadence.acked()
    assert cadence.due() is Due.NONE
    cadence.acked()
    assert cadence.due() is Due.SENT
    cadence.committing()
    assert cadence.due() is Due.NONE


def test_one_commit_without_waiting_at_a_time_until_it_is_answered() -> None:
    cadence = CommitCadence(interval_s=1.0, every=1, clock=Clock())

    assert cadence.may_send()
    token = cadence.sending()
    assert not cadence.may_send()
    cadence.answered(object())  # an older commit's answer frees nothing
    assert not cadence.may_send()
    cadence.answered(token)
    assert cadence.may_send()


def test_a_commit_unanswered_past_the_patience_is_taken_as_lost() -> None:
    clock = Clock()
    cadence = CommitCadence(interval_s=1.0, every=1, clock=clock, patience_s=60.0)
    first = cadence.sending()

    clock.now += 59.9
    assert not cadence.may_send()
    clock.now += 0.1
    assert cadence.may_send()
    second = cadence.sending()
    cadence.answered(first)  # late: the newer commit is still the one in flight
    assert not cadence.may_send()
    cadence.answered(second)
    assert cadence.may_send()


def test_a_poll_waits_no_longer_than_the_clock_commit_once_work_is_done() -> None:
    now = [0.0]
    cadence = CommitCadence(0.2, 1000, clock=lambda: now[0])

    assert cadence.seconds_until_due() is None  # nothing done: no reason to wake
    now[0] = 0.05
    cadence.acked()
    assert cadence.seconds_until_due() == pytest.approx(0.15)
    now[0] = 0.5
    assert cadence.seconds_until_due() == 0.0
    cadence.committing()
    assert cadence.seconds_until_due() is None


def test_a_poll_is_not_cut_short_while_the_last_commit_is_unanswered() -> None:
    # A broker that does not answer must not turn the poll loop into a spin.
    clock = Clock()
    cadence = CommitCadence(interval_s=0.2, every=1000, clock=clock)
    cadence.acked()
    clock.now += 0.5
    cadence.sending()
    cadence.committing()
    cadence.acked()

    assert cadence.seconds_until_due() is None
