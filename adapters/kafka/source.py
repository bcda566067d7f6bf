"""KafkaJobSource: jobs from a Kafka topic, at least once, committed only when done.

The source moves records between the consumer and the bookkeeping; each of its other
jobs is a piece beside it, found by its file name:

- ``consumer.py``: the only module that touches kafka-python's consumer, with its
  workarounds (``quirks.py``) and typed errors, and the ``SourceConsumer`` seam that it
  and ``confluent/consumer.py`` (confluent-kafka, KAFKA_CLIENT=confluent) fit;
- ``rebalance.py``: assignment, the revoke grace, the revoke commit, and the finished
  offsets a new partition's last commit recorded;
- ``records.py``: from a record to a job (``KafkaReceipt``);
- ``poison.py`` and ``dlq.py``: records that hold no job, unreadable batches, the
  dead-letter topic;
- ``flow_control.py``: pausing full partitions, how long a poll waits;
- ``commits.py``: when done offsets are committed, waiting or not;
- ``offsets/``: the per-partition state itself, without Kafka;
- ``book.py`` and ``stats.py``: that state behind its one lock, and the totals;
- ``wiring.py``: the source's options, and its pieces made from them.

Errors from the consumer are retried, except those retrying cannot fix (authentication
or authorization refused, group settings the broker rejects): ``fetch`` raises
``SourceFailed`` for them, naming the setting to look at.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import Any

import gevent
import structlog

from jobworker.adapters.kafka.consumer import ConsumerError, Records, TopicPartition
from jobworker.adapters.kafka.lag import PartitionOffsets, owned_backlog, owned_lag
from jobworker.adapters.kafka.records import KafkaReceipt, decode_task
from jobworker.adapters.kafka.settings import KafkaClientSettings
from jobworker.adapters.kafka.stats import SourceStats, unix_ms
from jobworker.adapters.kafka.wiring import SourceOptions, wire
from jobworker.domain.model import Job

log = structlog.get_logger(__name__)

# A failed poll waits at least this long before the next: an error that recurs at once
# must not turn the fetch loop into a spin, even when the engine asks for no wait.
_POLL_RETRY_MIN_S = 0.1
# With jobs enough at hand (read ahead) or no room for any, a poll is only what keeps the
# worker in its group (and takes its part in a rebalance), so one is made at most this
# often. At pool 10 the jobs queue fills about every millisecond: a poll (and pausing
# every partition) each time cost more than the short jobs themselves (issue 21).
_KEEPALIVE_POLL_EVERY_S = 0.1


class KafkaJobSource:
    """The JobSource port over a Kafka consumer group (see ``jobworker.domain.ports.JobSource``).

    A partition's committed offset never passes a job that is not done (acked, or its
    record written to the dead-letter topic). A partition whose span (from its lowest
    unfinished offset to its newest taken one: what a restart reads again) reaches
    ``max_in_flight_per_partition`` is paused until its lowest unfinished job is done.
    Done offsets are committed on a cadence without waiting for the broker's answer,
    when partitions are revoked, and on ``close``. ``options`` are described in
    ``wiring.SourceOptions``.
    """

    def __init__(
        self, settings: KafkaClientSettings, topic: str, group_id: str, options: SourceOptions
    ) -> None:
        self.topic = topic
        self._close_timeout_s = options.close_timeout_s
        self._closed = False
        # Partitions sought back in this fetch, to records before any unreadable batch.
        self._read_again: set[TopicPartition] = set()
        self._polled_at = 0.0  # monotonic
        # Records a poll may return beyond the room asked for: what it read ahead waits in
        # the book (``set_aside``), so that the next fetches need no poll of their own.
        self._read_ahead = settings.max_poll_records
        pieces = wire(settings, topic, group_id, options, closing=lambda: self._closed)
        self._reader = pieces.reader
        self._shared = pieces.shared
        self._consumer = pieces.consumer
        self._commits = pieces.commits
        self._flow = pieces.flow
        self._poison = pieces.poison
        self._rebalances = pieces.rebalances
        self._consumer.subscribe(self._rebalances)

    # -- the JobSource port -------------------------------------------------------------

    def fetch(self, max_jobs: int, timeout_s: float) -> Sequence[Job]:
        if self._closed:
            gevent.sleep(timeout_s)
            return []
        if (stopped := self._poison.stopped_by) is not None:
            # The engine goes on fetching while in-flight jobs drain: each repeat must
            # wait like a poll would, or that loop spins and starves those jobs.
            gevent.sleep(max(_POLL_RETRY_MIN_S, timeout_s))
            raise stopped
        self._read_again.clear()
        jobs: list[Job] = []
        if max_jobs <= 0:
            if (next_poll_in := self._next_poll_in()) > 0:
                self._commits.maybe_commit()
                # Waits as the poll would have: a caller that only keeps the source
                # alive (stop()'s drain) asks again at once, and must not spin.
                gevent.sleep(min(timeout_s, next_poll_in))
                return jobs
            self._flow.no_room()
            # Polling while everything is paused is what keeps us in the group.
            self._rewind(self._poll(timeout_s, max_records=1))
        else:
            with self._shared as book:
                at_hand = book.partitions.waiting_to_hand_out()
            if at_hand >= max_jobs and self._next_poll_in() > 0:
                jobs = self._released(max_jobs)
                if jobs:
                    self._commits.maybe_commit()
                    return jobs
            # Jobs are handed out only after the poll: one taken out of the book before
            # it, and held here while a revoke ran inside it, was neither in the revoke's
            # grace (no slot could finish it) nor in its commit: it ran here and again on
            # the partition's next owner.
            timeout_s = self._flow.poll_timeout(timeout_s, jobs_ready=at_hand > 0)
            ahead = 0 if at_hand else self._read_ahead
            records = self._poll(timeout_s, max_records=max(1, max_jobs - at_hand + ahead))
            self._set_aside_jobs_from(records)
            jobs = self._released(max_jobs)
        # After the records read before them are taken (or sought back to).
        self._poison.set_aside(self._consumer.unreadable_batches(), self._read_again)
        self._note_skipped_offsets()
        if (stopped := self._poison.stopped_by) is not None and not jobs:
            raise stopped
        self._poison.drain()
        self._commits.maybe_commit()
        gevent.sleep(0)
        return jobs

    def ack(self, job: Job) -> None:
        receipt = job.receipt
        if not isinstance(receipt, KafkaReceipt):
            log.warning("ack for a job this source did not deliver", job_id=job.id)
            return
        tp = TopicPartition(receipt.topic, receipt.partition)
        self._commits.done(tp, receipt.offset, receipt.epoch)

    def exhausted(self) -> bool:
        return False

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._poison.before_close(self._close_timeout_s)
        self._commits.commit()
        try:
            # Revokes the partitions: the handler commits acks that came since.
            self._consumer.close(self._close_timeout_s)
        except ConsumerError as error:
            log.warning("kafka consumer did not close cleanly", error=str(error))
        self._poison.close(self._close_timeout_s)

    # -- for metrics and readiness ------------------------------------------------------

    def stats(self) -> SourceStats:
        """The totals since start (commits, dead letters, …): one consistent snapshot."""
        return self._shared.stats

    def assigned(self) -> list[TopicPartition]:
        """The partitions this worker owns now."""
        with self._shared as book:
            return sorted(book.partitions.owned())

    def group_generation(self) -> int:
        """The consumer group generation this worker is in (-1 before it joined).

        Cheap and safe from any greenlet: a snapshot of the consumer's membership, no
        request to the broker.
        """
        return self._consumer.group_generation()

    def joined_group(self) -> bool:
        """True once this worker has joined its group, until it leaves or is expelled.

        Stays True through an ordinary rebalance (the member keeps its generation until
        the next one). Cheap, like ``group_generation``.
        """
        return self.group_generation() >= 0

    def spans(self) -> dict[TopicPartition, int]:
        """Per owned partition, how much of ``max_in_flight_per_partition`` is in use.

        That is the offsets from the lowest unfinished job to the newest taken one: what
        a restart would read again. A partition at the window is paused.
        """
        with self._shared as book:
            return {tp: book.partitions.span(tp) for tp in book.partitions.owned()}

    def lag(
        self, broker: Mapping[TopicPartition, PartitionOffsets] | None = None
    ) -> dict[TopicPartition, int]:
        """Records per owned partition past the group's position: what is left to do
        (see ``lag.owned_lag``; ``broker`` from a ``BrokerOffsetsMonitor``). Makes no
        request to the broker."""
        return owned_lag(self._consumer, self._shared, broker or {})

    def backlog(
        self, broker: Mapping[TopicPartition, PartitionOffsets] | None = None
    ) -> dict[TopicPartition, int]:
        """Jobs truly not done per owned partition (see ``lag.owned_backlog``)."""
        return owned_backlog(self._consumer, self._shared, broker or {})

    # -- reading ------------------------------------------------------------------------

    def _poll(self, timeout_s: float, max_records: int) -> Records:
        self._polled_at = time.monotonic()
        self._rebalances.before_poll()
        try:
            records = self._consumer.poll(timeout_s, max_records)
        except ConsumerError as error:
            log.warning(
                "kafka poll failed", error=str(error), error_type=type(error.cause).__name__
            )
            gevent.sleep(max(_POLL_RETRY_MIN_S, min(timeout_s, 1.0)))
            return {}
        polled_at_ms = unix_ms()
        with self._shared as book:
            book.stats = book.stats.polled(polled_at_ms)
            for tp, batch in records.items():
                if batch:
                    book.partitions.read(tp, batch[0].offset)
        return records

    def _next_poll_in(self) -> float:
        """Seconds until a poll is due to keep the worker in its group (0: now)."""
        return max(0.0, self._polled_at + _KEEPALIVE_POLL_EVERY_S - time.monotonic())

    def _set_aside_jobs_from(self, batches: Records) -> None:
        """The jobs of ``batches`` into the book, behind those already waiting there:
        ``_released`` hands them out."""
        # Partitions assigned during this poll: their commit's finished offsets first.
        self._rebalances.read_finished_offsets()
        for tp, records in batches.items():
            with self._shared as book:
                epoch = book.partitions.epoch(tp)
                taken = book.partitions.take(tp, [record.offset for record in records])
                book.stats = book.stats.plus(finished_skipped=len(taken.finished))
            if taken.count < len(records):
                # Over the window: read these again once the partition has drained.
                self._consumer.seek(tp, records[taken.count].offset)
                self._read_again.add(tp)
            offered = []
            for record in records[: taken.count]:
                if record.offset in taken.finished:
                    continue  # done before this assignment: the last commit says so
                job = self._job_from(record, epoch or 0)
                if job is not None:
                    offered.append((record, job))
            with self._shared as book:
                # In offset order; a job held for its key is handed out once released.
                admitted = [
                    job
                    for record, job in offered
                    if book.partitions.admit(tp, record.offset, record.key, job)
                ]
                book.partitions.set_aside(tp, epoch or 0, admitted)

    def _job_from(self, record: Any, epoch: int) -> Job | None:
        task = decode_task(record)
        if isinstance(task, str):
            self._poison.dead_letter(record, task, epoch)
            return None
        return self._reader.job(record, task, epoch)

    def _released(self, limit: int) -> list[Job]:
        """Held jobs whose key's earlier job is done (KAFKA_ORDERING)."""
        if limit <= 0:
            return []
        with self._shared as book:
            return book.partitions.ready(limit)

    def _rewind(self, batches: Records) -> None:
        # Records that arrive while there is no room (a partition assigned during the
        # poll) are read again later rather than dropped.
        for tp, records in batches.items():
            if records:
                self._consumer.seek(tp, records[0].offset)
                self._read_again.add(tp)

    def _note_skipped_offsets(self) -> None:
        # Every record a poll returned was taken or sought back to, so a position past
        # the last taken offset is offsets the consumer skipped: transaction markers and
        # aborted records. Without this, the commit of a transactional topic would stay
        # before them, and its lag never reach 0.
        for tp in self.assigned():
            position = self._consumer.position(tp)
            if position is not None:
                with self._shared as book:
                    book.partitions.skipped_to(tp, position)
