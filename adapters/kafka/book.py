"""The Kafka source's bookkeeping, shared by its pieces behind one lock.

``fetch`` and the commits run on the engine's fetch greenlet, ``ack`` on any greenlet,
the rebalance handler and the dead-letter callbacks on kafka-python's I/O thread (a
greenlet once gevent has patched the process). They all read and change the same
per-partition state, commit cadence and totals; ``SharedBook`` hands it out only inside
``with``, so none of them can touch it unlocked. The lock is never held across I/O.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from types import TracebackType

from jobworker.adapters.kafka.consumer import TopicPartition
from jobworker.adapters.kafka.offsets.commit_cadence import CommitCadence
from jobworker.adapters.kafka.offsets.partitions import AssignedPartitions
from jobworker.adapters.kafka.stats import SourceStats


@dataclass(slots=True)
class Book:
    """Every partition's state (the source only moves records in and out of it), when
    the next commit is due, and the totals so far."""

    partitions: AssignedPartitions[TopicPartition]
    cadence: CommitCadence
    stats: SourceStats = field(default_factory=SourceStats)


class SharedBook:
    """``with shared as book:`` holds the lock while ``book`` is used."""

    def __init__(self, book: Book) -> None:
        self._book = book
        self._lock = threading.Lock()

    def __enter__(self) -> Book:
        self._lock.acquire()
        return self._book

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self._lock.release()

    @property
    def stats(self) -> SourceStats:
        """The current totals: one frozen snapshot, read without the lock."""
        return self._book.stats
