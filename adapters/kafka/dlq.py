"""The dead-letter topic: where records go that carry no job to run or reject."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from kafka import KafkaProducer

from adapters.kafka.settings import KafkaClientSettings

REASON_HEADER = "x-dlq-reason"


def dead_letter_headers(record: Any, reason: str, worker_id: str) -> list[tuple[str, bytes]]:
    """The record's own headers plus ours, saying why it is dead and where it came from."""
    ours = [
        (REASON_HEADER, reason.encode()),
        ("x-dlq-source-topic", record.topic.encode()),
        ("x-dlq-source-partition", str(record.partition).encode()),
        ("x-dlq-source-offset", str(record.offset).encode()),
        ("x-dlq-source-timestamp-ms", str(record.timestamp).encode()),
        ("x-dlq-worker", worker_id.encode()),
    ]
    if record.key is not None:
        ours.append(("x-dlq-source-key", bytes(record.key)))
    return [*(record.headers or ()), *ours]


class DeadLetterWriter:
    """Copies poison records, byte for byte, to the dead-letter topic.

    The producer is made on the first poison record: most workers never need one.
    ``write`` returns at once; exactly one of its callbacks runs when the broker has
    acknowledged (all in-sync replicas) or refused the record, on the producer's I/O
    thread.
    """

    def __init__(self, settings: KafkaClientSettings, topic: str, worker_id: str) -> None:
        self.topic = topic
        self._settings = settings
        self._worker_id = worker_id
        self._producer: KafkaProducer | None = None

    def write(
        self,
        record: Any,
        reason: str,
        on_written: Callable[[], None],
        on_failed: Callable[[BaseException], None],
    ) -> None:
        """Send ``record`` with its original key and value; raises KafkaError if it cannot."""
        if self._producer is None:
            self._producer = KafkaProducer(
                **self._settings.producer_kwargs(), acks="all", max_block_ms=10_000
            )
        headers = dead_letter_headers(record, reason, self._worker_id)
        value = record.value
        if record.key is None and value is None:
            # A record needs a key or a value; say that the empty value stands for none.
            value = b""
            headers.append(("x-dlq-source-value-null", b"true"))
        future = self._producer.send(self.topic, key=record.key, value=value, headers=headers)
        future.add_callback(lambda _metadata: on_written())
        future.add_errback(on_failed)

    def flush(self, timeout_s: float) -> None:
        """Wait up to ``timeout_s`` for sent records to be acknowledged."""
        if self._producer is not None:
            self._producer.flush(timeout=timeout_s)

    def close(self, timeout_s: float) -> None:
        """Flush and release the producer. Idempotent."""
        producer, self._producer = self._producer, None
        if producer is not None:
            producer.close(timeout=timeout_s)
