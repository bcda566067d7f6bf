"""Errors with a meaning for the worker: each one decides how a job ends."""

from __future__ import annotations


class JobWorkerError(Exception):
    """Base of every error the worker raises on purpose."""


class InvalidPayload(JobWorkerError):  # noqa: N818 - reads as the verdict it is
    """The job's payload cannot be run; the job ends REJECTED with this message."""


class UnknownJobType(JobWorkerError):  # noqa: N818
    """No executor is registered for the job's type; the job ends REJECTED."""

    def __init__(self, job_type: str) -> None:
        super().__init__(f"unknown job type {job_type!r}: no executor is registered for it")
        self.job_type = job_type


class RetryableJobError(JobWorkerError):
    """A transient failure (5xx, connection reset…): the engine retries with backoff.

    ``retry_after_s``: the target said when to come back (HTTP ``Retry-After``); the
    next attempt waits at least that long, within the job's deadline. ``target_down``:
    the target failed the call (no connection, a timeout, a 5xx), which its circuit
    breaker counts; "not now" answers (429) do not.
    """

    def __init__(
        self, message: str = "", retry_after_s: float | None = None, *, target_down: bool = False
    ) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s
        self.target_down = target_down


class JobFailed(JobWorkerError):  # noqa: N818
    """A final failure the executor explains; the job ends FAILED with this message."""


class DuplicateExecutor(JobWorkerError):  # noqa: N818
    """Two executors were registered for one job type."""


class ResultNotDelivered(JobWorkerError):  # noqa: N818
    """The sink gave up on a result: the job stays not done and is redelivered later."""


class ResultRefused(ResultNotDelivered):
    """The sink answered that it will not take this result: a final verdict, not an outage.

    ``code`` and ``details`` are the sink's own words (for Core: the gRPC status code
    name and its details). Offering the same result again is not expected to help.
    """

    def __init__(self, message: str, code: str, details: str) -> None:
        super().__init__(message)
        self.code = code
        self.details = details


class BatchesUnsupported(ResultNotDelivered):
    """The sink takes results one at a time only (a Core without ``ReportResults``)."""


class ResultTooLarge(ResultNotDelivered):
    """The result is larger than the sink can ever take; ``size`` and ``limit`` in bytes."""

    def __init__(self, message: str, size: int, limit: int) -> None:
        super().__init__(message)
        self.size = size
        self.limit = limit


class SourceFailed(JobWorkerError):  # noqa: N818
    """The job source cannot go on (authentication refused, invalid group settings…).

    Raised from ``JobSource.fetch`` only for errors that retrying cannot fix; the engine
    stops and the worker exits with this message. Transient errors are not this.
    """


class AccessRefused(JobWorkerError):  # noqa: N818 - reads as the verdict it is
    """A service refused what the settings ask (credentials, a SASL mechanism, a
    certificate, a permission): retrying cannot fix it. The message names what to change.
    """


class ConfigurationError(JobWorkerError):
    """A setting is missing or malformed; ``variable`` names it."""

    def __init__(self, variable: str, problem: str) -> None:
        super().__init__(f"{variable}: {problem}")
        self.variable = variable
        self.problem = problem
