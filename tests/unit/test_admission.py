"""Admission on its own: limits per job type and host, and each host's circuit breaker.

Runs are built by hand; admit and release are synchronous, so only what a timer does
(a rate's next token, a breaker's cool-down, a deadline) is waited for, on a condition.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator

import gevent
import pytest

from jobworker.application.admission import Admission, BreakerState
from jobworker.application.run_job import JobRun
from jobworker.domain.limits import BreakerPolicy, TargetLimit
from jobworker.domain.model import Job
from tests.support.waiting import wait_until

NO_BREAKER = BreakerPolicy(failures=0)


class CallsHost:
    """An executor whose jobs call the host named by their payload (none if empty)."""

    def targets(self, job: Job) -> list[str]:
        return [f"host:{job.payload}"] if job.payload else []

    def execute(self, job: Job) -> str:
        return "ok"


class Seen:
    """What admission told the engine (wake, expire) and its listener."""

    def __init__(self) -> None:
        self.woken: list[str] = []
        self.expired: list[tuple[str, str]] = []
        self.parks: list[tuple[str, bool]] = []
        self.changes: list[tuple[str, BreakerState]] = []

    def wake(self, run: JobRun) -> None:
        self.woken.append(run.job.id)

    def expire(self, run: JobRun, why: str) -> None:
        self.expired.append((run.job.id, why))

    def parked(self, gate: str, by_breaker: bool) -> None:
        self.parks.append((gate, by_breaker))

    def breaker_changed(self, target: str, state: BreakerState) -> None:
        self.changes.append((target, state))


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


Build = Callable[..., Admission]


@pytest.fixture
def seen() -> Seen:
    return Seen()


@pytest.fixture
def build(seen: Seen) -> Iterator[Build]:
    """Builds an Admission reporting to ``seen``; each is closed (timers ended) after."""
    built: list[Admission] = []

    def make(
        *limits: TargetLimit,
        breaker: BreakerPolicy = NO_BREAKER,
        clock: Callable[[], float] = time.monotonic,
    ) -> Admission:
        admission = Admission(
            limits, breaker, wake=seen.wake, expire=seen.expire, listener=seen, clock=clock
        )
        built.append(admission)
        return admission

    yield make
    for admission in built:
        admission.close()


def job_run(
    job_id: str,
    job_type: str = "SLEEP",
    host: str = "",
    *,
    within_s: float = 60.0,
    clock: Callable[[], float] = time.monotonic,
) -> JobRun:
    job = Job(id=job_id, type=job_type, payload=host)
    return JobRun(job, CallsHost(), within_s, clock() + within_s, started_ms=0)


def call(admission: Admission, run: JobRun, *, target_down: bool) -> None:
    """One attempt of ``run`` that the admission lets through, ending as told."""
    assert admission.admit(run), f"{run.job.id} was not admitted"
    run.target_down = target_down
    admission.release(run)


# -- limits ----------------------------------------------------------------------------


def test_a_concurrency_limit_admits_n_and_parks_the_next_until_one_ends(
    build: Build, seen: Seen
) -> None:
    admission = build(TargetLimit("SLEEP", concurrent=2))
    a, b, c, d = (job_run(name) for name in "abcd")
    assert admission.admit(a)
    assert admission.admit(b)
    assert not admission.admit(c)
    assert (admission.parked(), seen.parks) == (1, [("SLEEP=2 concurrent", False)])

    admission.release(a)
    assert seen.woken == ["c"], "the room a freed went to the waiter"
    assert admission.parked() == 0
    assert admission.admit(c), "woken with its room taken for it"
    assert not admission.admit(d), "b and c hold both"


def test_waiters_are_woken_first_come_first_served(build: Build, seen: Seen) -> None:
    admission = build(TargetLimit("SLEEP", concurrent=1))
    a, b, c, d = (job_run(name) for name in "abcd")
    assert admission.admit(a)
    for waiter in (b, c, d):
        assert not admission.admit(waiter)
    for running in (a, b, c):
        admission.release(running)
        woken = seen.woken[-1]
        assert admission.admit({"b": b, "c": c, "d": d}[woken])
    assert seen.woken == ["b", "c", "d"]


def test_a_new_arrival_waits_behind_the_waiters_even_when_room_came(build: Build) -> None:
    # The token b waits for is there by the clock before b's timer has handed it over:
    # c, coming now, must not take it from under b.
    clock = FakeClock()
    admission = build(TargetLimit("SLEEP", per_second=10.0), clock=clock)
    a, b, c = (job_run(name, clock=clock) for name in "abc")
    assert admission.admit(a)
    assert not admission.admit(b)
    clock.now += 1.0
    assert not admission.admit(c)


def test_a_rate_limit_parks_when_tokens_run_out_and_a_timer_wakes_the_waiter(
    build: Build, seen: Seen
) -> None:
    # 20/s: a burst of two, then one token every 50 ms.
    admission = build(TargetLimit("SLEEP", per_second=20.0))
    a, b, c = (job_run(name) for name in "abc")
    assert admission.admit(a)
    assert admission.admit(b)
    assert not admission.admit(c)
    assert seen.parks == [("SLEEP=20/s", False)]
    wait_until(lambda: seen.woken == ["c"], message="no token came for c")
    assert admission.admit(c)
    assert admission.parked() == 0


def test_an_attempt_that_never_ran_gives_its_token_back(build: Build) -> None:
    admission = build(TargetLimit("SLEEP", per_second=1 / 60))  # one a minute
    a, b, c = (job_run(name) for name in "abc")
    assert admission.admit(a)
    admission.release(a, used=False)
    assert admission.admit(b), "a's token came back"
    admission.release(b)
    assert not admission.admit(c), "b's was spent"


def test_a_job_type_limit_and_a_host_limit_hold_together(build: Build, seen: Seen) -> None:
    admission = build(
        TargetLimit("SLEEP", concurrent=1), TargetLimit("host:h.example", concurrent=1)
    )
    other_host = job_run("x", "SLEEP", "k.example")
    other_type = job_run("y", "ECHO", "h.example")
    both = job_run("z", "SLEEP", "h.example")
    behind = job_run("w", "SLEEP", "k.example")
    assert admission.admit(other_host)  # holds SLEEP
    assert admission.admit(other_type)  # holds host:h.example
    assert not admission.admit(both)  # its host's gate comes first: it waits there

    admission.release(other_type)
    assert seen.woken == ["z"], "the host's room went to z"
    assert not admission.admit(both), "it still waits for SLEEP"
    assert both.held == [], "waiting for SLEEP, it gave its host's room back"
    assert not admission.admit(behind), "first come, first served: w waits behind z"
    assert seen.parks == [
        ("host:h.example=1 concurrent", False),
        ("SLEEP=1 concurrent", False),
        ("SLEEP=1 concurrent", False),
    ]

    admission.release(other_host)
    assert seen.woken == ["z", "z"]
    assert admission.admit(both), "the host's room is free again, and SLEEP's is z's"
    admission.release(both)
    assert seen.woken == ["z", "z", "w"]


def test_a_run_held_by_its_hosts_breaker_takes_nothing_other_hosts_need(
    build: Build, seen: Seen
) -> None:
    admission = build(TargetLimit("HTTP", concurrent=2), breaker=breaker(1))
    call(admission, job_run("down", "HTTP", "a.example"), target_down=True)  # opens a's
    for n in range(5):
        assert not admission.admit(job_run(f"a{n}", "HTTP", "a.example"))
    first, second = job_run("b0", "HTTP", "b.example"), job_run("b1", "HTTP", "b.example")
    assert admission.admit(first)
    assert admission.admit(second), "the jobs held by a's breaker hold no HTTP room"
    assert not admission.admit(job_run("b2", "HTTP", "b.example")), "HTTP=2 still holds"


def test_a_run_not_limited_by_anything_is_admitted_and_holds_nothing(build: Build) -> None:
    admission = build(TargetLimit("SLEEP", concurrent=1))
    run = job_run("e", "ECHO", "h.example")
    assert admission.admit(run)
    assert (run.gates, run.held) == ([], [])


# -- deadlines -------------------------------------------------------------------------


def test_a_parked_run_whose_deadline_passes_is_expired_naming_its_gate(
    build: Build, seen: Seen
) -> None:
    admission = build(TargetLimit("SLEEP", concurrent=1))
    assert admission.admit(job_run("a"))
    assert not admission.admit(job_run("b", within_s=0.02))
    wait_until(lambda: seen.expired, message="b's deadline never came")
    assert seen.expired == [("b", "limit SLEEP=1 concurrent")]
    assert admission.parked() == 0
    assert seen.woken == []


def test_an_expired_run_leaves_its_queue_and_the_next_waiter_gets_the_room(
    build: Build, seen: Seen
) -> None:
    admission = build(TargetLimit("SLEEP", concurrent=1))
    holder = job_run("x")
    short = job_run("z", within_s=0.03)
    behind = job_run("w")
    assert admission.admit(holder)
    assert not admission.admit(short)
    assert not admission.admit(behind)

    wait_until(lambda: seen.expired, message="z's deadline never came")
    assert seen.expired == [("z", "limit SLEEP=1 concurrent")]
    admission.release(holder)
    assert seen.woken == ["w"], "the room went to w, z having left the queue"


# -- the circuit breaker ---------------------------------------------------------------

HOST = "host:h.example"


def breaker(failures: int = 3, cooldown_s: float = 60.0) -> BreakerPolicy:
    return BreakerPolicy(failures=failures, cooldown_s=cooldown_s)


def test_failures_in_a_row_open_the_breaker_once(
    build: Build, seen: Seen, caplog: pytest.LogCaptureFixture
) -> None:
    admission = build(breaker=breaker(3))
    with caplog.at_level(logging.WARNING, logger="jobworker.application.admission"):
        for n in range(2):
            call(admission, job_run(f"f{n}", host="h.example"), target_down=True)
        assert seen.changes == []
        call(admission, job_run("f2", host="h.example"), target_down=True)
    assert seen.changes == [(HOST, BreakerState.OPEN)]
    assert [r.getMessage() for r in caplog.records] == [
        "circuit breaker open for host:h.example: 3 failed call(s) in a row:"
        " its jobs wait 60 s, holding no slot"
    ]
    assert not admission.admit(job_run("next", host="h.example"))
    assert seen.parks == [(HOST, True)]


def test_a_success_starts_the_count_again(build: Build, seen: Seen) -> None:
    admission = build(breaker=breaker(3))
    for n, down in enumerate([True, True, False, True, True]):
        call(admission, job_run(f"r{n}", host="h.example"), target_down=down)
    assert seen.changes == []
    call(admission, job_run("r5", host="h.example"), target_down=True)
    assert seen.changes == [(HOST, BreakerState.OPEN)]


def test_not_now_answers_do_not_count_against_a_host(build: Build, seen: Seen) -> None:
    # A 429 is a RetryableJobError with target_down False: the host asks to wait.
    admission = build(breaker=breaker(2))
    for n in range(10):
        call(admission, job_run(f"r{n}", host="h.example"), target_down=False)
    assert seen.changes == []
    assert admission.admit(job_run("next", host="h.example"))


def test_an_open_breaker_holds_its_host_only(build: Build, seen: Seen) -> None:
    admission = build(breaker=breaker(1))
    call(admission, job_run("f", host="h.example"), target_down=True)
    assert not admission.admit(job_run("same", host="h.example"))
    assert admission.admit(job_run("other", host="k.example"))
    assert admission.admit(job_run("none"))
    assert admission.parked() == 1


def open_with_waiters(admission: Admission, *names: str) -> list[JobRun]:
    call(admission, job_run("failing", host="h.example"), target_down=True)
    waiters = [job_run(name, host="h.example") for name in names]
    for waiter in waiters:
        assert not admission.admit(waiter)
    return waiters


def test_after_the_cool_down_one_probe_goes_and_its_success_wakes_every_waiter(
    build: Build, seen: Seen
) -> None:
    admission = build(breaker=breaker(1, cooldown_s=0.02))
    probe, second = open_with_waiters(admission, "p", "s")
    wait_until(lambda: seen.woken, message="no probe after the cool-down")
    assert seen.woken == ["p"]
    assert seen.changes == [(HOST, BreakerState.OPEN), (HOST, BreakerState.HALF_OPEN)]
    assert admission.parked() == 1, "one probe only: s still waits"
    assert not admission.admit(job_run("late", host="h.example"))

    call(admission, probe, target_down=False)
    assert seen.changes[-1] == (HOST, BreakerState.CLOSED)
    assert seen.woken == ["p", "s", "late"]
    assert admission.parked() == 0
    assert admission.admit(second)


def test_a_failed_probe_opens_the_breaker_again(build: Build, seen: Seen) -> None:
    admission = build(breaker=breaker(1, cooldown_s=0.02))
    probe, _ = open_with_waiters(admission, "p", "s")
    wait_until(lambda: seen.woken, message="no probe after the cool-down")
    call(admission, probe, target_down=True)
    assert [state for _, state in seen.changes] == [
        BreakerState.OPEN,
        BreakerState.HALF_OPEN,
        BreakerState.OPEN,
    ]
    assert seen.woken == ["p"]
    # Another cool-down, another probe: the next waiter.
    wait_until(lambda: len(seen.woken) == 2, message="no second probe")
    assert seen.woken == ["p", "s"]


def test_a_probe_that_never_ran_lets_the_next_waiter_probe(build: Build, seen: Seen) -> None:
    admission = build(breaker=breaker(1, cooldown_s=0.02))
    probe, _ = open_with_waiters(admission, "p", "s")
    wait_until(lambda: seen.woken, message="no probe after the cool-down")
    assert admission.admit(probe)
    admission.release(probe, used=False)
    assert seen.woken == ["p", "s"]
    assert seen.changes[-1] == (HOST, BreakerState.HALF_OPEN), "nothing decided yet"


def test_failures_of_calls_begun_before_it_opened_do_not_open_it_again(
    build: Build, seen: Seen, caplog: pytest.LogCaptureFixture
) -> None:
    admission = build(breaker=breaker(2))
    runs = [job_run(f"r{n}", host="h.example") for n in range(4)]
    for run in runs:
        assert admission.admit(run)
    with caplog.at_level(logging.WARNING, logger="jobworker.application.admission"):
        for run in runs:
            run.target_down = True
            admission.release(run)
    assert seen.changes == [(HOST, BreakerState.OPEN)]
    assert len(caplog.records) == 1


def test_only_the_probe_decides_calls_begun_before_it_opened_do_not_close_it(
    build: Build, seen: Seen
) -> None:
    admission = build(breaker=breaker(1, cooldown_s=0.02))
    early = job_run("early", host="h.example")
    assert admission.admit(early)  # a call under way when the breaker opens
    probe, _ = open_with_waiters(admission, "p", "s")
    early.target_down = False
    admission.release(early)
    assert seen.changes == [(HOST, BreakerState.OPEN)], "a call from before did not close it"

    wait_until(lambda: seen.woken, message="no probe after the cool-down")
    assert admission.admit(probe)
    probe.target_down = None  # the job's own deadline cut the probe short: no verdict
    admission.release(probe)
    assert seen.changes[-1] == (HOST, BreakerState.HALF_OPEN)
    assert seen.woken == ["p", "s"], "the next waiter probes instead"


# -- closing, and nothing to do --------------------------------------------------------


def test_close_gives_the_parked_runs_back_and_ends_every_timer(seen: Seen) -> None:
    admission = Admission(
        [TargetLimit("SLEEP", concurrent=1), TargetLimit("RATED", per_second=20.0)],
        breaker(1, cooldown_s=0.02),
        wake=seen.wake,
        expire=seen.expire,
        listener=seen,
    )
    assert admission.admit(job_run("a"))
    assert admission.admit(job_run("r0", "RATED"))
    assert admission.admit(job_run("r1", "RATED"))
    call(admission, job_run("f", "ECHO", "h.example"), target_down=True)
    parked = [
        job_run("b", within_s=0.02),
        job_run("r2", "RATED", within_s=0.02),
        job_run("h", "ECHO", "h.example", within_s=0.02),
    ]
    for run in parked:
        assert not admission.admit(run)

    given_back = admission.close()
    assert sorted(run.job.id for run in given_back) == ["b", "h", "r2"]
    assert admission.parked() == 0
    # A window for the rate's token, the cool-down and the deadlines to come: none may
    # act. A slow machine only makes the window longer, never the test red.
    gevent.sleep(0.1)
    assert (seen.woken, seen.expired) == ([], [])


def test_without_limits_or_a_breaker_admission_is_idle() -> None:
    def admission(limits: list[TargetLimit], failures: int) -> Admission:
        seen = Seen()
        return Admission(limits, BreakerPolicy(failures), wake=seen.wake, expire=seen.expire)

    assert admission([], 0).idle
    assert not admission([TargetLimit("SLEEP", concurrent=1)], 0).idle
    assert not admission([], 5).idle


def test_breaker_and_limit_states_are_read_only_copies_of_each_gate(build: Build) -> None:
    admission = build(TargetLimit("SLEEP", concurrent=1), breaker=breaker(2))
    call(admission, job_run("ok", host="up.example"), target_down=False)
    for n in range(2):
        call(admission, job_run(f"down{n}", host="h.example"), target_down=True)
    running, waiting = job_run("running"), job_run("waiting")
    assert admission.admit(running)
    assert not admission.admit(waiting)

    assert admission.breaker_states() == {"host:up.example": "closed", HOST: "open"}
    assert admission.limit_states() == {"SLEEP=1 concurrent": {"in_use": 1, "waiting": 1}}
    admission.breaker_states().clear()
    admission.limit_states()["SLEEP=1 concurrent"]["in_use"] = 9
    assert admission.breaker_states()[HOST] == "open"
    assert admission.limit_states()["SLEEP=1 concurrent"]["in_use"] == 1
