"""The Kafka source's side of rebalances: assignment, the revoke grace, the revoke commit.

The handler runs on kafka-python's I/O thread. The consumer uses the default eager
assignors: a rebalance first revokes every partition, then assigns the new set, and the
client keeps the fetch position of a partition that comes back. So a revoked partition
is only *held* (its bookkeeping and epoch kept, acks still counted) until the
assignment: if it comes back, its bookkeeping still matches the consumer's position; if
not, it is forgotten.

A newly assigned partition's records are taken only once the finished offsets its last
commit recorded are read (``before_poll``): those are done already, by this worker or
another, and are skipped.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import structlog

from jobworker.adapters.kafka.book import SharedBook
from jobworker.adapters.kafka.commits import PERIODIC_COMMIT_TIMEOUT_S, OffsetCommits, committable
from jobworker.adapters.kafka.consumer import (
    ConsumerError,
    SourceConsumer,
    TopicPartition,
    printable,
)
from jobworker.adapters.kafka.flow_control import FlowControl
from jobworker.adapters.kafka.offsets import finished_offsets

# The source's lines keep the logger name they had before it was split in pieces.
log = structlog.get_logger("jobworker.adapters.kafka.source")

# Look-ups of a partition's committed metadata that may fail before its finished
# offsets are given up on (and the jobs behind the committed offset redone).
_FINISHED_LOOKUP_TRIES = 3
# How often the revoke grace looks whether the revoked partitions' jobs are done.
_GRACE_CHECK_S = 0.02


class Rebalances:
    """The source's ``RebalanceHandler`` (see ``consumer.py``), and the look-up of a new
    partition's finished offsets."""

    def __init__(
        self,
        consumer: SourceConsumer,
        shared: SharedBook,
        commits: OffsetCommits,
        flow: FlowControl,
        *,
        revoke_grace_s: float,
        clock: Callable[[], float],
        closing: Callable[[], bool],
    ) -> None:
        self._consumer = consumer
        self._shared = shared
        self._commits = commits
        self._flow = flow
        self._revoke_grace_s = revoke_grace_s
        self._clock = clock
        self._closing = closing
        self._finished_lookup_failures: dict[TopicPartition, int] = {}

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        """Commit what is done of the revoked partitions before the group moves on, so
        that the next owner starts after our last done job."""
        with self._shared as book:
            owned = book.partitions.revoked(revoked)
        if owned:
            log.info("partitions revoked", partitions=printable(owned))
            await self._let_revoked_jobs_finish(owned)
        with self._shared as book:
            commits = committable(book, owned)
        if not commits:
            return
        try:
            await self._consumer.commit_in_rebalance(commits)
        except ConsumerError as error:
            log.warning("commit on revoke failed", error=str(error), offsets=printable(commits))
            return
        self._commits.confirmed(commits)

    async def _let_revoked_jobs_finish(self, revoked: Sequence[TopicPartition]) -> None:
        """Give jobs of revoked partitions up to ``revoke_grace_s`` to finish before the
        commit: what they finish is in it, so the next owner does not run them again.

        Not on close (the engine has drained what it could by then). Jobs held for their
        key are not waited for: no fetch hands them out meanwhile. Jobs still running
        after the grace are committed as not done and redone by the next owner.
        """
        deadline = self._clock() + self._revoke_grace_s
        while not self._closing() and self._clock() < deadline:
            with self._shared as book:
                running = sum(book.partitions.handed_out(tp) for tp in revoked)
            if not running or not await self._consumer.sleep_in_rebalance(_GRACE_CHECK_S):
                return

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        with self._shared as book:
            book.partitions.assigned(assigned)
        if assigned:
            log.info("partitions assigned", partitions=printable(assigned))
        self._flow.on_assigned(assigned)

    async def on_partitions_lost(self, lost: set[TopicPartition]) -> None:
        # The group moved on without us: committing would fail, positions are reset.
        with self._shared as book:
            book.partitions.lost(lost)
        log.warning("partitions lost (group membership expired)", partitions=printable(lost))

    def before_poll(self) -> None:
        """What a newly assigned partition starts from: the finished offsets its last
        commit recorded, and where the consumer starts reading it."""
        self.read_finished_offsets()
        # Its committed offset, or the reset: for one whose first records are all
        # skipped (transaction markers, aborted records), where its commit starts.
        with self._shared as book:
            owned = book.partitions.owned()
        for tp in owned:
            position = self._consumer.position(tp)
            if position is not None:
                with self._shared as book:
                    book.partitions.position_known(tp, position)

    def read_finished_offsets(self) -> None:
        """Read the finished offsets each newly assigned partition's last commit recorded.

        Records they name are then skipped: done before this assignment, by this worker
        or another. Until they are read, the partition's records are read again later
        rather than taken. Metadata this worker cannot read is ignored (its jobs are
        redone, which is safe) with one warning; so is a look-up that failed
        ``_FINISHED_LOOKUP_TRIES`` times.
        """
        with self._shared as book:
            needed = book.partitions.needs_finished()
        for tp in needed:
            finished: frozenset[int] = frozenset()
            try:
                committed = self._consumer.committed(tp, PERIODIC_COMMIT_TIMEOUT_S)
            except ConsumerError as error:
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
            if committed is not None and committed[1]:
                offset, metadata = committed
                try:
                    finished = finished_offsets.decode(metadata, offset)
                except finished_offsets.UnreadableMetadataError as error:
                    log.warning(
                        "commit metadata not understood: redoing the jobs after the"
                        " committed offset",
                        partition=tp.partition,
                        committed_offset=offset,
                        reason=str(error),
                    )
            with self._shared as book:
                book.partitions.inherit(tp, finished)
            if finished:
                log.info(
                    "skipping jobs the last commit records as finished",
                    partition=tp.partition,
                    finished=len(finished),
                )
