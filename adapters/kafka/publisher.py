"""KafkaJobPublisher: puts jobs on the jobs topic (``jobworker submit``, tests, benchmarks)."""

from __future__ import annotations

from typing import Any

from kafka import KafkaProducer
from kafka.errors import (
    KafkaError,
    KafkaTimeoutError,
    TopicAuthorizationFailedError,
)

from jobworker.adapters.codec import task_from_job, type_number
from jobworker.adapters.kafka.bootstrap import open_client
from jobworker.adapters.kafka.quirks import pace_unready_sends
from jobworker.adapters.kafka.refusals import is_write_refusal
from jobworker.adapters.kafka.settings import KafkaClientSettings
from jobworker.adapters.proto.jobworker.v1 import jobworker_pb2 as pb
from jobworker.domain.errors import AccessRefused, ConfigurationError
from jobworker.domain.model import Job

UNSPECIFIED = "TYPE_UNSPECIFIED"
# How long to wait for the topic's metadata: a topic that is not there is not waited
# for as long as kafka-python would (60 s).
METADATA_WAIT_S = 10.0


class PublishFailed(Exception):  # noqa: N818 - reads as the verdict it is
    """Some jobs were not acknowledged by the broker; ``failed`` counts them."""

    def __init__(self, failed: int, first_error: BaseException) -> None:
        super().__init__(f"{failed} job(s) not published: {first_error}")
        self.failed = failed


class KafkaJobPublisher:
    """Writes jobs as records: key = job id (UTF-8), value = the serialized JobTask.

    ``publish`` only queues; ``flush`` waits until the broker has acknowledged every
    queued job (acks=all) and raises ``PublishFailed`` if any was refused.

    Made only once the topic is known to be there and writable as far as its metadata
    says: ``AccessRefused`` when the broker refuses the connection or the topic,
    ``ConfigurationError`` (KAFKA_TOPIC) when it has no such topic; both say what to
    change. A missing WRITE grant is found by ``flush``, as ``AccessRefused`` too.
    """

    def __init__(
        self, settings: KafkaClientSettings, topic: str, metadata_wait_s: float = METADATA_WAIT_S
    ) -> None:
        self.topic = topic
        self._producer = open_client(
            KafkaProducer,
            settings,
            **settings.producer_kwargs(),
            acks="all",
            max_block_ms=int(metadata_wait_s * 1000),
        )
        # A submit under way when the broker freezes waits instead of spinning a core.
        pace_unready_sends(self._producer)
        self._pending: list[Any] = []
        self._closed = False
        try:
            self._producer.partitions_for(topic)
        except KafkaError as error:
            self._producer.close(timeout=0)
            if isinstance(error, TopicAuthorizationFailedError):
                raise AccessRefused(_write_refused(topic, error)) from None
            if isinstance(error, KafkaTimeoutError):
                raise ConfigurationError(
                    "KAFKA_TOPIC",
                    f"Kafka has no topic {topic!r} (no metadata for it within"
                    f" {metadata_wait_s:g} s): create it, or check the name",
                ) from None
            raise

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
        if errors and is_write_refusal(errors[0]):
            raise AccessRefused(_write_refused(self.topic, errors[0]))
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


def _write_refused(topic: str, error: BaseException) -> str:
    # Without WRITE on any topic, this idempotent producer's first request
    # (InitProducerId) is refused as a cluster operation; WRITE on the topic ends it
    # (Kafka 2.8+; before, IDEMPOTENT_WRITE on the cluster did).
    refusal = type(error).__name__
    if refusal == "KafkaError":  # kafka-python's wrapping of that cluster refusal
        refusal = "ClusterAuthorizationFailedError for InitProducerId"
    return (
        f"Kafka refused writing to topic {topic!r}: {refusal} — grant the principal of"
        " KAFKA_SASL_USERNAME WRITE and DESCRIBE on KAFKA_TOPIC"
    )
