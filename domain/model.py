"""Jobs and their results, as the worker sees them (independent of any wire format)."""

from __future__ import annotations

import enum
from collections.abc import Hashable, Mapping
from types import MappingProxyType
from typing import NamedTuple


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


# Most jobs carry no trace context and no metadata: they share empty, read-only mappings.
NO_TRACE_HEADERS: Mapping[str, str] = MappingProxyType({})
NO_METADATA: Mapping[str, str] = MappingProxyType({})


# Job and JobResult are NamedTuples, not frozen dataclasses: both are made for every job,
# and a frozen dataclass's __init__ sets each field through object.__setattr__, at more
# than twice a tuple's cost (docs/benchmarks.md, "Costs quoted by the code"). They are
# as immutable; ``_replace`` makes a changed copy. Being tuples, they compare equal to a
# tuple of the same values.


class Job(NamedTuple):
    """One unit of work taken from a source.

    ``receipt`` is the source's own token for the delivery (for Kafka: topic,
    partition, offset); the engine hands it back through ``JobSource.ack`` and never
    looks inside. Two deliveries of the same job id carry different receipts.
    ``trace_headers`` are the W3C trace context the producer sent with the job
    (``traceparent``, ``tracestate``), as found; tracing, when on, continues that trace.
    ``metadata`` is never changed in place: the default is one shared, read-only mapping.
    """

    id: str
    type: str
    payload: str = ""
    timeout_ms: int = 0
    metadata: Mapping[str, str] = NO_METADATA
    created_at_unix_ms: int = 0
    receipt: Hashable = None
    trace_headers: Mapping[str, str] = NO_TRACE_HEADERS


class JobResult(NamedTuple):
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
    metadata: Mapping[str, str] = NO_METADATA

    @property
    def duration_ms(self) -> int:
        return max(0, self.finished_at_unix_ms - self.started_at_unix_ms)
