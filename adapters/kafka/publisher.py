"""KafkaJobPublisher: puts jobs on the jobs topic (``jobworker submit``, tests, benchmarks)."""

from __future__ import annotations

from typing import Any

from kafka import KafkaProducer
from kafka.errors import KafkaError

from jobworker.adapters.codec import task_from_job, type_number
from jobworker.adapters.kafka.settings import KafkaClientSettings
from jobworker.adapters.proto.jobworker.v1 import jobworker_pb2 as pb
from jobworker.domain.model import Job

UNSPECIFIED = "TYPE_UNSPECIFIED"


class PublishFailed(Exception):  # noqa: N818 - reads as the verdict it is
    """Some jobs were not acknowledged by the broker; ``failed`` counts them."""

    def __init__(self, failed: int, first_error: BaseException) -> None:
        super().__init__(f"{failed} job(s) not published: {first_error}")
        self.failed = failed


class KafkaJobPublisher:
    """Writes jobs as records: key = job id (UTF-8), value = the serialized JobTask.

    ``publish`` only queues; ``flush`` waits until the broker has acknowledged every
    queued job (acks=all) and raises ``PublishFailed`` if any was refused.
    """

    def __init__(self, settings: KafkaClientSettings, topic: str) -> None:
        self.topic = topic
        self._producer = KafkaProducer(**settings.producer_kwargs(), acks="all")
        self._pending: list[Any] = []
        self._closed = False

    def publish(self, job: Job) -> None:
        if not job.id:
            raise ValueError("a job needs an id to be published")
        if type_number(job.type) == 0 and job.type != UNSPECIFIED:
            names = pb.JobTask.Type.keys()
            known = ", ".join(name for name in names if name != UNSPECIFIED)
            raise ValueError(
                f"job {job.id}: type {job.type!r} has no JobTask.Type value, so Kafka cannot "
                f"carry it (known: {known}; TYPE_<n> sends the raw number n)"
            )
        value = task_from_job(job).SerializeToString()
        self._pending.append(self._producer.send(self.topic, key=job.id.encode(), value=value))

    def flush(self, timeout_s: float | None = None) -> None:
        pending, self._pending = self._pending, []
        self._producer.flush(timeout=timeout_s)
        errors = [future.exception for future in pending if future.failed()]
        unfinished = sum(1 for future in pending if not future.is_done)
        if errors or unfinished:
            first = errors[0] if errors else KafkaError("not acknowledged in time")
            raise PublishFailed(len(errors) + unfinished, first)

    def close(self, timeout_s: float | None = None) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            self.flush(timeout_s)
        finally:
            self._producer.close(timeout=timeout_s)
