"""Jobs and their results, as the worker sees them (independent of any wire format)."""

from __future__ import annotations

import enum
from collections.abc import Hashable, Mapping
from dataclasses import dataclass, field


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


@dataclass(frozen=True, slots=True)
class Job:
    """One unit of work taken from a source.

    ``receipt`` is the source's own token for the delivery (for Kafka: topic,
    partition, offset); the engine hands it back through ``JobSource.ack`` and never
    looks inside. Two deliveries of the same job id carry different receipts.
    """

    id: str
    type: str
    payload: str = ""
    timeout_ms: int = 0
    metadata: Mapping[str, str] = field(default_factory=dict)
    created_at_unix_ms: int = 0
    receipt: Hashable = None


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
