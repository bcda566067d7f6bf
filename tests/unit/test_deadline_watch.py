from __future__ import annotations

import time

import gevent
import pytest

from jobworker.application.deadlines import DeadlineWatch


class Due(BaseException):
    pass


def watched_sleep(watch: DeadlineWatch, deadline_in_s: float, sleep_s: float) -> float | str:
    """Sleeps ``sleep_s`` under a watch; when thrown into, how long after it started."""
    started = time.monotonic()
    token = watch.start(started + deadline_in_s)
    try:
        gevent.sleep(sleep_s)
    except Due:
        return time.monotonic() - started
    finally:
        watch.end(token)
    return "finished"


def test_a_greenlet_past_its_deadline_is_thrown_into_at_it() -> None:
    watch = DeadlineWatch(Due)
    late = gevent.spawn(watched_sleep, watch, 0.05, 5)
    in_time = gevent.spawn(watched_sleep, watch, 5, 0.01)

    gevent.joinall([late, in_time], timeout=2)

    assert in_time.value == "finished"
    assert late.value == pytest.approx(0.05, abs=0.04)
    assert watch.watching() == 0


def test_an_earlier_deadline_noted_later_is_kept_and_the_later_one_still_holds() -> None:
    watch = DeadlineWatch(Due)
    long = gevent.spawn(watched_sleep, watch, 0.3, 5)
    gevent.sleep(0.01)  # the timer is set for the 0.3 s deadline first
    short = gevent.spawn(watched_sleep, watch, 0.05, 5)

    gevent.joinall([long, short], timeout=2)

    assert short.value == pytest.approx(0.05, abs=0.04)
    assert long.value == pytest.approx(0.3, abs=0.06)


def test_a_greenlet_on_its_next_watch_is_held_to_that_deadline_not_the_last() -> None:
    watch = DeadlineWatch(Due)

    def two_jobs() -> tuple[float | str, float | str]:
        first = watched_sleep(watch, 0.05, 0.01)  # ends in time; the timer stays set
        return first, watched_sleep(watch, 0.5, 0.1)

    slot = gevent.spawn(two_jobs)
    slot.join(timeout=2)

    assert slot.value == ("finished", "finished")


def test_many_greenlets_due_at_once_are_each_thrown_into() -> None:
    watch = DeadlineWatch(Due)
    slots = [gevent.spawn(watched_sleep, watch, 0.05, 5) for _ in range(50)]

    gevent.joinall(slots, timeout=2)

    assert all(isinstance(slot.value, float) for slot in slots)
    assert watch.watching() == 0
