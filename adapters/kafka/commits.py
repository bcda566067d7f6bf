"""When and how the Kafka source commits its done offsets.

A job's offset is done when its ack comes (or its record's dead letter is written).
Done offsets are committed on the cadence of ``CommitCadence``: on the clock, waiting
briefly for the answer; after so many acks, without waiting; and on close, waiting. A
commit never passes a job that is not done (``AssignedPartitions.committable``), and a
failed one loses nothing: its offsets are committed later, or redelivered.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import replace

import structlog

from jobworker.adapters.kafka.book import Book, SharedBook
from jobworker.adapters.kafka.consumer import (
    ConsumerError,
    SourceConsumer,
    TopicPartition,
    printable,
)
from jobworker.adapters.kafka.offsets.commit_cadence import Due
from jobworker.adapters.kafka.offsets.partitions import Commit
from jobworker.adapters.kafka.stats import unix_ms

# The source's lines keep the logger name they had before it was split in pieces.
log = structlog.get_logger("jobworker.adapters.kafka.source")

# On the clock, a commit waits this long at most: with the broker away a long wait
# would hold up jobs the consumer already has.
PERIODIC_COMMIT_TIMEOUT_S = 2.0


class OffsetCommits:
    """The source's commits, over ``consumer``, of what ``shared`` says is done."""

    def __init__(
        self, consumer: SourceConsumer, shared: SharedBook, close_timeout_s: float
    ) -> None:
        self._consumer = consumer
        self._shared = shared
        self._close_timeout_s = close_timeout_s

    def done(self, tp: TopicPartition, offset: int, epoch: int) -> None:
        """The job at ``offset`` is done (ignored for an earlier assignment of ``tp``)."""
        with self._shared as book:
            if book.partitions.done(tp, offset, epoch):
                book.cadence.acked()

    def maybe_commit(self) -> None:
        """Commit if the cadence says one is due."""
        with self._shared as book:
            due = book.cadence.due()
        if due is Due.WAITING:
            self.commit(PERIODIC_COMMIT_TIMEOUT_S)
        elif due is Due.SENT:
            self._commit_without_waiting()

    def commit(self, timeout_s: float | None = None) -> None:
        """Commit what is done and wait for the answer (on the clock and on close)."""
        commits = self._to_commit()
        if not commits:
            return
        try:
            self._consumer.commit(commits, timeout_s or self._close_timeout_s)
        except ConsumerError as error:
            # Nothing is lost: these offsets are committed later or redelivered.
            log.warning("offset commit failed", error=str(error), offsets=printable(commits))
            return
        self.confirmed(commits)

    def _commit_without_waiting(self) -> None:
        """Send a commit and return; its answer is noted at a later poll.

        A failed one is sent again at the next cadence, and nothing done is lost
        meanwhile (see ``CommitCadence``).
        """
        with self._shared as book:
            if not book.cadence.may_send():
                return
        commits = self._to_commit()
        if not commits:
            return
        with self._shared as book:
            token = book.cadence.sending()

        def answered(error: BaseException | None) -> None:
            with self._shared as book:
                book.cadence.answered(token)
            if error is not None:
                log.warning("offset commit failed", error=str(error), offsets=printable(commits))
            else:
                self.confirmed(commits)

        try:
            self._consumer.commit_async(commits, answered)
        except ConsumerError as error:
            with self._shared as book:
                book.cadence.answered(token)
            log.warning("offset commit failed", error=str(error), offsets=printable(commits))

    def _to_commit(self) -> dict[TopicPartition, Commit]:
        with self._shared as book:
            book.cadence.committing()
            return committable(book, book.partitions.owned())

    def confirmed(self, commits: Mapping[TopicPartition, Commit]) -> None:
        """Note a commit the broker confirmed, for the partitions still in the assignment
        it was made in. Commits may be confirmed out of order: positions only grow."""
        with self._shared as book:
            book.stats = book.stats.committed(unix_ms())
            for tp, commit in commits.items():
                book.partitions.committed(tp, commit)


def committable(book: Book, partitions: Iterable[TopicPartition]) -> dict[TopicPartition, Commit]:
    """What to commit for ``partitions`` (the caller holds the book)."""
    commits = book.partitions.committable(partitions)
    fallbacks = book.partitions.metadata_fallbacks
    if fallbacks != book.stats.commit_metadata_fallbacks:
        book.stats = replace(book.stats, commit_metadata_fallbacks=fallbacks)
    return commits
