"""Jobs and their results, as the worker sees them (independent of any wire format)."""

from __future__ import annotations

import enum
from collections.abc import Hashable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType


class JobType(enum.StrEnum):
    """The job types this worker ships executors for.

    A job's ``type`` is a plain string so that plugin executors can serve types this
    enum does not know; the built-in names match the ``JobTask.Type`` wire enum.
    """

    HTTP = "HTTP"
    IMAGE_RESIZE = "IMAGE_RESIZE"
    SLEEP = "SLEEP"


class JobStatus(enum.StrEnum):
    """How a job ended. Every job a worker takes ends in exactly one of these."""

    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"
    TIMED_OUT = "TIMED_OUT"
    REJECTED = "REJECTED"


# Most jobs carry no trace context: they share one empty, read-only mapping.
NO_TRACE_HEADERS: Mapping[str, str] = MappingProxyType({})


def _no_trace_headers() -> Mapping[str, str]:
    return NO_TRACE_HEADERS


@dataclass(frozen=True, slots=True)
class Job:
    """One unit of work taken from a source.

    ``receipt`` is the source's own token for the delivery (for Kafka: topic,
    partition, offset); the engine hands it back through ``JobSource.ack`` and never
    looks inside. Two deliveries of the same job id carry different receipts.
    ``trace_headers`` are the W3C trace context the producer sent with the job
    (``traceparent``, ``tracestate``), as found; tracing, when on, continues that trace.
    """

    id: str
    type: str
    payload: str = ""
    timeout_ms: int = 0
    metadata: Mapping[str, str] = field(default_factory=dict)
    created_at_unix_ms: int = 0
    receipt: Hashable = None
    trace_headers: Mapping[str, str] = field(default_factory=_no_trace_headers)


@dataclass(frozen=True, slots=True)
class JobResult:
    """The outcome of one job, reported to Core. Mirrors the ``JobResult`` message."""

    job_id: str
    type: str
    status: JobStatus
    output: str = ""
    error: str = ""
    attempts: int = 0
    started_at_unix_ms: int = 0
    finished_at_unix_ms: int = 0
    worker_id: str = ""
    metadata: Mapping[str, str] = field(default_factory=dict)

    @property
    def duration_ms(self) -> int:
        return max(0, self.finished_at_unix_ms - self.started_at_unix_ms)
