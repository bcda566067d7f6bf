"""KafkaJobSource: jobs from a Kafka topic, at least once, committed only when done.

Threads: ``fetch``, ``close`` and the commits run on the engine's fetch greenlet;
``ack`` on any greenlet; the rebalance listener and the dead-letter callbacks on
kafka-python's I/O thread (a greenlet once gevent has patched the process). They share
the bookkeeping under one lock that is never held across I/O.

Errors from the consumer are retried, except those retrying cannot fix (authentication
or authorization refused, group settings the broker rejects): ``fetch`` raises
``SourceFailed`` for them, naming the setting to look at. A record batch the consumer
cannot decode (a codec it lacks, a CRC mismatch, corrupt bytes) is written to the
dead-letter topic and skipped, or with ``unreadable_batches="fail"`` stops the source.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, NamedTuple

import gevent
import structlog
from google.protobuf.message import DecodeError
from kafka import KafkaConsumer, TopicPartition
from kafka.consumer.subscription_state import AsyncConsumerRebalanceListener
from kafka.errors import KafkaError, TopicAuthorizationFailedError
from kafka.structs import OffsetAndMetadata
from kafka.util import ensure_valid_topic_name

from jobworker.adapters.codec import job_from_task
from jobworker.adapters.kafka.bootstrap import open_client
from jobworker.adapters.kafka.dlq import DeadLetter, DeadLetterOutbox, DeadLetterWriter
from jobworker.adapters.kafka.lag import PartitionOffsets
from jobworker.adapters.kafka.modes import Ordering, UnreadableBatches
from jobworker.adapters.kafka.offsets import finished_offsets
from jobworker.adapters.kafka.offsets.commit_cadence import CommitCadence, Due
from jobworker.adapters.kafka.offsets.partitions import AssignedPartitions, Commit
from jobworker.adapters.kafka.quirks import (
    UnreadableBatch,
    UnreadableBatchDetector,
    fetch_position,
    missing_internals,
    release_parked_records,
    resume_interrupted_join,
    sleep_on_io_loop,
    unauthorized_topics,
)
from jobworker.adapters.kafka.refusals import fatal_error_message
from jobworker.adapters.kafka.settings import KafkaClientSettings
from jobworker.adapters.proto.jobworker.v1 import jobworker_pb2 as pb
from jobworker.adapters.sparse_warnings import SparseWarning
from jobworker.adapters.tracing.headers import trace_headers
from jobworker.domain.errors import ConfigurationError, SourceFailed
from jobworker.domain.model import Job

log = structlog.get_logger(__name__)

_PERIODIC_COMMIT_TIMEOUT_S = 2.0
# A failed poll waits at least this long before the next: an error that recurs at once
# must not turn the fetch loop into a spin, even when the engine asks for no wait.
_POLL_RETRY_MIN_S = 0.1
# While jobs are held for their key, polls are this short, so that a released job waits
# for a poll no longer than this.
_HELD_POLL_S = 0.02
# While jobs are out (taken, not yet acked), polls are at most this long.
_JOBS_OUT_POLL_S = 0.05
# Look-ups of a partition's committed metadata that may fail before its finished
# offsets are given up on (and the jobs behind the committed offset redone).
_FINISHED_LOOKUP_TRIES = 3


class KafkaReceipt(NamedTuple):
    """Where a job came from. ``epoch`` tells one assignment of the partition from the next.

    A named tuple, not a frozen dataclass: one is built per record, and a frozen
    dataclass sets each field through ``object.__setattr__`` (0.5 µs against 0.2 µs).
    """

    topic: str
    partition: int
    offset: int
    epoch: int


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
    """The JobSource port over a Kafka consumer group (see ``jobworker.domain.ports.JobSource``).

    A partition's committed offset never passes a job that is not done (acked, or its
    record written to the dead-letter topic). ``max_in_flight_per_partition`` bounds a
    partition's span, from its lowest unfinished offset to its newest taken one: that
    is what a restart reads again, however few of those jobs are still running. A
    partition whose span is full is paused until its lowest unfinished job is done.
    Done offsets are committed every ``commit_interval_s`` or ``commit_every`` acks
    (those without waiting for the broker's answer), when partitions are revoked, and on
    ``close``.

    Poison records go to the dead-letter topic in slices of at most
    ``dead_letter_budget_s`` per fetch; while that topic refuses them, retries wait
    ``dead_letter_retry_s``, doubling up to ``dead_letter_max_backoff_s``.

    ``ordering`` (KAFKA_ORDERING) "key" runs the jobs of one record key one at a time, in
    offset order, and "partition" one job of a partition at a time; "none" (the
    default) lets them all run at once. Held jobs count in the window.

    A record batch the consumer cannot decode is, with ``unreadable_batches``
    "dead-letter", logged at ERROR, written to the dead-letter topic (its raw bytes and
    where it came from) and skipped: the partition reads on at once, and its commit
    passes the batch only once the dead letter is written. With "fail", it is logged at
    ERROR too, the jobs read before it are still returned, and then every ``fetch``
    raises ``SourceFailed`` naming the partition and offsets; nothing is committed past
    the batch.
    """

    def __init__(
        self,
        settings: KafkaClientSettings,
        topic: str,
        group_id: str,
        *,
        dlq_topic: str,
        worker_id: str = "",
        max_in_flight_per_partition: int = 1000,
        commit_interval_s: float = 0.1,
        commit_every: int = 1000,
        dead_letter_retry_s: float = 1.0,
        dead_letter_max_backoff_s: float = 30.0,
        dead_letter_budget_s: float = 1.0,
        unreadable_batches: UnreadableBatches = UnreadableBatches.DEAD_LETTER,
        close_timeout_s: float = 10.0,
        revoke_grace_s: float = 5.0,
        ordering: Ordering = Ordering.NONE,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if max_in_flight_per_partition < 1:
            raise ConfigurationError("KAFKA_MAX_IN_FLIGHT_PER_PARTITION", "must be at least 1")
        _check_topic("KAFKA_TOPIC", topic)
        _check_topic("KAFKA_DLQ_TOPIC", dlq_topic)
        if dlq_topic == topic:
            raise ConfigurationError("KAFKA_DLQ_TOPIC", "must differ from KAFKA_TOPIC")
        if not group_id.strip():
            raise ConfigurationError("KAFKA_GROUP_ID", "must not be empty")
        self._keyed = ordering == Ordering.KEY
        self._fail_on_unreadable = unreadable_batches == UnreadableBatches.FAIL
        self.topic = topic
        self._group_id = group_id
        self._session_timeout_ms = settings.session_timeout_ms
        self._close_timeout_s = close_timeout_s
        self._revoke_grace_s = revoke_grace_s
        self._clock = clock
        self._lock = threading.Lock()
        # Every partition's state; the adapter only moves records in and out of it.
        self._partitions: AssignedPartitions[TopicPartition] = AssignedPartitions(
            max_in_flight_per_partition, ordering=ordering
        )
        self._finished_lookup_failures: dict[TopicPartition, int] = {}
        # A commit sent without waiting that has not answered after 60 s is taken as
        # lost (the client fails requests well before).
        self._cadence = CommitCadence(commit_interval_s, commit_every, clock, patience_s=60.0)
        self.counters = {
            "offset_commits": 0,
            "dlq_records": 0,
            "unreadable_batches": 0,
            "finished_skipped": 0,
            "commit_metadata_fallbacks": 0,
        }
        self._no_room = False
        # With unreadable_batches="fail", why the source stopped: raised by every fetch
        # from the first that returns no jobs (the jobs before the batch run first).
        self._stopped_by: SourceFailed | None = None
        # Partitions sought back in this fetch, to records before any unreadable batch.
        self._read_again: set[TopicPartition] = set()
        # Entity keys on every record would otherwise mean one warning per record.
        self._key_warning = SparseWarning()
        self._closed = False
        # A refused first connection (credentials, mechanism, TLS) raises AccessRefused.
        self._consumer = open_client(
            KafkaConsumer,
            settings,
            **settings.consumer_kwargs(),
            group_id=group_id,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
        )
        if missing := missing_internals(self._consumer):
            log.warning(
                "this kafka-python version lacks internals its workarounds touch: they do"
                " nothing (checked against kafka-python 3.0.12)",
                missing=missing,
            )
        self._unreadable = UnreadableBatchDetector(self._consumer)
        if not self._unreadable.installed:
            log.warning(
                "this kafka-python version is not the one the unreadable-batch workaround"
                " knows: a batch the consumer cannot decode may stall it"
            )
        self._dead_letter_writer = DeadLetterWriter(
            settings, dlq_topic, worker_id, api_version=self._consumer.config["api_version"]
        )
        self._dead_letters = DeadLetterOutbox(
            self._dead_letter_writer,
            self._dead_letter_written,
            budget_s=dead_letter_budget_s,
            first_backoff_s=dead_letter_retry_s,
            max_backoff_s=dead_letter_max_backoff_s,
            clock=clock,
        )
        self._consumer.subscribe([topic], listener=_RebalanceListener(self))

    # -- the JobSource port -------------------------------------------------------------

    def fetch(self, max_jobs: int, timeout_s: float) -> Sequence[Job]:
        if self._closed:
            gevent.sleep(timeout_s)
            return []
        if self._stopped_by is not None:
            # The engine goes on fetching while in-flight jobs drain: each repeat must
            # wait like a poll would, or that loop spins and starves those jobs.
            gevent.sleep(max(_POLL_RETRY_MIN_S, timeout_s))
            raise self._stopped_by
        self._no_room = max_jobs <= 0
        self._read_again.clear()
        if self._no_room:
            self._pause(self._owned())
            # Polling while everything is paused is what keeps us in the group.
            self._rewind(self._poll(timeout_s, max_records=1))
            jobs: list[Job] = []
        else:
            jobs = self._released(max_jobs)
            paused_for_window = self._pause_full_partitions()
            with self._lock:
                holding = self._partitions.holding()
                commit_in = self._cadence.seconds_until_due()
                jobs_out = any(self._partitions.in_flight(tp) for tp in self._partitions.owned())
            if jobs_out:
                # Their acks come from other greenlets while this poll waits: the commit
                # they make due should not wait out a whole poll (what a crash redoes).
                timeout_s = min(timeout_s, _JOBS_OUT_POLL_S)
            if jobs or holding or paused_for_window:
                # Released jobs go out at once; held ones are released, and full
                # windows opened, by acks, which a long poll would not see.
                timeout_s = 0.0 if jobs else min(timeout_s, _HELD_POLL_S)
            if commit_in is not None:
                timeout_s = min(timeout_s, commit_in)  # done work is committed on time
            room = max_jobs - len(jobs)
            records = self._poll(timeout_s, max_records=max(1, room))
            if room > 0:
                jobs += self._jobs_from(records)
            else:
                self._rewind(records)
            jobs += self._released(max_jobs - len(jobs))
        # After the records read before them are taken (or sought back to).
        self._set_aside(self._unreadable.take())
        self._note_skipped_offsets()
        if self._stopped_by is not None and not jobs:
            raise self._stopped_by
        self._dead_letters.drain(self._still_owned)
        self._maybe_commit()
        gevent.sleep(0)
        return jobs

    def ack(self, job: Job) -> None:
        receipt = job.receipt
        if not isinstance(receipt, KafkaReceipt):
            log.warning("ack for a job this source did not deliver", job_id=job.id)
            return
        self._done(TopicPartition(receipt.topic, receipt.partition), receipt.offset, receipt.epoch)

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
        if waiting := self._dead_letters.waiting():
            log.warning(
                "poison records not written to the dead-letter topic before close; "
                "their partitions' commits stay before them and they are read again",
                dead_letters_waiting=waiting,
            )
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
        """The consumer group generation this worker is in (-1 before it joined).

        Cheap and safe from any greenlet: a snapshot of the consumer's membership, no
        request to the broker.
        """
        return int(self._consumer.group_metadata().generation_id)

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
        with self._lock:
            return {tp: self._partitions.span(tp) for tp in self._partitions.owned()}

    def lag(
        self, broker: Mapping[TopicPartition, PartitionOffsets] | None = None
    ) -> dict[TopicPartition, int]:
        """Records per owned partition past the group's position: what is left to do.

        The position is the offset this worker last committed there; before its first
        commit in this assignment, the offset it first read (where the group's
        committed offset, or ``earliest`` without one, put the consumer). The end is
        the consumer's high-water mark, which it learns only from fetches: ``broker``
        (from a ``BrokerOffsetsMonitor``) fills in partitions not read yet and new
        records on paused partitions, so the lag grows while Core is down. It is the
        LAG ``kafka-consumer-groups --describe`` shows, reaching zero only once every
        record was taken, finished, reported and committed. Partitions with neither
        figure are left out. Makes no request to the broker.
        """
        broker = broker or {}
        lags = {}
        assignment = self._consumer.assignment()
        for tp in self._owned():
            highwater = self._consumer.highwater(tp) if tp in assignment else None
            with self._lock:
                position = self._partitions.lag_position(tp)
            lag = partition_lag(highwater, position, broker.get(tp))
            if lag is not None:
                lags[tp] = lag
        return lags

    # -- polling ------------------------------------------------------------------------

    def _poll(self, timeout_s: float, max_records: int) -> dict[TopicPartition, list[Any]]:
        release_parked_records(self._consumer)
        resume_interrupted_join(self._consumer)
        self._read_finished_offsets()
        self._note_first_positions()
        try:
            records: dict[TopicPartition, list[Any]] = self._consumer.poll(
                timeout_ms=max(0, int(timeout_s * 1000)), max_records=max_records
            )
        except Exception as error:
            # Decoding errors are not all KafkaErrors (a codec library's own, struct's).
            # ``fetch`` sets the batch aside; the next poll reads on without waiting.
            if self._unreadable.found():
                return {}
            if not isinstance(error, KafkaError):
                raise
            reason = fatal_error_message(
                error, self.topic, self._group_id, self._session_timeout_ms
            )
            if reason is not None:
                raise SourceFailed(reason) from error
            log.warning("kafka poll failed", error=str(error), error_type=type(error).__name__)
            gevent.sleep(max(_POLL_RETRY_MIN_S, min(timeout_s, 1.0)))
            return {}
        if self.topic in unauthorized_topics(self._consumer):
            # The consumer itself would wait for ever, with no partition ever assigned.
            refused = TopicAuthorizationFailedError({self.topic})
            reason = fatal_error_message(
                refused, self.topic, self._group_id, self._session_timeout_ms
            )
            raise SourceFailed(reason or str(refused))
        with self._lock:
            for tp, batch in records.items():
                if batch:
                    self._partitions.read(tp, batch[0].offset)
        return records

    def _read_finished_offsets(self) -> None:
        """Read the finished offsets each newly assigned partition's last commit recorded.

        Records they name are then skipped: done before this assignment, by this worker
        or another. Until they are read, the partition's records are read again later
        rather than taken. Metadata this worker cannot read is ignored (its jobs are
        redone, which is safe) with one warning; so is a look-up that failed
        ``_FINISHED_LOOKUP_TRIES`` times.
        """
        with self._lock:
            needed = self._partitions.needs_finished()
        for tp in needed:
            finished: frozenset[int] = frozenset()
            try:
                committed = self._consumer.committed(
                    tp, metadata=True, timeout_ms=int(_PERIODIC_COMMIT_TIMEOUT_S * 1000)
                )
            except KafkaError as error:
                tries = self._finished_lookup_failures.get(tp, 0) + 1
                self._finished_lookup_failures[tp] = tries
                if tries < _FINISHED_LOOKUP_TRIES:
                    continue  # the next poll tries again; records wait meanwhile
                log.warning(
                    "cannot read the committed offset's finished offsets: redoing them",
                    partition=tp.partition,
                    error=str(error),
                )
                committed = None
            self._finished_lookup_failures.pop(tp, None)
            if committed is not None and committed.metadata:
                try:
                    finished = finished_offsets.decode(committed.metadata, committed.offset)
                except finished_offsets.UnreadableMetadataError as error:
                    log.warning(
                        "commit metadata not understood: redoing the jobs after the"
                        " committed offset",
                        partition=tp.partition,
                        committed_offset=committed.offset,
                        reason=str(error),
                    )
            with self._lock:
                self._partitions.inherit(tp, finished)
            if finished:
                log.info(
                    "skipping jobs the last commit records as finished",
                    partition=tp.partition,
                    finished=len(finished),
                )

    def _note_first_positions(self) -> None:
        # Before a poll: where each partition starts being read (its committed offset,
        # or the reset), for one whose first records are all skipped (see below).
        for tp in self._owned():
            position = fetch_position(self._consumer, tp)
            if position is not None:
                with self._lock:
                    self._partitions.position_known(tp, position)

    def _note_skipped_offsets(self) -> None:
        # Every record a poll returned was taken or sought back to, so a position past
        # the last taken offset is offsets the consumer skipped: transaction markers and
        # aborted records. Without this, the commit of a transactional topic would stay
        # before them, and its lag never reach 0.
        for tp in self._owned():
            position = fetch_position(self._consumer, tp)
            if position is None:
                continue
            with self._lock:
                self._partitions.skipped_to(tp, position)

    def _set_aside(self, batches: Sequence[UnreadableBatch]) -> None:
        """Dead-letter and skip the batches the consumer could not decode, or stop.

        Batches of partitions no longer owned are left to the next owner; those of
        partitions sought back to records before them are met again when read up to.
        """
        for batch in batches:
            tp = TopicPartition(batch.topic, batch.partition)
            with self._lock:
                epoch = self._partitions.owned_epoch(tp)
                if epoch is None or tp in self._read_again:
                    continue
                self.counters["unreadable_batches"] += 1
            if self._fail_on_unreadable:
                self._stop_at(batch)
            else:
                self._skip(tp, batch, epoch)

    def _stop_at(self, batch: UnreadableBatch) -> None:
        log.error(
            "unreadable record batch: stopping (KAFKA_UNREADABLE_BATCHES=fail)",
            **_where(batch),
            error=batch.error,
        )
        self._stopped_by = self._stopped_by or SourceFailed(
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
            dead_letter_topic=self._dead_letter_writer.topic,
        )
        with self._lock:
            # Both ends pending: the commit stays before the batch until its dead letter
            # is written, then moves past its last offset.
            self._partitions.unreadable(tp, batch.first_offset, batch.last_offset)
        self._dead_letters.put(DeadLetter(batch, batch.error, epoch))
        self._seek(tp, batch.last_offset + 1)

    def _released(self, limit: int) -> list[Job]:
        """Held jobs whose key's earlier job is done (KAFKA_ORDERING)."""
        if limit <= 0:
            return []
        with self._lock:
            return self._partitions.ready(limit)

    def _jobs_from(self, batches: dict[TopicPartition, list[Any]]) -> list[Job]:
        # Partitions assigned during this poll: their commit's finished offsets first.
        self._read_finished_offsets()
        jobs = []
        for tp, records in batches.items():
            with self._lock:
                epoch = self._partitions.epoch(tp)
                taken = self._partitions.take(tp, [record.offset for record in records])
                self.counters["finished_skipped"] += len(taken.finished)
            if taken.count < len(records):
                # Over the window: read these again once the partition has drained.
                self._seek(tp, records[taken.count].offset)
                self._read_again.add(tp)
            offered = []
            for record in records[: taken.count]:
                if record.offset in taken.finished:
                    continue  # done before this assignment: the last commit says so
                job = self._job_or_dead_letter(record, epoch or 0)
                if job is not None:
                    offered.append((record, job))
            with self._lock:
                # In offset order; a job held for its key is handed out once released.
                jobs += [
                    job
                    for record, job in offered
                    if self._partitions.admit(tp, record.offset, record.key, job)
                ]
        return jobs

    def _job_or_dead_letter(self, record: Any, epoch: int) -> Job | None:
        task = decode_task(record)
        if isinstance(task, str):
            log.warning(
                "poison record: writing it to the dead-letter topic",
                reason=task,
                dead_letter_topic=self._dead_letter_writer.topic,
                topic=record.topic,
                partition=record.partition,
                offset=record.offset,
            )
            self._dead_letters.put(DeadLetter(record, task, epoch))
            return None
        if (
            not self._keyed
            and record.key is not None
            and record.key != task.id.encode()
            and (held_back := self._key_warning.due()) is not None
        ):
            log.warning(
                "record key differs from the job id; using the job id"
                " (KAFKA_ORDERING=key reads the key as an ordering key)",
                job_id=task.id,
                key=record.key.decode("utf-8", "replace"),
                partition=record.partition,
                offset=record.offset,
                not_logged_since_last=held_back,
            )
        receipt = KafkaReceipt(record.topic, record.partition, record.offset, epoch)
        return job_from_task(task, receipt, trace_headers(record.headers))

    def _rewind(self, batches: dict[TopicPartition, list[Any]]) -> None:
        # Records that arrive while there is no room (a partition assigned during the
        # poll) are read again later rather than dropped.
        for tp, records in batches.items():
            if records:
                self._seek(tp, records[0].offset)
                self._read_again.add(tp)

    def _seek(self, tp: TopicPartition, offset: int) -> None:
        if tp not in self._consumer.assignment():
            # Revoked since the poll: the next owner reads these records.
            return
        try:
            self._consumer.seek(tp, offset)
        except KafkaError as error:
            log.warning("seek failed", partition=tp.partition, offset=offset, error=str(error))

    # -- pausing ------------------------------------------------------------------------

    def _pause_full_partitions(self) -> bool:
        """Pause the partitions whose window is full, resume the others; True if any
        owned partition is paused for its window."""
        owned = self._owned()
        with self._lock:
            full = self._partitions.full()
        paused = set(self._consumer.paused())
        self._pause(full - paused)
        self._resume((owned - full) & paused)
        return bool(full & owned)

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
            return self._partitions.owned()

    def _done(self, tp: TopicPartition, offset: int, epoch: int) -> None:
        with self._lock:
            if self._partitions.done(tp, offset, epoch):
                self._cadence.acked()

    def _maybe_commit(self) -> None:
        with self._lock:
            due = self._cadence.due()
        if due is Due.WAITING:
            # Briefly: with the broker away a long wait would hold up jobs the consumer
            # already has.
            self._commit(_PERIODIC_COMMIT_TIMEOUT_S)
        elif due is Due.SENT:
            self._commit_without_waiting()

    def _commit_without_waiting(self) -> None:
        """Send a commit and return; its answer is noted at a later poll.

        A failed one is sent again at the next cadence, and nothing done is lost
        meanwhile (see ``CommitCadence``).
        """
        with self._lock:
            if not self._cadence.may_send():
                return
        offsets, commits = self._offsets_to_commit()
        if not offsets:
            return
        with self._lock:
            token = self._cadence.sending()

        def answered(_: object, response: object) -> None:
            with self._lock:
                self._cadence.answered(token)
            if isinstance(response, BaseException):
                log.warning(
                    "offset commit failed", error=str(response), offsets=_printable(offsets)
                )
            else:
                self._record_commit(commits)

        try:
            self._consumer.commit_async(offsets, callback=answered)
        except KafkaError as error:
            with self._lock:
                self._cadence.answered(token)
            log.warning("offset commit failed", error=str(error), offsets=_printable(offsets))

    def _commit(self, timeout_s: float | None = None) -> None:
        """Commit what is done and wait for the answer (on the clock and on close)."""
        offsets, commits = self._offsets_to_commit()
        if not offsets:
            return
        try:
            timeout_ms = int((timeout_s or self._close_timeout_s) * 1000)
            self._consumer.commit(offsets, timeout_ms=timeout_ms)
        except KafkaError as error:
            # Nothing is lost: these offsets are committed later or redelivered.
            log.warning("offset commit failed", error=str(error), offsets=_printable(offsets))
            return
        self._record_commit(commits)

    def _offsets_to_commit(
        self,
    ) -> tuple[dict[TopicPartition, OffsetAndMetadata], dict[TopicPartition, Commit]]:
        """What to commit for the owned partitions, and the commits as the state knows them."""
        with self._lock:
            self._cadence.committing()
            return self._committable(self._partitions.owned())

    def _committable(
        self, partitions: Iterable[Any]
    ) -> tuple[dict[TopicPartition, OffsetAndMetadata], dict[TopicPartition, Commit]]:
        """What to commit for ``partitions`` (under the lock)."""
        commits = self._partitions.committable(partitions)
        offsets = {tp: OffsetAndMetadata(c.offset, c.metadata, -1) for tp, c in commits.items()}
        self.counters["commit_metadata_fallbacks"] = self._partitions.metadata_fallbacks
        return offsets, commits

    # -- rebalance (called on kafka-python's I/O thread) ---------------------------------
    #
    # The consumer uses the default eager assignors: a rebalance first revokes every
    # partition, then assigns the new set, and kafka-python keeps the fetch position of
    # a partition that comes back. So a revoked partition is only *held* (its ledger and
    # epoch kept, acks still counted) until the assignment: if it comes back, its
    # bookkeeping still matches the consumer's position; if not, it is forgotten.

    async def _commit_revoked(self, partitions: Iterable[TopicPartition]) -> None:
        with self._lock:
            revoked = self._partitions.revoked(partitions)
        if revoked:
            log.info("partitions revoked", partitions=_printable(revoked))
            await self._let_revoked_jobs_finish(revoked)
        with self._lock:
            offsets, commits = self._committable(revoked)
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
        self._record_commit(commits)

    async def _let_revoked_jobs_finish(self, revoked: Sequence[TopicPartition]) -> None:
        """Give jobs of revoked partitions up to ``revoke_grace_s`` to finish before the
        commit: what they finish is in it, so the next owner does not run them again.

        Not on close (the engine has drained what it could by then). Jobs held for their
        key are not waited for: no fetch hands them out meanwhile. Jobs still running
        after the grace are committed as not done and redone by the next owner.
        """
        deadline = self._clock() + self._revoke_grace_s
        while not self._closed and self._clock() < deadline:
            with self._lock:
                running = sum(self._partitions.handed_out(tp) for tp in revoked)
            if not running or not await sleep_on_io_loop(self._consumer, 0.02):
                return

    def _record_commit(self, commits: Mapping[TopicPartition, Commit]) -> None:
        """Note a commit the broker confirmed, for the partitions still in the assignment
        it was made in. Commits may be confirmed out of order: positions only grow."""
        with self._lock:
            self.counters["offset_commits"] += 1
            for tp, commit in commits.items():
                self._partitions.committed(tp, commit)

    def _partitions_assigned(self, partitions: Iterable[TopicPartition]) -> None:
        assigned = set(partitions)
        with self._lock:
            self._partitions.assigned(assigned)
        if assigned:
            log.info("partitions assigned", partitions=_printable(assigned))
        if self._no_room:
            self._pause(assigned)

    def _partitions_lost(self, partitions: Iterable[TopicPartition]) -> None:
        # The group moved on without us: committing would fail, positions are reset.
        with self._lock:
            self._partitions.lost(partitions)
        log.warning("partitions lost (group membership expired)", partitions=_printable(partitions))

    # -- dead letters -------------------------------------------------------------------

    def _dead_letter_written(self, letter: DeadLetter) -> None:
        # On the producer's I/O thread: the record is safe in the dead-letter topic.
        with self._lock:
            self.counters["dlq_records"] += 1
        tp = TopicPartition(letter.record.topic, letter.record.partition)
        if isinstance(letter.record, UnreadableBatch):
            self._done(tp, letter.record.first_offset, letter.epoch)
            self._done(tp, letter.record.last_offset, letter.epoch)
        else:
            self._done(tp, letter.record.offset, letter.epoch)

    def _still_owned(self, letter: DeadLetter) -> bool:
        tp = TopicPartition(letter.record.topic, letter.record.partition)
        with self._lock:
            return self._partitions.epoch(tp) == letter.epoch


class _RebalanceListener(AsyncConsumerRebalanceListener):  # type: ignore[misc]
    """Hands rebalance events to the source. Async on purpose: see _commit_revoked."""

    def __init__(self, source: KafkaJobSource) -> None:
        self._source = source

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        await self._source._commit_revoked(revoked)

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        self._source._partitions_assigned(assigned)

    async def on_partitions_lost(self, lost: set[TopicPartition]) -> None:
        self._source._partitions_lost(lost)


def partition_lag(
    highwater: int | None, position: int | None, broker: PartitionOffsets | None
) -> int | None:
    """Records left in a partition, from what the consumer and the broker last said.

    Both ends and both positions only grow, so the larger of each is the fresher: the
    consumer's after a fetch or a commit, the broker's for a partition paused or not
    read yet. None when neither knows the end or the position.
    """
    end = highwater
    if broker is not None:
        end = broker.end if end is None else max(end, broker.end)
        position = broker.position if position is None else max(position, broker.position)
    if end is None or position is None:
        return None
    return max(0, end - position)


def _check_topic(variable: str, topic: str) -> None:
    try:
        ensure_valid_topic_name(topic)
    except (TypeError, ValueError) as error:
        raise ConfigurationError(variable, str(error)) from None


def _where(batch: UnreadableBatch) -> dict[str, Any]:
    return {
        "topic": batch.topic,
        "partition": batch.partition,
        "first_offset": batch.first_offset,
        "last_offset": batch.last_offset,
    }


def _printable(partitions: Iterable[Any]) -> list[str]:
    return sorted(f"{tp.topic}[{tp.partition}]" for tp in partitions)
