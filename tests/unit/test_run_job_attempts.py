"""JobRunner one attempt at a time: ``begin``, then ``attempt`` until a result, the
wait between attempts chosen from the backoff, the target's Retry-After and the time
left before the job's deadline."""

from __future__ import annotations

import random
import time

from jobworker.application.observers import ObserverGroup
from jobworker.application.registry import ExecutorRegistry
from jobworker.application.retry import RetryPolicy
from jobworker.application.run_job import JobRun, JobRunner
from jobworker.domain.errors import RetryableJobError
from jobworker.domain.model import Job, JobResult, JobStatus

# Jittered steps of at most 1 ms: far below any Retry-After these tests send.
TINY_BACKOFF = RetryPolicy(max_attempts=3, backoff_base_s=0.001, backoff_max_s=0.001)


class FixedBackoff(RetryPolicy):
    """A backoff step of exactly ``RetryPolicy.backoff_base_s``, no jitter."""

    def delay_s(self, attempt: int, rng: random.Random | None = None) -> float:
        return self.backoff_base_s


class AsksToComeBack:
    """Raises "busy" ``times`` times per job, with ``retry_after_s``; then succeeds."""

    def __init__(self, retry_after_s: float | None, times: int = 1) -> None:
        self.retry_after_s = retry_after_s
        self.times = times
        self.calls = 0

    def execute(self, job: Job) -> str:
        self.calls += 1
        if self.calls <= self.times:
            raise RetryableJobError("busy", retry_after_s=self.retry_after_s)
        return "ok"


class RetryingDelays:
    """Notes the delay of each ``job_retrying``: what the observers are told."""

    def __init__(self) -> None:
        self.delays: list[float] = []

    def job_received(self, job: Job) -> None:
        pass

    def job_started(self, job: Job, attempt: int) -> None:
        pass

    def job_retrying(self, job: Job, attempt: int, error: str, delay_s: float) -> None:
        self.delays.append(delay_s)

    def job_finished(self, job: Job, result: JobResult) -> None:
        pass

    def result_delivered(self, result: JobResult) -> None:
        pass


def runner(
    executor: AsksToComeBack,
    retry: RetryPolicy = TINY_BACKOFF,
    observer: RetryingDelays | None = None,
) -> JobRunner:
    return JobRunner(
        ExecutorRegistry({"BUSY": executor}),
        worker_id="w-test",
        max_job_timeout_s=300.0,
        retry=retry,
        observer=ObserverGroup([observer] if observer else []),
    )


def begun(job_runner: JobRunner, job: Job) -> JobRun:
    run = job_runner.begin(job)
    assert isinstance(run, JobRun), f"not begun: {run}"
    return run


def test_retry_after_makes_the_wait_at_least_that_long_when_the_backoff_is_shorter() -> None:
    observer = RetryingDelays()
    job_runner = runner(AsksToComeBack(retry_after_s=2.0), observer=observer)
    run = begun(job_runner, Job(id="r", type="BUSY"))

    delay = job_runner.attempt(run)

    assert delay == 2.0
    assert observer.delays == [2.0]
    assert (run.attempt, run.last_error) == (1, "busy")


def test_a_backoff_step_longer_than_retry_after_is_kept() -> None:
    job_runner = runner(AsksToComeBack(retry_after_s=2.0), FixedBackoff(backoff_base_s=7.0))
    run = begun(job_runner, Job(id="r", type="BUSY"))

    assert job_runner.attempt(run) == 7.0


def test_without_retry_after_the_wait_is_the_backoff_step() -> None:
    job_runner = runner(AsksToComeBack(retry_after_s=None))
    run = begun(job_runner, Job(id="r", type="BUSY"))

    delay = job_runner.attempt(run)

    assert isinstance(delay, float)
    assert 0.0 <= delay <= 0.001


def test_the_wait_is_capped_by_the_time_left_before_the_deadline() -> None:
    observer = RetryingDelays()
    job_runner = runner(AsksToComeBack(retry_after_s=3600.0), observer=observer)
    run = begun(job_runner, Job(id="r", type="BUSY", timeout_ms=60_000))

    delay = job_runner.attempt(run)

    assert isinstance(delay, float)
    assert 0.0 < delay <= 60.0, "not the hour asked for: only what is left of a minute"
    assert observer.delays == [delay]


def test_a_run_at_its_deadline_ends_timed_out_with_its_last_error_and_no_new_attempt() -> None:
    executor = AsksToComeBack(retry_after_s=3600.0)
    job_runner = runner(executor)
    run = begun(job_runner, Job(id="r", type="BUSY", timeout_ms=60_000))
    assert isinstance(job_runner.attempt(run), float)
    run.deadline = time.monotonic()  # woken at its deadline, as the capped wait ends

    result = job_runner.attempt(run)

    assert isinstance(result, JobResult)
    assert result.status is JobStatus.TIMED_OUT
    assert result.error == "timed out after 60s (attempt 1); last error: busy"
    assert result.attempts == 1
    assert executor.calls == 1, "no attempt once the deadline is reached"


def test_the_last_allowed_attempt_gives_up_whatever_retry_after_says() -> None:
    job_runner = runner(AsksToComeBack(retry_after_s=1.0, times=3))
    run = begun(job_runner, Job(id="r", type="BUSY"))
    assert isinstance(job_runner.attempt(run), float)
    assert isinstance(job_runner.attempt(run), float)

    result = job_runner.attempt(run)

    assert isinstance(result, JobResult)
    assert (result.status, result.error) == (JobStatus.FAILED, "gave up after 3 attempts: busy")


def test_begin_rejects_an_unknown_type_without_a_run() -> None:
    result = runner(AsksToComeBack(retry_after_s=None)).begin(Job(id="u", type="NOPE"))

    assert isinstance(result, JobResult)
    assert result.status is JobStatus.REJECTED
    assert result.attempts == 0


def test_run_goes_through_the_attempts_and_waits_to_the_end() -> None:
    observer = RetryingDelays()
    executor = AsksToComeBack(retry_after_s=0.005, times=2)

    result = runner(executor, observer=observer).run(Job(id="r", type="BUSY"))

    assert (result.status, result.output, result.attempts) == (JobStatus.SUCCEEDED, "ok", 3)
    assert executor.calls == 3
    assert observer.delays == [0.005, 0.005]


def test_run_ends_timed_out_at_the_deadline_rather_than_sleep_out_retry_after() -> None:
    executor = AsksToComeBack(retry_after_s=60.0, times=1000)
    job_runner = runner(executor, RetryPolicy(max_attempts=1000, backoff_base_s=0.0))

    result = job_runner.run(Job(id="r", type="BUSY", timeout_ms=50))

    assert result.status is JobStatus.TIMED_OUT
    assert result.error.endswith("; last error: busy")
    assert result.duration_ms < 30_000


def test_run_returns_the_rejection_begin_gives() -> None:
    result = runner(AsksToComeBack(retry_after_s=None)).run(Job(id="u", type="NOPE"))

    assert result.status is JobStatus.REJECTED
    assert "unknown job type 'NOPE'" in result.error
