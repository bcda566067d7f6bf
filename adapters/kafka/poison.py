"""Records that hold no job, and record batches the consumer cannot decode.

A poison record (no value, not a JobTask, no job id) never crashes the source nor
blocks its partition: it is written to the dead-letter topic with headers saying why
and where it came from, and its offset is done once the dead letter is written. A
batch the consumer cannot decode (a codec it lacks, a CRC mismatch, corrupt bytes) is,
with ``UnreadableBatches.DEAD_LETTER``, written there too (its raw bytes) and skipped:
the partition reads on at once, and its commit passes the batch only once the dead
letter is written. With ``UnreadableBatches.FAIL`` the jobs read before it still run,
then the source stops (``stopped_by``), nothing committed past the batch.

Dead letters wait in a ``DeadLetterOutbox`` (``dlq.py``) while the topic refuses them.
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from typing import Any

import structlog
from kafka.errors import KafkaError

from jobworker.adapters.kafka.book import SharedBook
from jobworker.adapters.kafka.consumer import SourceConsumer, TopicPartition
from jobworker.adapters.kafka.dlq import DeadLetter, DeadLetterOutbox, DeadLetterWriter
from jobworker.adapters.kafka.modes import UnreadableBatches
from jobworker.adapters.kafka.quirks import UnreadableBatch
from jobworker.adapters.kafka.settings import KafkaClientSettings
from jobworker.domain.errors import SourceFailed

# The source's lines keep the logger name they had before it was split in pieces.
log = structlog.get_logger("jobworker.adapters.kafka.source")


class PoisonPolicy:
    """Dead-letters poison records and unreadable batches, or stops at a batch.

    ``done(tp, offset, epoch)`` is called (on the producer's I/O thread) for each offset
    whose dead letter is written. Writes take at most ``budget_s`` per ``drain``; while
    the topic refuses them, retries wait ``retry_s``, doubling up to ``max_backoff_s``.
    """

    def __init__(
        self,
        consumer: SourceConsumer,
        shared: SharedBook,
        done: Callable[[TopicPartition, int, int], None],
        settings: KafkaClientSettings,
        *,
        dlq_topic: str,
        worker_id: str,
        unreadable_batches: UnreadableBatches,
        retry_s: float,
        max_backoff_s: float,
        budget_s: float,
        clock: Callable[[], float],
    ) -> None:
        self._consumer = consumer
        self._shared = shared
        self._done = done
        self._fail_on_unreadable = unreadable_batches == UnreadableBatches.FAIL
        # Why the source stopped (UnreadableBatches.FAIL): raised by every fetch from the
        # first that returns no jobs (the jobs before the batch run first).
        self.stopped_by: SourceFailed | None = None
        self._writer = DeadLetterWriter(
            settings, dlq_topic, worker_id, api_version=consumer.api_version
        )
        self._outbox = DeadLetterOutbox(
            self._writer,
            self._written,
            budget_s=budget_s,
            first_backoff_s=retry_s,
            max_backoff_s=max_backoff_s,
            clock=clock,
        )

    def dead_letter(self, record: Any, reason: str, epoch: int) -> None:
        """``record`` holds no job (``reason``, from ``records.decode_task``): dead-letter it."""
        log.warning(
            "poison record: writing it to the dead-letter topic",
            reason=reason,
            dead_letter_topic=self._writer.topic,
            topic=record.topic,
            partition=record.partition,
            offset=record.offset,
        )
        self._outbox.put(DeadLetter(record, reason, epoch))

    def set_aside(
        self, batches: Collection[UnreadableBatch], read_again: Collection[TopicPartition]
    ) -> None:
        """Dead-letter and skip the batches the consumer could not decode, or stop.

        Batches of partitions no longer owned are left to the next owner; those of
        partitions in ``read_again`` (sought back to records before them) are met again
        when read up to.
        """
        for batch in batches:
            tp = TopicPartition(batch.topic, batch.partition)
            with self._shared as book:
                epoch = book.partitions.owned_epoch(tp)
                if epoch is None or tp in read_again:
                    continue
                book.stats = book.stats.plus(unreadable_batches=1)
            if self._fail_on_unreadable:
                self._stop_at(batch)
            else:
                self._skip(tp, batch, epoch)

    def drain(self) -> None:
        """Write what waits, within the budget; letters of partitions since revoked are
        dropped (the next owner meets their records again)."""
        self._outbox.drain(self._still_owned)

    def before_close(self, timeout_s: float) -> None:
        """Let dead letters in flight land: their offsets are done once written."""
        try:
            self._writer.flush(timeout_s)
        except KafkaError as error:
            log.warning("dead letters not confirmed before close", error=str(error))
        if waiting := self._outbox.waiting():
            log.warning(
                "poison records not written to the dead-letter topic before close; "
                "their partitions' commits stay before them and they are read again",
                dead_letters_waiting=waiting,
            )

    def close(self, timeout_s: float) -> None:
        self._writer.close(timeout_s)

    def _stop_at(self, batch: UnreadableBatch) -> None:
        log.error(
            "unreadable record batch: stopping (KAFKA_UNREADABLE_BATCHES=fail)",
            **_where(batch),
            error=batch.error,
        )
        self.stopped_by = self.stopped_by or SourceFailed(
            f"cannot read the record batch at {batch.topic}[{batch.partition}] offsets"
            f" {batch.first_offset}-{batch.last_offset}: {batch.error} — the worker stops"
            " with nothing committed past it (KAFKA_UNREADABLE_BATCHES=fail; dead-letter"
            " sets such batches aside)"
        )

    def _skip(self, tp: TopicPartition, batch: UnreadableBatch, epoch: int) -> None:
        log.error(
            "unreadable record batch: writing it to the dead-letter topic and skipping it",
            **_where(batch),
            error=batch.error,
            batch_bytes=None if batch.raw is None else len(batch.raw),
            dead_letter_topic=self._writer.topic,
        )
        with self._shared as book:
            # Both ends pending: the commit stays before the batch until its dead letter
            # is written, then moves past its last offset.
            book.partitions.unreadable(tp, batch.first_offset, batch.last_offset)
        self._outbox.put(DeadLetter(batch, batch.error, epoch))
        self._consumer.seek(tp, batch.last_offset + 1)

    def _written(self, letter: DeadLetter) -> None:
        # On the producer's I/O thread: the record is safe in the dead-letter topic.
        with self._shared as book:
            book.stats = book.stats.plus(dlq_records=1)
        tp = TopicPartition(letter.record.topic, letter.record.partition)
        if isinstance(letter.record, UnreadableBatch):
            self._done(tp, letter.record.first_offset, letter.epoch)
            self._done(tp, letter.record.last_offset, letter.epoch)
        else:
            self._done(tp, letter.record.offset, letter.epoch)

    def _still_owned(self, letter: DeadLetter) -> bool:
        tp = TopicPartition(letter.record.topic, letter.record.partition)
        with self._shared as book:
            return book.partitions.epoch(tp) == letter.epoch


def _where(batch: UnreadableBatch) -> dict[str, Any]:
    return {
        "topic": batch.topic,
        "partition": batch.partition,
        "first_offset": batch.first_offset,
        "last_offset": batch.last_offset,
    }
