"""The results dead-letter topic: results Core refused for good, kept for an operator."""

from __future__ import annotations

import structlog
from kafka import KafkaProducer
from kafka.errors import KafkaError

from jobworker.adapters.codec import result_to_proto
from jobworker.adapters.kafka.quirks import pace_unready_sends
from jobworker.adapters.kafka.records import KafkaReceipt
from jobworker.adapters.kafka.refusals import write_refusal_hint
from jobworker.adapters.kafka.settings import KafkaClientSettings
from jobworker.domain.errors import ResultNotDelivered, ResultRefused
from jobworker.domain.model import Job, JobResult

log = structlog.get_logger(__name__)

# Below the default max.message.bytes of a topic (1 MB) and a producer's request size,
# headers included: a larger result is kept without its output, and a header says so.
MAX_VALUE_BYTES = 900_000
# How long a store may wait for the broker; it runs off the result senders.
STORE_TIMEOUT_S = 10.0
MAX_BLOCK_MS = 5_000


def refused_result_headers(
    job: Job, refusal: ResultRefused, worker_id: str
) -> list[tuple[str, bytes]]:
    """Why Core refused the result, and where its job came from."""
    headers = [
        ("x-dlq-reason", str(refusal).encode()),
        ("x-dlq-core-code", refusal.code.encode()),
        ("x-dlq-core-details", refusal.details.encode()),
        ("x-dlq-job-id", job.id.encode()),
        ("x-dlq-worker", worker_id.encode()),
    ]
    receipt = job.receipt
    if isinstance(receipt, KafkaReceipt):
        headers += [
            ("x-dlq-source-topic", receipt.topic.encode()),
            ("x-dlq-source-partition", str(receipt.partition).encode()),
            ("x-dlq-source-offset", str(receipt.offset).encode()),
        ]
    return headers


class KafkaRefusedResultStore:
    """The ``RefusedResultStore`` port over a Kafka topic.

    Each refused result is one record: key the job id, value the serialized
    ``JobResult`` (the wire contract's message), headers from ``refused_result_headers``.
    ``store`` returns once the broker acknowledged the record (all in-sync replicas),
    else raises ``ResultNotDelivered``: the job then stays not done. A producer that hit
    an error retrying cannot fix is replaced before the next store.
    """

    def __init__(
        self,
        settings: KafkaClientSettings,
        topic: str,
        worker_id: str,
        *,
        timeout_s: float = STORE_TIMEOUT_S,
    ) -> None:
        self.topic = topic
        self._settings = settings
        self._worker_id = worker_id
        self._timeout_s = timeout_s
        self._producer: KafkaProducer | None = None

    def store(self, job: Job, result: JobResult, refusal: ResultRefused) -> None:
        value = result_to_proto(result).SerializeToString()
        headers = refused_result_headers(job, refusal, self._worker_id)
        if len(value) > MAX_VALUE_BYTES:
            headers.append(("x-dlq-output-dropped-bytes", str(len(result.output)).encode()))
            value = result_to_proto(result._replace(output="")).SerializeToString()
        try:
            producer = self._open()
            future = producer.send(self.topic, key=job.id.encode(), value=value, headers=headers)
            future.get(timeout=self._timeout_s)
        except KafkaError as error:
            if not getattr(error, "retriable", False):
                self._discard_producer()
            fix = write_refusal_hint(error, self.topic, "KAFKA_RESULTS_DLQ_TOPIC")
            raise ResultNotDelivered(
                f"cannot write the refused result of job {job.id!r} to {self.topic!r}"
                f" (KAFKA_RESULTS_DLQ_TOPIC): {type(error).__name__}: {error}"
                + (f" — {fix}" if fix else "")
            ) from error

    def close(self) -> None:
        self._discard_producer(timeout_s=self._timeout_s)

    def _open(self) -> KafkaProducer:
        if self._producer is None:
            self._producer = KafkaProducer(
                **self._settings.producer_kwargs(),
                acks="all",
                max_block_ms=MAX_BLOCK_MS,
                # As the dead-letter producer (dlq.py): a refusal names this topic.
                enable_idempotence=False,
            )
            pace_unready_sends(self._producer)
        return self._producer

    def _discard_producer(self, timeout_s: float = 0.0) -> None:
        producer, self._producer = self._producer, None
        if producer is None:
            return
        try:
            producer.close(timeout=timeout_s)
        except KafkaError as error:
            log.warning("results dead-letter producer did not close cleanly", error=str(error))
