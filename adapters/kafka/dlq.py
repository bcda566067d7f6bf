"""The dead-letter topic: where records go that carry no job to run or reject, and
record batches the consumer cannot decode."""

from __future__ import annotations

import threading
import time
import weakref
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import structlog
from kafka import KafkaProducer
from kafka.errors import KafkaError

from jobworker.adapters.kafka.quirks import UnreadableBatch, pace_unready_sends
from jobworker.adapters.kafka.refusals import write_refusal_hint
from jobworker.adapters.kafka.settings import KafkaClientSettings

log = structlog.get_logger(__name__)

REASON_HEADER = "x-dlq-reason"
# How long a send may wait for the dead-letter topic's metadata. It runs on the fetch
# greenlet: a missing or forbidden topic must cost a second, not ten.
MAX_BLOCK_MS = 1_000
# Says what the value of a dead letter for an unreadable batch holds: the batch as the
# broker sent it (Kafka's record-batch format, still compressed), or nothing.
VALUE_FORMAT_HEADER = "x-dlq-value-format"
# A batch larger than this goes without its bytes: with the headers it must stay under
# the producer's max_request_size (1 MiB) and the topic's max.message.bytes (~1 MiB).
MAX_BATCH_BYTES = 1_000_000


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


def unreadable_batch_message(
    batch: UnreadableBatch, worker_id: str
) -> tuple[bytes, list[tuple[str, bytes]]]:
    """The value and headers of the dead letter for ``batch``.

    The headers name the source topic, partition, first and last offset and the error;
    the value is the raw batch when there is one and it fits (else empty, and
    ``x-dlq-value-format`` says ``none``), so an operator can decode and replay it.
    """
    headers = [
        (REASON_HEADER, batch.error.encode()),
        ("x-dlq-source-topic", batch.topic.encode()),
        ("x-dlq-source-partition", str(batch.partition).encode()),
        ("x-dlq-source-offset", str(batch.first_offset).encode()),
        ("x-dlq-source-last-offset", str(batch.last_offset).encode()),
        ("x-dlq-worker", worker_id.encode()),
    ]
    raw = batch.raw
    if raw is not None and len(raw) <= MAX_BATCH_BYTES:
        return raw, [*headers, (VALUE_FORMAT_HEADER, b"record-batch")]
    if raw is not None:
        headers.append(("x-dlq-batch-bytes", str(len(raw)).encode()))
    return b"", [*headers, (VALUE_FORMAT_HEADER, b"none")]


def fitted_dead_letter(
    key: bytes | None, value: bytes | None, headers: list[tuple[str, bytes]]
) -> tuple[bytes | None, bytes | None, list[tuple[str, bytes]]]:
    """The dead letter, made to fit ``MAX_BATCH_BYTES`` if it is larger.

    A record the broker took (up to its ~1 MiB limit) plus our headers can be too large
    to write back: that is no passing error, and retrying it would hold its partition
    for good. So what does not fit is left out, largest first, and a header says how
    big it was; the source headers still say where the record is, to read it there.
    """

    def size() -> int:
        return len(key or b"") + len(value or b"") + sum(len(n) + len(v) for n, v in headers)

    if size() <= MAX_BATCH_BYTES:
        return key, value, headers
    headers = [(n, v) for n, v in headers if n != "x-dlq-source-key"]  # the key is kept
    if size() > MAX_BATCH_BYTES:
        headers.append(("x-dlq-value-dropped-bytes", str(len(value or b"")).encode()))
        value = b""
    if size() > MAX_BATCH_BYTES:
        # Then the record's own headers: ours say where it is, to read it there.
        headers = [(n, v) for n, v in headers if n.startswith("x-dlq-")]
        headers.append(("x-dlq-source-headers-dropped", b"true"))
    if size() > MAX_BATCH_BYTES and key is not None:
        headers.append(("x-dlq-key-dropped-bytes", str(len(key)).encode()))
        key = None
    return key, value, headers


class DeadLetterWriter:
    """Copies poison records, byte for byte, and unreadable batches to the dead-letter topic.

    The producer is made on the first poison record: most workers never need one.
    ``write`` blocks at most ``MAX_BLOCK_MS`` (for the topic's metadata), then returns;
    exactly one of its callbacks runs when the broker has acknowledged (all in-sync
    replicas) or refused the record, on the producer's I/O thread. ``api_version``
    (the consumer's) spares the producer its own blocking version probe.

    A producer that hit an error retrying cannot fix is replaced before the next write:
    kafka-python's idempotent producer treats some refusals (a record over the topic's
    ``max.message.bytes``) as fatal and fails every later send, so without a new one
    the topic would never be written again, even once fixed. Timeouts and other
    retriable errors keep the producer, which goes on connecting in the background.

    The producer is not idempotent. An idempotent one asks for a producer id first,
    which Kafka (2.8+) grants only to a principal that may WRITE to some topic: without
    the WRITE grant on this topic it was refused as a *cluster* operation
    (ClusterAuthorizationFailedError from InitProducerId), which sent operators after a
    cluster ACL they do not need. What idempotence would add, no duplicate when a
    retried send had in fact been written, the dead-letter topic does not need: its
    readers see a letter again anyway when a worker stops between writing it and
    committing past it, and the order of dead letters carries no meaning.
    """

    def __init__(
        self,
        settings: KafkaClientSettings,
        topic: str,
        worker_id: str,
        api_version: tuple[int, ...] | None = None,
    ) -> None:
        self.topic = topic
        self._settings = settings
        self._worker_id = worker_id
        self._api_version = api_version
        self._producer: KafkaProducer | None = None
        # Producers that hit a fatal error; marked from their own I/O threads.
        self._broken: weakref.WeakSet[KafkaProducer] = weakref.WeakSet()
        # Replaced producers that still had records in flight: closed with the writer.
        self._retired: list[KafkaProducer] = []

    def write(
        self,
        record: Any,
        reason: str,
        on_written: Callable[[], None],
        on_failed: Callable[[BaseException], None],
    ) -> None:
        """Send ``record`` with its original key and value, or an ``UnreadableBatch`` as
        ``unreadable_batch_message`` says; raises KafkaError if it cannot."""
        if self._producer is not None and self._producer in self._broken:
            self._retire(self._producer)
            self._producer = None
        if self._producer is None:
            extra = {} if self._api_version is None else {"api_version": self._api_version}
            self._producer = KafkaProducer(
                **self._settings.producer_kwargs(),
                **extra,
                acks="all",
                max_block_ms=MAX_BLOCK_MS,
                # See the class docstring: a refusal then names the topic, not the cluster.
                enable_idempotence=False,
            )
            pace_unready_sends(self._producer)
        key, value, headers = self._message(record, reason)
        producer = self._producer
        try:
            future = producer.send(self.topic, key=key, value=value, headers=headers)
        except Exception as error:
            self._note_failure(producer, error)
            raise
        future.add_callback(lambda _metadata: on_written())
        future.add_errback(self._failed_with(producer, on_failed))

    def _message(
        self, record: Any, reason: str
    ) -> tuple[bytes | None, bytes | None, list[tuple[str, bytes]]]:
        if isinstance(record, UnreadableBatch):
            value, headers = unreadable_batch_message(record, self._worker_id)
            return None, value, headers
        headers = dead_letter_headers(record, reason, self._worker_id)
        value = record.value
        if record.key is None and value is None:
            # A record needs a key or a value; say that the empty value stands for none.
            value = b""
            headers.append(("x-dlq-source-value-null", b"true"))
        return fitted_dead_letter(record.key, value, headers)

    def flush(self, timeout_s: float) -> None:
        """Wait up to ``timeout_s`` for sent records to be acknowledged."""
        deadline = time.monotonic() + timeout_s
        for producer in [*self._retired, self._producer]:
            if producer is not None:
                producer.flush(timeout=max(0.0, deadline - time.monotonic()))

    def close(self, timeout_s: float) -> None:
        """Flush and release the producers, waiting up to ``timeout_s``. Idempotent."""
        deadline = time.monotonic() + timeout_s
        producers, self._retired = [*self._retired, self._producer], []
        self._producer = None
        for producer in producers:
            if producer is None:
                continue
            try:
                producer.close(timeout=max(0.0, deadline - time.monotonic()))
            except KafkaError as error:
                log.warning("dead-letter producer did not close cleanly", error=str(error))

    def _note_failure(self, producer: KafkaProducer, error: BaseException) -> None:
        if not getattr(error, "retriable", False):
            self._broken.add(producer)

    def _failed_with(
        self, producer: KafkaProducer, on_failed: Callable[[BaseException], None]
    ) -> Callable[[BaseException], None]:
        def failed(error: BaseException) -> None:
            # On the producer's I/O thread, which cannot close its own producer.
            self._note_failure(producer, error)
            on_failed(error)

        return failed

    def _retire(self, producer: KafkaProducer) -> None:
        log.info("replacing the dead-letter producer after a fatal error")
        try:
            producer.close(timeout=0)
        except KafkaError:
            # Records still in flight: their callbacks run when they end; closed later.
            self._retired.append(producer)


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """A poison record, why it is poison, and the assignment it was read in.

    ``record`` is a kafka-python ConsumerRecord, or an ``UnreadableBatch`` (``reason``
    is then its error).
    """

    record: Any
    reason: str
    epoch: int


class DeadLetterOutbox:
    """Poison records waiting for the dead-letter topic, written a time slice at a time.

    ``drain`` runs on the fetch greenlet, so it stops after ``budget_s`` and never sends
    while the topic is refusing records: after a failure it waits ``first_backoff_s``,
    doubling up to ``max_backoff_s`` while failures go on, and logs once per wait. A
    letter is done only when ``on_written`` runs; until then its offset holds the commit.
    """

    def __init__(
        self,
        writer: DeadLetterWriter,
        on_written: Callable[[DeadLetter], None],
        *,
        budget_s: float = 1.0,
        first_backoff_s: float = 1.0,
        max_backoff_s: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._writer = writer
        self._on_written = on_written
        self._budget_s = budget_s
        self._first_backoff_s = first_backoff_s
        self._max_backoff_s = max_backoff_s
        self._clock = clock
        self._lock = threading.Lock()
        self._waiting: deque[DeadLetter] = deque()
        self._backoff_s = 0.0
        self._blocked_until = 0.0

    def put(self, letter: DeadLetter) -> None:
        """Queue ``letter``; the next ``drain`` writes it."""
        with self._lock:
            self._waiting.append(letter)

    def waiting(self) -> int:
        """How many letters are queued (not yet handed to the producer)."""
        with self._lock:
            return len(self._waiting)

    def drain(self, still_owned: Callable[[DeadLetter], bool]) -> None:
        """Hand queued letters to the producer for up to ``budget_s``.

        Letters ``still_owned`` rejects are dropped: their partition moved to another
        worker, which reads them again.
        """
        deadline = self._clock() + self._budget_s
        while self._clock() < deadline:
            with self._lock:
                if not self._waiting or self._clock() < self._blocked_until:
                    return
                letter = self._waiting.popleft()
            if still_owned(letter):
                self._send(letter)

    def _send(self, letter: DeadLetter) -> None:
        try:
            self._writer.write(
                letter.record,
                letter.reason,
                lambda: self._written(letter),
                lambda error: self._failed(letter, error),
            )
        except Exception as error:  # any failure is retried after a backoff
            self._failed(letter, error)

    def _written(self, letter: DeadLetter) -> None:
        with self._lock:
            recovered, self._backoff_s = self._backoff_s > 0, 0.0
        if recovered:
            log.info(
                "the dead-letter topic accepts records again",
                dead_letter_topic=self._writer.topic,
            )
        self._on_written(letter)

    def _failed(self, letter: DeadLetter, error: BaseException) -> None:
        now = self._clock()
        with self._lock:
            self._waiting.appendleft(letter)
            if now < self._blocked_until:
                return  # one of a batch that failed together: this wait is counted
            self._backoff_s = min(self._max_backoff_s, self._backoff_s * 2 or self._first_backoff_s)
            self._blocked_until = now + self._backoff_s
            waiting = len(self._waiting)
        fix = write_refusal_hint(error, self._writer.topic, "KAFKA_DLQ_TOPIC")
        log.warning(
            "cannot write to the dead-letter topic (KAFKA_DLQ_TOPIC); poison records"
            " hold their partitions' commits until it accepts them",
            dead_letter_topic=self._writer.topic,
            error=str(error),
            error_type=type(error).__name__,
            **({"fix": fix} if fix else {}),
            waiting=waiting,
            retry_in_s=self._backoff_s,
        )
