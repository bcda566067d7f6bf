"""The SLEEP executor: validation, failures on demand, cooperative sleeping."""

from __future__ import annotations

import json

import gevent
import pytest

from jobworker.adapters.executors.sleep import SleepExecutor
from jobworker.domain.errors import InvalidPayload, JobFailed, RetryableJobError
from jobworker.domain.model import Job


def sleep_job(payload: object, job_id: str = "job-1") -> Job:
    text = payload if isinstance(payload, str) else json.dumps(payload)
    return Job(id=job_id, type="SLEEP", payload=text)


def test_sleeps_and_echoes_the_output() -> None:
    output = SleepExecutor().execute(sleep_job({"ms": 1, "output": "hello"}))

    assert json.loads(output) == {"slept_ms": 1, "output": "hello"}


def test_output_defaults_to_empty_and_zero_ms_is_allowed() -> None:
    output = SleepExecutor().execute(sleep_job({"ms": 0}))

    assert json.loads(output) == {"slept_ms": 0, "output": ""}


def test_fail_true_ends_the_job_failed() -> None:
    with pytest.raises(JobFailed, match="asked to fail"):
        SleepExecutor().execute(sleep_job({"ms": 0, "fail": True}))


def test_retryable_failures_fail_the_first_attempts_of_each_job_then_succeed() -> None:
    executor = SleepExecutor()
    payload = {"ms": 0, "retryable_failures": 2, "output": "done"}

    for attempt in (1, 2):
        with pytest.raises(RetryableJobError, match=f"failure {attempt}"):
            executor.execute(sleep_job(payload))
    # Another job id has its own count.
    with pytest.raises(RetryableJobError):
        executor.execute(sleep_job(payload, job_id="job-2"))

    assert json.loads(executor.execute(sleep_job(payload)))["output"] == "done"


def test_attempt_counts_of_at_most_max_tracked_jobs_are_remembered() -> None:
    executor = SleepExecutor(max_tracked_jobs=2)
    payload = {"ms": 0, "retryable_failures": 1}
    for job_id in ("a", "b", "c"):
        with pytest.raises(RetryableJobError):
            executor.execute(sleep_job(payload, job_id=job_id))

    # "a" was forgotten, so it fails once more; "c" is remembered and succeeds.
    with pytest.raises(RetryableJobError):
        executor.execute(sleep_job(payload, job_id="a"))
    executor.execute(sleep_job(payload, job_id="c"))


def test_sleeps_cooperatively() -> None:
    executor = SleepExecutor()
    sleeper = gevent.spawn(executor.execute, sleep_job({"ms": 60_000}))

    # The hub runs this greenlet after the sleeper's start: mid-sleep if the sleep
    # yields, a minute later (the sleeper done) if it held the hub.
    gevent.spawn(lambda: None).join()

    assert not sleeper.dead, "another greenlet ran while the job slept"
    sleeper.kill()


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        ("not json", "payload is not valid JSON"),
        ("[1, 2]", "payload must be a JSON object, got an array"),
        ({}, "field 'ms' is required"),
        ({"ms": None}, "field 'ms' is required"),
        ({"ms": -1}, "field 'ms' must be between 0 and 3600000, got -1"),
        ({"ms": 3_600_001}, "field 'ms' must be between 0 and 3600000"),
        ({"ms": "10"}, "field 'ms' must be an integer, got a string"),
        ({"ms": True}, "field 'ms' must be an integer, got a boolean"),
        ({"ms": 1.5}, "field 'ms' must be an integer, got a number"),
        ({"ms": 1, "fail": "yes"}, "field 'fail' must be true or false, got a string"),
        ({"ms": 1, "output": 5}, "field 'output' must be a string, got a number"),
        ({"ms": 1, "retryable_failures": -1}, "field 'retryable_failures' must be between 0"),
        ({"ms": 1, "sleep": 5}, "unknown payload field(s) 'sleep'; known fields:"),
    ],
)
def test_invalid_payloads_are_rejected_naming_the_problem(payload: object, message: str) -> None:
    with pytest.raises(InvalidPayload) as raised:
        SleepExecutor().execute(sleep_job(payload))

    assert message in str(raised.value)


def test_whole_number_floats_are_accepted_as_integers() -> None:
    assert json.loads(SleepExecutor().execute(sleep_job({"ms": 1.0})))["slept_ms"] == 1


def test_the_cap_on_ms_is_configurable() -> None:
    with pytest.raises(InvalidPayload, match="between 0 and 100"):
        SleepExecutor(max_ms=100).execute(sleep_job({"ms": 101}))
