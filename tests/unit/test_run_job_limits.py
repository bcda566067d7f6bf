"""Bad job input ends REJECTED with a short reason, never a traceback: the runner with
the real executors, whose payload parsing is what bad input used to crash."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from pathlib import Path

import pytest
from gevent.threadpool import ThreadPool

from jobworker.adapters.executors import (
    HttpExecutor,
    ImageResizeExecutor,
    SafeHttpClient,
    SleepExecutor,
)
from jobworker.application.job_limits import JobLimits
from jobworker.application.observers import ObserverGroup
from jobworker.application.registry import ExecutorRegistry
from jobworker.application.retry import RetryPolicy
from jobworker.application.run_job import JobRunner
from jobworker.domain.model import Job, JobResult, JobStatus

KB = 1000
SHORT_REASON_CHARS = 300


class CountingExecutor:
    def __init__(self) -> None:
        self.calls = 0

    def execute(self, job: Job) -> str:
        self.calls += 1
        return "ran"


@pytest.fixture
def registry(tmp_path: Path) -> Iterator[ExecutorRegistry]:
    (tmp_path / "in").mkdir()
    (tmp_path / "out").mkdir()
    threadpool = ThreadPool(1)
    client = SafeHttpClient(pool_size=1)
    yield ExecutorRegistry(
        {
            "SLEEP": SleepExecutor(),
            "HTTP": HttpExecutor(client),
            "IMAGE_RESIZE": ImageResizeExecutor(
                tmp_path / "in", tmp_path / "out", threadpool, http_client=client
            ),
        }
    )
    client.close()
    threadpool.kill()


def runner(registry: ExecutorRegistry, limits: JobLimits | None = None) -> JobRunner:
    return JobRunner(
        registry,
        worker_id="w-test",
        max_job_timeout_s=5.0,
        retry=RetryPolicy(max_attempts=1),
        observer=ObserverGroup(),
        **({"limits": limits} if limits else {}),
    )


def run(registry: ExecutorRegistry, job: Job, caplog: pytest.LogCaptureFixture) -> JobResult:
    with caplog.at_level(logging.DEBUG):
        result = runner(registry).run(job)
    tracebacks = [record.getMessage() for record in caplog.records if record.exc_info]
    assert tracebacks == [], "an input error was logged with a traceback"
    return result


def image_job(source: str) -> Job:
    payload = {"source": source, "width": 8, "height": 8, "destination": "a.png"}
    return Job(id="img", type="IMAGE_RESIZE", payload=json.dumps(payload))


def test_a_payload_nested_100000_deep_is_rejected_before_the_executor_runs(
    caplog: pytest.LogCaptureFixture,
) -> None:
    executor = CountingExecutor()
    deep = '{"ms": 1, "output": ' + "[" * 100_000 + "]" * 100_000 + "}"

    result = run(
        ExecutorRegistry({"SLEEP": executor}), Job(id="d", type="SLEEP", payload=deep), caplog
    )

    assert (result.status, result.error) == (
        JobStatus.REJECTED,
        "invalid payload: nested deeper than 64 levels",
    )
    assert executor.calls == 0
    assert result.attempts == 0


@pytest.mark.parametrize(
    ("job", "reason"),
    [
        (
            Job(id="i" * 900 * KB, type="SLEEP", payload='{"ms": 0}'),
            "job id is 900000 characters, above the 256 limit",
        ),
        (
            Job(id="p", type="SLEEP", payload=json.dumps({"ms": 0, "output": "x" * 1_100_000})),
            "invalid payload: 1100023 bytes, above the 1048576-byte limit",
        ),
        (
            Job(id="m", type="SLEEP", payload='{"ms": 0}', metadata={"blob": "x" * 900 * KB}),
            "metadata value of 'blob' is 900000 characters, above the 4096 limit",
        ),
        (
            Job(id="t", type="T" * 900 * KB),
            "job type is 900000 characters, above the 128 limit",
        ),
    ],
)
def test_oversized_jobs_are_rejected_with_a_short_reason(
    registry: ExecutorRegistry, job: Job, reason: str, caplog: pytest.LogCaptureFixture
) -> None:
    result = run(registry, job, caplog)
    assert (result.status, result.error) == (JobStatus.REJECTED, reason)


def test_metadata_over_the_limit_rejects_the_job_and_comes_back_capped(
    registry: ExecutorRegistry, caplog: pytest.LogCaptureFixture
) -> None:
    metadata = {"trace": "t-1", **{f"k{i}": "v" * 1000 for i in range(900)}}
    job = Job(id="m", type="SLEEP", payload='{"ms": 0}', metadata=metadata)

    result = run(registry, job, caplog)

    assert result.status is JobStatus.REJECTED
    assert result.error == "metadata is 903498 bytes, above the 16384-byte limit"
    assert list(result.metadata) == ["trace", *(f"k{i}" for i in range(16))]
    assert sum(len(k) + len(v) for k, v in result.metadata.items()) <= 16 * 1024


def test_a_900_kb_image_source_is_rejected_with_a_short_reason(
    registry: ExecutorRegistry, caplog: pytest.LogCaptureFixture
) -> None:
    result = run(registry, image_job("a" * 900 * KB), caplog)

    assert result.status is JobStatus.REJECTED
    assert result.error.startswith(
        "invalid payload: field 'source' is a path of 900000 bytes, above the 1024-byte limit"
    )
    assert len(result.error) < SHORT_REASON_CHARS


@pytest.mark.parametrize(
    ("source", "reason"),
    [
        ("a" * 300, "field 'source' has a file name of 300 bytes, above the 255-byte limit"),
        ("https://example.com/" + "a" * 900 * KB, "field 'source' URL is 900020 characters"),
        ("data:image/png;base64,é", "field 'source' data URL is not valid base64"),
        ("a\ud800.png", "field 'source' is not valid Unicode text"),
    ],
)
def test_sources_the_file_system_or_decoder_would_choke_on_are_rejected(
    registry: ExecutorRegistry, source: str, reason: str, caplog: pytest.LogCaptureFixture
) -> None:
    result = run(registry, image_job(source), caplog)

    assert result.status is JobStatus.REJECTED
    assert reason in result.error
    assert len(result.error) < SHORT_REASON_CHARS


def test_a_900_kb_url_is_rejected_with_a_short_reason(
    registry: ExecutorRegistry, caplog: pytest.LogCaptureFixture
) -> None:
    payload = json.dumps({"url": "https://example.com/" + "a" * 900 * KB})

    result = run(registry, Job(id="h", type="HTTP", payload=payload), caplog)

    assert result.status is JobStatus.REJECTED
    assert result.error.startswith(
        "invalid payload: field 'url' is 900020 characters, above the 8192 limit "
        "(starts 'https://example.com/aaaa"
    )
    assert len(result.error) < SHORT_REASON_CHARS


def test_limits_are_the_runners_to_choose(registry: ExecutorRegistry) -> None:
    job = Job(id="s", type="SLEEP", payload=json.dumps({"ms": 0, "output": "x" * 100}))

    result = runner(registry, JobLimits(max_payload_bytes=64)).run(job)

    assert (result.status, result.error) == (
        JobStatus.REJECTED,
        "invalid payload: 123 bytes, above the 64-byte limit",
    )


def test_a_normal_job_runs_and_keeps_its_metadata(
    registry: ExecutorRegistry, caplog: pytest.LogCaptureFixture
) -> None:
    payload = json.dumps({"ms": 0, "output": "[[[" * 100})
    job = Job(id="ok", type="SLEEP", payload=payload, metadata={"trace": "t-1"})

    result = run(registry, job, caplog)

    assert result.status is JobStatus.SUCCEEDED
    assert result.metadata == {"trace": "t-1"}


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        ({"url": "http://127.0.0.1/", "body": "\ud800"}, "field 'body' is not valid Unicode text"),
        (
            {"url": "http://127.0.0.1/", "headers": {"X-Price": "10 €"}},
            "header 'X-Price' has characters outside Latin-1",
        ),
        (
            {"url": "http://127.0.0.1/", "headers": {"X-Long": "v" * 900 * KB}},
            "header 'X-Long' is 900000 characters, above the 8192 limit",
        ),
        (
            {"url": "http://127.0.0.1/", "headers": {"h" * 900 * KB: "v"}},
            "is 900000 characters, above the 256 limit",
        ),
        ({"url": "https://" + "a" * 64 + ".example/"}, "is not a valid host name"),
        ({"url": "https://a..example/"}, "host 'a..example' is not a valid host name"),
    ],
)
def test_http_inputs_the_client_would_choke_on_are_rejected(
    registry: ExecutorRegistry,
    payload: dict[str, object],
    reason: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    result = run(registry, Job(id="h", type="HTTP", payload=json.dumps(payload)), caplog)

    assert result.status is JobStatus.REJECTED
    assert reason in result.error
    assert len(result.error) < SHORT_REASON_CHARS


class Returning:
    def __init__(self, output: str) -> None:
        self.output = output

    def execute(self, job: Job) -> str:
        return self.output


@pytest.mark.parametrize(
    ("output", "status", "error"),
    [
        ("é" * 500, JobStatus.SUCCEEDED, ""),
        ("é" * 501, JobStatus.FAILED, "output of 1002 bytes exceeds the 1000-byte limit"),
        ("\udc80" * 400, JobStatus.FAILED, "output of 1200 bytes exceeds the 1000-byte limit"),
        ("\udc80", JobStatus.FAILED, "output is not valid UTF-8 text: surrogates not allowed"),
    ],
)
def test_the_output_is_measured_in_utf8_bytes_and_its_size_named_first(
    output: str, status: JobStatus, error: str
) -> None:
    job_runner = JobRunner(
        ExecutorRegistry({"OUT": Returning(output)}),
        worker_id="w-test",
        max_job_timeout_s=5.0,
        retry=RetryPolicy(max_attempts=1),
        observer=ObserverGroup(),
        max_output_bytes=1000,
    )

    result = job_runner.run(Job(id="o", type="OUT"))

    assert (result.status, result.error) == (status, error)
    assert result.output == (output if status is JobStatus.SUCCEEDED else "")
