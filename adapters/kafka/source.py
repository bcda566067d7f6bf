"""KafkaJobSource: jobs from a Kafka topic, at least once, committed only when done.

Threads: ``fetch``, ``close`` and the commits run on the engine's fetch greenlet;
``ack`` on any greenlet; the rebalance listener and the dead-letter callbacks on
kafka-python's I/O thread (a greenlet once gevent has patched the process). They share
the bookkeeping under one lock that is never held across I/O.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import gevent
import structlog
from google.protobuf.message import DecodeError
from kafka import KafkaConsumer, TopicPartition
from kafka.consumer.subscription_state import AsyncConsumerRebalanceListener
from kafka.errors import KafkaError
from kafka.structs import OffsetAndMetadata

from adapters.codec import job_from_task
from adapters.kafka.dlq import DeadLetterWriter
from adapters.kafka.settings import KafkaClientSettings
from adapters.proto.jobworker.v1 import jobworker_pb2 as pb
from application.delivery import DeliveryTracker
from domain.model import Job

log = structlog.get_logger(__name__)


@dataclass(frozen=True, slots=True)
class KafkaReceipt:
    """Where a job came from. ``epoch`` tells one assignment of the partition from the next."""

    topic: str
    partition: int
    offset: int
    epoch: int


@dataclass(frozen=True, slots=True)
class _DeadLetter:
    record: Any
    reason: str
    epoch: int
    not_before: float


def decode_task(record: Any) -> pb.JobTask | str:
    """The record's JobTask, or why there is no job in it (the dead-letter reason)."""
    if record.value is None:
        return "record has no value"
    try:
        task = pb.JobTask.FromString(record.value)
    except DecodeError as error:
        return f"value is not a JobTask: {error}"
    if not task.id.strip():
        return "JobTask has no id"
    return task


class KafkaJobSource:
    """The JobSource port over a Kafka consumer group (see ``domain.ports.JobSource``).

    A partition's committed offset never passes a job that is not done (acked, or its
    record written to the dead-letter topic). At most ``max_in_flight_per_partition``
    jobs per partition are out at once; a full partition is paused until it drains.
    Done offsets are committed every ``commit_interval_s`` or ``commit_every`` acks,
    when partitions are revoked, and on ``close``.
    """

    def __init__(
        self,
        settings: KafkaClientSettings,
        topic: str,
        group_id: str,
        *,
        dlq_topic: str | None = None,
        worker_id: str = "",
        max_in_flight_per_partition: int = 1000,
        commit_interval_s: float = 5.0,
        commit_every: int = 100,
        dead_letter_retry_s: float = 1.0,
        close_timeout_s: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if max_in_flight_per_partition < 1:
            raise ValueError("max_in_flight_per_partition must be at least 1")
        self.topic = topic
        self._window = max_in_flight_per_partition
        self._commit_interval_s = commit_interval_s
        self._commit_every = commit_every
        self._dead_letter_retry_s = dead_letter_retry_s
        self._close_timeout_s = close_timeout_s
        self._clock = clock
        self._lock = threading.Lock()
        self._tracker = DeliveryTracker()
        self._epochs: dict[TopicPartition, int] = {}
        self._held: set[TopicPartition] = set()
        self._epoch_counter = itertools.count(1)
        self._next_offsets: dict[TopicPartition, int] = {}
        self._dead_letters_to_retry: list[_DeadLetter] = []
        self._acks_since_commit = 0
        self._committed: dict[TopicPartition, int] = {}
        self.counters = {"offset_commits": 0, "dlq_records": 0}
        self._last_commit = clock()
        self._no_room = False
        self._closed = False
        self._dead_letter_writer = DeadLetterWriter(
            settings, dlq_topic or f"{topic}.dlq", worker_id
        )
        self._consumer = KafkaConsumer(
            **settings.consumer_kwargs(),
            group_id=group_id,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
        )
        self._consumer.subscribe([topic], listener=_RebalanceListener(self))

    # -- the JobSource port -------------------------------------------------------------

    def fetch(self, max_jobs: int, timeout_s: float) -> Sequence[Job]:
        if self._closed:
            gevent.sleep(timeout_s)
            return []
        self._retry_dead_letters()
        self._no_room = max_jobs <= 0
        if self._no_room:
            self._pause(self._owned())
            # Polling while everything is paused is what keeps us in the group.
            self._rewind(self._poll(timeout_s, max_records=1))
            jobs: list[Job] = []
        else:
            self._pause_full_partitions()
            jobs = self._take(self._poll(timeout_s, max_records=max_jobs))
        self._maybe_commit()
        gevent.sleep(0)
        return jobs

    def ack(self, job: Job) -> None:
        receipt = job.receipt
        if not isinstance(receipt, KafkaReceipt):
            log.warning("ack for a job this source did not deliver", job_id=job.id)
            return
        self._mark_done(
            TopicPartition(receipt.topic, receipt.partition), receipt.offset, receipt.epoch
        )

    def exhausted(self) -> bool:
        return False

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            # Dead letters in flight are done once written: let them land first.
            self._dead_letter_writer.flush(self._close_timeout_s)
        except KafkaError as error:
            log.warning("dead letters not confirmed before close", error=str(error))
        self._commit()
        try:
            # Revokes the partitions: the listener commits acks that came since.
            self._consumer.close(autocommit=False, timeout_ms=int(self._close_timeout_s * 1000))
        except KafkaError as error:
            log.warning("kafka consumer did not close cleanly", error=str(error))
        self._dead_letter_writer.close(self._close_timeout_s)

    # -- for metrics and readiness ------------------------------------------------------

    def assigned(self) -> list[TopicPartition]:
        """The partitions this worker owns now."""
        return sorted(self._owned())

    def group_generation(self) -> int:
        """The consumer group generation this worker is in (-1 before it joined)."""
        return int(self._consumer.group_metadata().generation_id)

    def lag(self) -> dict[TopicPartition, int]:
        """Records per owned partition past this worker's last committed offset.

        This is the lag ``kafka-consumer-groups --describe`` shows: it reaches zero only
        once every record was taken, finished, reported and committed.
        """
        lags = {}
        assignment = self._consumer.assignment()
        for tp in self._owned():
            highwater = self._consumer.highwater(tp) if tp in assignment else None
            position = self._committed.get(tp, self._next_offsets.get(tp))
            if highwater is not None and position is not None:
                lags[tp] = max(0, highwater - position)
        return lags

    # -- polling ------------------------------------------------------------------------

    def _poll(self, timeout_s: float, max_records: int) -> dict[TopicPartition, list[Any]]:
        try:
            records: dict[TopicPartition, list[Any]] = self._consumer.poll(
                timeout_ms=max(0, int(timeout_s * 1000)), max_records=max_records
            )
        except KafkaError as error:
            log.warning("kafka poll failed", error=str(error), error_type=type(error).__name__)
            gevent.sleep(min(timeout_s, 1.0))
            return {}
        return records

    def _take(self, batches: dict[TopicPartition, list[Any]]) -> list[Job]:
        jobs = []
        for tp, records in batches.items():
            with self._lock:
                epoch = self._epochs.get(tp)
                room = 0 if epoch is None else self._window - self._tracker.in_flight(tp)
                taken = records[: max(0, room)]
                for record in taken:
                    self._tracker.started(tp, record.offset)
                if taken:
                    self._next_offsets[tp] = taken[-1].offset + 1
            if len(taken) < len(records):
                # Over the window: read these again once the partition has drained.
                self._seek(tp, records[len(taken)].offset)
            for record in taken:
                job = self._job_or_dead_letter(record, epoch or 0)
                if job is not None:
                    jobs.append(job)
        return jobs

    def _job_or_dead_letter(self, record: Any, epoch: int) -> Job | None:
        task = decode_task(record)
        if isinstance(task, str):
            self._write_dead_letter(_DeadLetter(record, task, epoch, 0.0))
            return None
        if record.key is not None and record.key != task.id.encode():
            log.warning(
                "record key differs from the job id; using the job id",
                job_id=task.id,
                key=record.key.decode("utf-8", "replace"),
                partition=record.partition,
                offset=record.offset,
            )
        receipt = KafkaReceipt(record.topic, record.partition, record.offset, epoch)
        return job_from_task(task, receipt)

    def _rewind(self, batches: dict[TopicPartition, list[Any]]) -> None:
        # Records that arrive while there is no room (a partition assigned during the
        # poll) are read again later rather than dropped.
        for tp, records in batches.items():
            if records:
                self._seek(tp, records[0].offset)

    def _seek(self, tp: TopicPartition, offset: int) -> None:
        try:
            self._consumer.seek(tp, offset)
        except (KafkaError, AssertionError) as error:
            log.warning("seek failed", partition=tp.partition, offset=offset, error=str(error))

    # -- pausing ------------------------------------------------------------------------

    def _pause_full_partitions(self) -> None:
        owned = self._owned()
        with self._lock:
            full = {tp for tp in owned if self._tracker.in_flight(tp) >= self._window}
        paused = set(self._consumer.paused())
        self._pause(full - paused)
        self._resume((owned - full) & paused)

    def _pause(self, partitions: Iterable[TopicPartition]) -> None:
        assignment = self._consumer.assignment()
        wanted = [tp for tp in partitions if tp in assignment]
        if wanted:
            self._consumer.pause(*wanted)

    def _resume(self, partitions: Iterable[TopicPartition]) -> None:
        assignment = self._consumer.assignment()
        wanted = [tp for tp in partitions if tp in assignment]
        if wanted:
            self._consumer.resume(*wanted)

    # -- done and committed -------------------------------------------------------------

    def _owned(self) -> set[TopicPartition]:
        with self._lock:
            return set(self._epochs) - self._held

    def _mark_done(self, tp: TopicPartition, offset: int, epoch: int) -> None:
        with self._lock:
            if self._epochs.get(tp) != epoch:
                return  # the partition went to another worker, which redoes the job
            if self._tracker.done(tp, offset):
                self._acks_since_commit += 1

    def _maybe_commit(self) -> None:
        due = self._clock() - self._last_commit >= self._commit_interval_s
        if due or self._acks_since_commit >= self._commit_every:
            self._commit()

    def _commit(self) -> None:
        with self._lock:
            offsets = self._committable(set(self._epochs) - self._held)
            self._acks_since_commit = 0
            self._last_commit = self._clock()
        if not offsets:
            return
        try:
            self._consumer.commit(offsets, timeout_ms=int(self._close_timeout_s * 1000))
        except KafkaError as error:
            # Nothing is lost: these offsets are committed later or redelivered.
            log.warning("offset commit failed", error=str(error), offsets=_printable(offsets))
            return
        self._record_commit(offsets)

    def _committable(self, partitions: Iterable[TopicPartition]) -> dict[TopicPartition, Any]:
        offsets = {}
        for tp in partitions:
            position = self._tracker.committable(tp)
            if position is not None:
                offsets[tp] = OffsetAndMetadata(position, "", -1)
        return offsets

    # -- rebalance (called on kafka-python's I/O thread) ---------------------------------
    #
    # The consumer uses the default eager assignors: a rebalance first revokes every
    # partition, then assigns the new set, and kafka-python keeps the fetch position of
    # a partition that comes back. So a revoked partition is only *held* (its ledger and
    # epoch kept, acks still counted) until the assignment: if it comes back, its
    # bookkeeping still matches the consumer's position; if not, it is forgotten.

    async def _commit_revoked(self, partitions: Iterable[TopicPartition]) -> None:
        with self._lock:
            revoked = [tp for tp in partitions if tp in self._epochs]
            self._held.update(revoked)
            offsets = self._committable(revoked)
        if revoked:
            log.info("partitions revoked", partitions=_printable(revoked))
        if not offsets:
            return
        try:
            # A blocking commit() here would raise: this runs on the I/O loop. Awaiting
            # the async commit keeps heartbeats going and still finishes before the
            # group moves on, so the next owner starts after our last done job.
            await self._consumer.commit_async(offsets)
        except Exception as error:
            log.warning("commit on revoke failed", error=str(error), offsets=_printable(offsets))
            return
        self._record_commit(offsets)

    def _record_commit(self, offsets: Mapping[TopicPartition, OffsetAndMetadata]) -> None:
        with self._lock:
            self.counters["offset_commits"] += 1
            for tp, committed in offsets.items():
                self._tracker.mark_committed(tp, committed.offset)
                self._committed[tp] = committed.offset

    def _adopt(self, partitions: Iterable[TopicPartition]) -> None:
        assigned = set(partitions)
        with self._lock:
            self._forget(self._held - assigned)
            self._held.clear()
            for tp in assigned:
                if tp not in self._epochs:
                    self._epochs[tp] = next(self._epoch_counter)
        if assigned:
            log.info("partitions assigned", partitions=_printable(assigned))
        if self._no_room:
            self._pause(assigned)

    def _lose(self, partitions: Iterable[TopicPartition]) -> None:
        # The group moved on without us: committing would fail, positions are reset.
        with self._lock:
            self._forget(partitions)
        log.warning("partitions lost (group membership expired)", partitions=_printable(partitions))

    def _forget(self, partitions: Iterable[TopicPartition]) -> None:
        for tp in list(partitions):
            self._tracker.forget(tp)
            self._epochs.pop(tp, None)
            self._held.discard(tp)
            self._next_offsets.pop(tp, None)
            self._committed.pop(tp, None)

    # -- dead letters -------------------------------------------------------------------

    def _write_dead_letter(self, letter: _DeadLetter) -> None:
        tp = TopicPartition(letter.record.topic, letter.record.partition)
        offset = letter.record.offset
        log.warning(
            "poison record: writing it to the dead-letter topic",
            reason=letter.reason,
            dead_letter_topic=self._dead_letter_writer.topic,
            topic=tp.topic,
            partition=tp.partition,
            offset=offset,
        )

        def written() -> None:
            self.counters["dlq_records"] += 1
            self._mark_done(tp, offset, letter.epoch)

        def failed(error: BaseException) -> None:
            log.warning("dead letter not written; will retry", error=str(error), offset=offset)
            retry_at = self._clock() + self._dead_letter_retry_s
            with self._lock:
                self._dead_letters_to_retry.append(
                    _DeadLetter(letter.record, letter.reason, letter.epoch, retry_at)
                )

        try:
            self._dead_letter_writer.write(letter.record, letter.reason, written, failed)
        except Exception as error:
            failed(error)

    def _retry_dead_letters(self) -> None:
        now = self._clock()
        with self._lock:
            ready = [d for d in self._dead_letters_to_retry if d.not_before <= now]
            self._dead_letters_to_retry = [
                d for d in self._dead_letters_to_retry if d.not_before > now
            ]
            owned = dict(self._epochs)
        for letter in ready:
            tp = TopicPartition(letter.record.topic, letter.record.partition)
            if owned.get(tp) == letter.epoch:
                self._write_dead_letter(letter)


class _RebalanceListener(AsyncConsumerRebalanceListener):  # type: ignore[misc]
    """Hands rebalance events to the source. Async on purpose: see _commit_revoked."""

    def __init__(self, source: KafkaJobSource) -> None:
        self._source = source

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        await self._source._commit_revoked(revoked)

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        self._source._adopt(assigned)

    async def on_partitions_lost(self, lost: set[TopicPartition]) -> None:
        self._source._lose(lost)


def _printable(partitions: Iterable[Any]) -> list[str]:
    return sorted(f"{tp.topic}[{tp.partition}]" for tp in partitions)
