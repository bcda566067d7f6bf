"""Running one job to its result: limits, executor lookup, deadline, retries, classification."""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import gevent

from jobworker.application.deadlines import DeadlineWatch
from jobworker.application.job_limits import DEFAULT_LIMITS, JobLimits
from jobworker.application.registry import ExecutorRegistry
from jobworker.application.retry import RetryPolicy
from jobworker.domain.errors import InvalidPayload, JobFailed, RetryableJobError, UnknownJobType
from jobworker.domain.model import Job, JobResult, JobStatus
from jobworker.domain.ports import Executor, JobObserver

logger = logging.getLogger(__name__)

# Reasons are for people reading Core; an executor quoting a whole response body in its
# exception must not make the result too big to send.
_MAX_ERROR_CHARS = 8192


class _JobDeadline(BaseException):
    """The job's own deadline. A BaseException, like gevent.Timeout, so that an
    executor's ``except Exception`` cannot swallow it and run on past its limit."""


@dataclass(slots=True)
class JobRun:
    """A job between ``JobRunner.begin`` and its result: its executor, its deadline
    (monotonic seconds) and the attempts made so far."""

    job: Job
    executor: Executor
    timeout_s: float
    deadline: float
    started_ms: int
    attempt: int = 0
    last_error: str = ""
    # Admission's (application/admission.py): the gates of its targets, those it holds,
    # and whether its last attempt found its target down.
    gates: list[Any] | None = None
    held: list[Any] = field(default_factory=list)
    # None: no verdict (the job's own deadline cut the call short).
    target_down: bool | None = False


class JobRunner:
    """Turns a job into exactly one ``JobResult``, whatever the executor does.

    The deadline, ``min(job.timeout_ms, max_job_timeout_s)``, bounds the whole job,
    retries and their backoff included: it is the job's hard limit, and it really
    interrupts a cooperative executor (``DeadlineWatch``). A job over ``limits`` ends REJECTED
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
        self._deadlines = DeadlineWatch(_JobDeadline)

    def timeout_s(self, job: Job) -> float:
        if job.timeout_ms > 0:
            return min(job.timeout_ms / 1000, self._max_timeout_s)
        return self._max_timeout_s

    def run(self, job: Job) -> JobResult:
        """The job's result, its attempts run here one after another (backoff slept
        here too). The engine runs ``begin`` and ``attempt`` itself, so that a job
        waiting for its next attempt holds no pool slot."""
        started = self.begin(job)
        while isinstance(started, JobRun):
            outcome = self.attempt(started)
            if isinstance(outcome, JobResult):
                return outcome
            gevent.sleep(outcome)
        return started

    def begin(self, job: Job) -> JobRun | JobResult:
        """The job's run, its deadline counting from now; or its REJECTED result when
        it is over the limits or of a type no executor serves."""
        started_ms = _now_ms()
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
        return JobRun(job, executor, timeout_s, time.monotonic() + timeout_s, started_ms)

    def attempt(self, run: JobRun) -> JobResult | float:
        """Run the next attempt: the job's result, or seconds to wait before the next
        one (within the job's deadline: a run woken at its deadline ends TIMED_OUT)."""
        job = run.job
        remaining_s = run.deadline - time.monotonic()
        if remaining_s <= 0:
            return self.timed_out(run)
        status, output, error = JobStatus.FAILED, "", ""
        run.attempt += 1
        run.target_down = False
        self._observer.job_started(job, run.attempt)
        watch = self._deadlines.start(run.deadline)
        try:
            try:
                returned = run.executor.execute(job)
            finally:
                self._deadlines.end(watch)
            output = self._checked_output(returned)
            status = JobStatus.SUCCEEDED
        except _JobDeadline:
            run.target_down = None
            return self.timed_out(run)
        except RetryableJobError as retryable:
            run.target_down = retryable.target_down
            run.last_error = str(retryable) or type(retryable).__name__
            if not self._retry.should_retry(run.attempt):
                error = f"gave up after {run.attempt} attempts: {run.last_error}"
            else:
                delay_s = self._retry.delay_s(run.attempt)
                if retryable.retry_after_s is not None:
                    # The target said when: never sooner (a jittered step may be later).
                    delay_s = max(delay_s, retryable.retry_after_s)
                delay_s = min(delay_s, max(0.0, run.deadline - time.monotonic()))
                self._observer.job_retrying(job, run.attempt, run.last_error, delay_s)
                return delay_s
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
        return self._result(
            job, status, output, error[:_MAX_ERROR_CHARS], run.attempt, run.started_ms
        )

    def timed_out(self, run: JobRun, waiting_for: str | None = None) -> JobResult:
        """``run`` ended TIMED_OUT at its deadline (``waiting_for``: what held it back)."""
        error = f"timed out after {run.timeout_s:g}s (attempt {run.attempt})"
        if waiting_for:
            error = (
                f"timed out after {run.timeout_s:g}s waiting for {waiting_for}"
                f" (attempt {run.attempt + 1} never started)"
            )
        if run.last_error:
            error += f"; last error: {run.last_error}"
        return self._result(
            run.job, JobStatus.TIMED_OUT, "", error[:_MAX_ERROR_CHARS], run.attempt, run.started_ms
        )

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
