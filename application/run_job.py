"""Running one job to its result: limits, executor lookup, deadline, retries, classification."""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping

import gevent

from jobworker.application.job_limits import DEFAULT_LIMITS, JobLimits
from jobworker.application.registry import ExecutorRegistry
from jobworker.application.retry import RetryPolicy
from jobworker.domain.errors import InvalidPayload, JobFailed, RetryableJobError, UnknownJobType
from jobworker.domain.model import Job, JobResult, JobStatus
from jobworker.domain.ports import JobObserver

logger = logging.getLogger(__name__)

# Reasons are for people reading Core; an executor quoting a whole response body in its
# exception must not make the result too big to send.
_MAX_ERROR_CHARS = 8192


class _JobDeadline(BaseException):
    """The job's own deadline. A BaseException, like gevent.Timeout itself, so that an
    executor's ``except Exception`` cannot swallow it and run on past its limit."""


class JobRunner:
    """Turns a job into exactly one ``JobResult``, whatever the executor does.

    The deadline, ``min(job.timeout_ms, max_job_timeout_s)``, bounds the whole job,
    retries and their backoff included: it is the job's hard limit, and gevent.Timeout
    really interrupts a cooperative executor at it. A job over ``limits`` ends REJECTED
    before any executor sees it, and only the capped metadata is copied into a result.
    """

    def __init__(
        self,
        registry: ExecutorRegistry,
        worker_id: str,
        max_job_timeout_s: float,
        retry: RetryPolicy,
        observer: JobObserver,
        max_output_bytes: int = 1_048_576,
        limits: JobLimits = DEFAULT_LIMITS,
    ) -> None:
        self._registry = registry
        self._worker_id = worker_id
        self._max_timeout_s = max_job_timeout_s
        self._max_output_bytes = max_output_bytes
        self._retry = retry
        self._observer = observer
        self._limits = limits

    def timeout_s(self, job: Job) -> float:
        if job.timeout_ms > 0:
            return min(job.timeout_ms / 1000, self._max_timeout_s)
        return self._max_timeout_s

    def run(self, job: Job) -> JobResult:
        started_ms = _now_ms()
        attempt = 0
        status, output, error = JobStatus.FAILED, "", ""
        violation = self._limits.violation(job)
        if violation is not None:
            # Only the metadata within the limits is copied into the result.
            metadata = self._limits.capped_metadata(job.metadata)
            return self._result(job, JobStatus.REJECTED, "", violation, 0, started_ms, metadata)
        try:
            executor = self._registry.get(job.type)
        except UnknownJobType as unknown:
            return self._result(job, JobStatus.REJECTED, "", str(unknown), 0, started_ms)
        timeout_s = self.timeout_s(job)
        last_error = ""
        try:
            with gevent.Timeout(timeout_s, _JobDeadline):
                while True:
                    attempt += 1
                    self._observer.job_started(job, attempt)
                    try:
                        output = self._checked_output(executor.execute(job))
                    except RetryableJobError as retryable:
                        last_error = str(retryable) or type(retryable).__name__
                        if not self._retry.should_retry(attempt):
                            error = f"gave up after {attempt} attempts: {last_error}"
                            break
                        delay = self._retry.delay_s(attempt)
                        self._observer.job_retrying(job, attempt, last_error, delay)
                        gevent.sleep(delay)
                    else:
                        status = JobStatus.SUCCEEDED
                        break
        except _JobDeadline:
            status = JobStatus.TIMED_OUT
            error = f"timed out after {timeout_s:g}s (attempt {attempt})"
            if last_error:
                error += f"; last error: {last_error}"
        except InvalidPayload as invalid:
            status, error = JobStatus.REJECTED, f"invalid payload: {invalid}"
        except JobFailed as failed:
            error = str(failed) or type(failed).__name__
        except Exception as unexpected:
            # An executor bug must cost one job, never the worker; the traceback goes to
            # the log, a one-line reason to Core.
            logger.exception("executor raised unexpectedly", extra={"job_id": job.id})
            error = f"{type(unexpected).__name__}: {unexpected}"
        # ``output`` is "" or what _checked_output let through: it fits the limit.
        return self._result(job, status, output, error[:_MAX_ERROR_CHARS], attempt, started_ms)

    def _checked_output(self, output: object) -> str:
        """The executor's output, if it is one Core can take; else a JobFailed."""
        if not isinstance(output, str):
            raise JobFailed(f"executor returned {type(output).__name__}, not a string")
        # One encoding tells both size and validity; the size is the first complaint.
        try:
            size, invalid = len(output.encode("utf-8")), None
        except UnicodeEncodeError as error:
            size, invalid = len(output.encode("utf-8", "surrogatepass")), error
        if size > self._max_output_bytes:
            raise JobFailed(
                f"output of {size} bytes exceeds the {self._max_output_bytes}-byte limit"
            )
        if invalid is not None:
            raise JobFailed(f"output is not valid UTF-8 text: {invalid.reason}") from None
        return output

    def _result(
        self,
        job: Job,
        status: JobStatus,
        output: str,
        error: str,
        attempts: int,
        started_ms: int,
        metadata: Mapping[str, str] | None = None,
    ) -> JobResult:
        return JobResult(
            job_id=job.id,
            type=job.type,
            status=status,
            output=output,
            error=error,
            attempts=attempts,
            started_at_unix_ms=started_ms,
            finished_at_unix_ms=_now_ms(),
            worker_id=self._worker_id,
            # A job that passed the limits check has metadata within them; no one
            # changes a job's metadata in place, so the result shares it.
            metadata=job.metadata if metadata is None else metadata,
        )


def _now_ms() -> int:
    return time.time_ns() // 1_000_000
