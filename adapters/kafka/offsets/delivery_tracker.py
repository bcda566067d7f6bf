"""Which offsets of a partition may be committed, when jobs finish in any order.

A partition's jobs are started in offset order but finish in any order. The committed
offset is the next one a restarted consumer reads, so it must never pass a job that is
not done: the safe position is the lowest offset still pending, or one past the
highest started offset when nothing is pending.
"""

from __future__ import annotations

import heapq
from collections.abc import Hashable, Iterable
from dataclasses import dataclass, field


@dataclass(slots=True)
class _PartitionLedger:
    pending: set[int] = field(default_factory=set)
    # The same offsets as ``pending`` plus already-done ones popped lazily: a min-heap
    # keeps "lowest pending" cheap while offsets complete out of order.
    pending_heap: list[int] = field(default_factory=list)
    next_after_started: int = 0
    committed: int = 0

    def lowest_pending(self) -> int | None:
        heap = self.pending_heap
        while heap and heap[0] not in self.pending:
            heapq.heappop(heap)
        return heap[0] if heap else None


class DeliveryTracker:
    """Per-partition bookkeeping of started and done offsets.

    Partition keys are opaque hashables (a Kafka source uses ``TopicPartition``). The
    first ``started`` offset of a partition is taken as its committed position: the
    consumer began reading there, so committing it again would say nothing new.

    Not thread-safe: a source that touches it from several threads holds a lock.
    """

    def __init__(self) -> None:
        self._ledgers: dict[Hashable, _PartitionLedger] = {}

    def started(self, partition: Hashable, offset: int) -> None:
        """Record that the job at ``offset`` was handed out and is not done yet."""
        ledger = self._ledgers.get(partition)
        if ledger is None:
            ledger = _PartitionLedger(next_after_started=offset, committed=offset)
            self._ledgers[partition] = ledger
        if offset in ledger.pending:
            return
        ledger.pending.add(offset)
        heapq.heappush(ledger.pending_heap, offset)
        ledger.next_after_started = max(ledger.next_after_started, offset + 1)

    def done(self, partition: Hashable, offset: int) -> bool:
        """Record that the job at ``offset`` is done.

        Returns False (and changes nothing) for a partition that was forgotten or never
        seen, or an offset that is not pending: such acks belong to a delivery this
        tracker no longer owns.
        """
        ledger = self._ledgers.get(partition)
        if ledger is None or offset not in ledger.pending:
            return False
        ledger.pending.discard(offset)
        return True

    def committable(self, partition: Hashable) -> int | None:
        """The offset to commit for ``partition``, or None when it has not moved.

        That is the lowest pending offset, or one past the highest started offset when
        nothing is pending; None when it equals the last committed offset or the
        partition is unknown.
        """
        ledger = self._ledgers.get(partition)
        if ledger is None:
            return None
        lowest = ledger.lowest_pending()
        position = ledger.next_after_started if lowest is None else lowest
        return position if position > ledger.committed else None

    def position(self, partition: Hashable) -> int | None:
        """Where a restart should read ``partition`` from now, moved or not; None if unknown.

        The lowest pending offset, or one past the highest started one.
        """
        ledger = self._ledgers.get(partition)
        if ledger is None:
            return None
        lowest = ledger.lowest_pending()
        return ledger.next_after_started if lowest is None else lowest

    def committed(self, partition: Hashable) -> int | None:
        """The last committed (or first started) offset of ``partition``; None if unknown."""
        ledger = self._ledgers.get(partition)
        return None if ledger is None else ledger.committed

    def finished_above(self, partition: Hashable) -> list[int]:
        """The done offsets above ``position``, ascending: what a restart would redo.

        A restart reads from the committed offset, so these are the jobs it would run
        again unless told that they are finished.
        """
        ledger = self._ledgers.get(partition)
        if ledger is None or ledger.lowest_pending() is None:
            return []
        return sorted({o for o in ledger.pending_heap if o not in ledger.pending})

    def skipped_to(self, partition: Hashable, offset: int, start: int) -> None:
        """Record that the consumer moved on to ``offset`` past records it never handed out.

        Transaction markers and aborted transactions' records take offsets but carry no
        job: with nothing pending, the partition may commit up to ``offset``, so a
        transactional topic's committed offset reaches its end. ``start`` is where the
        consumer began reading, for a partition with no job started yet. Never moves
        the partition back.
        """
        ledger = self._ledgers.get(partition)
        if ledger is None:
            if offset <= start:
                return
            ledger = _PartitionLedger(next_after_started=start, committed=start)
            self._ledgers[partition] = ledger
        ledger.next_after_started = max(ledger.next_after_started, offset)

    def mark_committed(self, partition: Hashable, offset: int) -> None:
        """Record that ``offset`` was committed for ``partition`` (ignored when unknown)."""
        ledger = self._ledgers.get(partition)
        if ledger is not None:
            ledger.committed = max(ledger.committed, offset)

    def next_to_start(self, partition: Hashable) -> int | None:
        """One past the highest started offset of ``partition``; None if none started."""
        ledger = self._ledgers.get(partition)
        return None if ledger is None else ledger.next_after_started

    def in_flight(self, partition: Hashable) -> int:
        """How many jobs of ``partition`` were started and are not done yet."""
        ledger = self._ledgers.get(partition)
        return 0 if ledger is None else len(ledger.pending)

    def lowest_pending(self, partition: Hashable) -> int | None:
        """The lowest offset of ``partition`` started and not done, or None."""
        ledger = self._ledgers.get(partition)
        return None if ledger is None else ledger.lowest_pending()

    def span(self, partition: Hashable) -> int:
        """How many offsets a restart would read again: 0 when nothing is pending.

        That is one past the highest started offset minus the lowest pending one. It
        bounds both the redelivery after a crash and this tracker's memory (``held``):
        a source that stops starting offsets once the span reaches its window keeps
        both bounded however long one job stays unfinished.
        """
        ledger = self._ledgers.get(partition)
        lowest = None if ledger is None else ledger.lowest_pending()
        return 0 if ledger is None or lowest is None else ledger.next_after_started - lowest

    def held(self, partition: Hashable) -> int:
        """How many offsets of ``partition`` the tracker keeps in memory; at most ``span``.

        Done offsets above the lowest pending one are kept until it is done.
        """
        ledger = self._ledgers.get(partition)
        if ledger is None:
            return 0
        ledger.lowest_pending()  # drops done offsets below the lowest pending one
        return len(ledger.pending_heap)

    def forget(self, partition: Hashable) -> None:
        """Drop all bookkeeping of ``partition`` (it was revoked); later acks are ignored."""
        self._ledgers.pop(partition, None)

    def partitions(self) -> Iterable[Hashable]:
        """The partitions with bookkeeping, in no particular order."""
        return list(self._ledgers)
