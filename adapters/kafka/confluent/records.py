"""librdkafka's messages in the shapes the source reads, and the records held between polls.

The source and its pieces read a record's ``topic``, ``partition``, ``offset``, ``key``,
``value``, ``headers`` and ``timestamp`` as attributes (kafka-python's
``ConsumerRecord``); a confluent ``Message`` has methods instead, so each is copied
into a ``ConfluentRecord`` once. Partitions are kafka-python's ``TopicPartition`` named
tuple on both sides of the seam.

Why records are held here (``HeldRecords``): librdkafka's pause and seek drop what it
has fetched ahead for the partition, and its next fetch of it waits for the one still
in flight (a long poll of up to ``fetch.wait.max.ms``, 500 ms): measured, every
pause-resume or seek cost 200-500 ms before the next record came. The source pauses
every partition whenever the engine's queue is full and seeks back the records a full
window cannot take, many times a second under load. So records librdkafka delivered
are held in order per partition; pausing stops handing a partition's out, and a seek
back to a record just handed out puts it back in front. librdkafka itself is paused
only for a partition with ``limit`` records held (memory stays bounded).

A message with an error is not a record. librdkafka reports a batch it cannot decode
(a CRC mismatch with ``check.crcs``, a corrupt or undecodable compressed batch) as
such a message at the batch's first offset, and reads on past the batch itself; it
keeps neither the batch's bytes nor its last offset. It is held in its place as an
``UnreadableBatch``: as kafka-python's fetcher does, handing out stops at it, so that
with KAFKA_UNREADABLE_BATCHES=fail none of the records after it runs. Its last offset
is the one before the partition's next record, once that is held; the first when the
batch ends what was held.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from kafka import TopicPartition

from jobworker.adapters.kafka.quirks import UnreadableBatch

# librdkafka's codes for a batch it could not decode (confluent_kafka.KafkaError
# _BAD_MSG, _BAD_COMPRESSION): written out so this module does not import librdkafka.
BAD_MESSAGE = -199
BAD_COMPRESSION = -198
UNREADABLE_CODES = frozenset({BAD_MESSAGE, BAD_COMPRESSION})


class ConfluentRecord(NamedTuple):
    """A fetched record with kafka-python's attribute names (see the module docstring)."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: list[tuple[str, bytes]]
    timestamp: int


Entry = ConfluentRecord | UnreadableBatch


@dataclass(slots=True)
class Sorted:
    """One poll's messages: per partition, its records and unreadable batches in order;
    and the other errors."""

    entries: dict[TopicPartition, list[Entry]] = field(default_factory=dict)
    errors: list[Any] = field(default_factory=list)


def sort_messages(messages: Sequence[Any]) -> Sorted:
    """Sort ``messages`` (confluent ``Message``s, in the order consumed)."""
    sorted_ = Sorted()
    for message in messages:
        error = message.error()
        topic, partition = message.topic(), message.partition()
        if error is not None:
            if error.code() in UNREADABLE_CODES and topic is not None and partition is not None:
                first = message.offset()
                batch = UnreadableBatch(topic, partition, first, first, error.str(), None)
                sorted_.entries.setdefault(TopicPartition(topic, partition), []).append(batch)
            else:
                sorted_.errors.append(error)
            continue
        record = ConfluentRecord(
            topic,
            partition,
            message.offset(),
            message.key(),
            message.value(),
            message.headers() or [],
            message.timestamp()[1],
        )
        sorted_.entries.setdefault(TopicPartition(topic, partition), []).append(record)
    return sorted_


@dataclass(slots=True)
class Taken:
    """What one poll hands out: records per partition, and unreadable batches met."""

    records: dict[TopicPartition, list[Any]] = field(default_factory=dict)
    unreadable: list[UnreadableBatch] = field(default_factory=list)


class HeldRecords:
    """Records librdkafka delivered and the source has not taken, per partition, in
    offset order (see the module docstring). Plain Python: the consumer calls it."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._held: dict[TopicPartition, deque[Entry]] = {}
        self._handed: dict[TopicPartition, list[ConfluentRecord]] = {}
        self._turn = 0

    def add(self, entries: dict[TopicPartition, list[Entry]]) -> None:
        for tp, more in entries.items():
            self._held.setdefault(tp, deque()).extend(more)

    def take(self, max_records: int, paused: set[TopicPartition]) -> Taken:
        """Up to ``max_records`` records of partitions not ``paused``, taking turns
        between partitions poll by poll; each partition's stop at an unreadable batch,
        which is handed out (once) instead."""
        taken = Taken()
        self._handed = {}
        partitions = [tp for tp, held in self._held.items() if held and tp not in paused]
        if not partitions:
            return taken
        self._turn = (self._turn + 1) % len(partitions)
        room = max_records
        for tp in partitions[self._turn :] + partitions[: self._turn]:
            held = self._held[tp]
            records: list[ConfluentRecord] = []
            while held and room > 0:
                entry = held[0]
                if isinstance(entry, UnreadableBatch):
                    if records:
                        break  # hand out what is before it first
                    held.popleft()
                    taken.unreadable.append(self._bounded(entry, held))
                    break
                held.popleft()
                records.append(entry)
                room -= 1
            if records:
                taken.records[tp] = records
                self._handed[tp] = records
            if room <= 0:
                break
        return taken

    @staticmethod
    def _bounded(batch: UnreadableBatch, after: deque[Entry]) -> UnreadableBatch:
        if not after:
            return batch
        nxt = after[0]
        next_offset = nxt.first_offset if isinstance(nxt, UnreadableBatch) else nxt.offset
        last = max(batch.first_offset, next_offset - 1)
        return UnreadableBatch(
            batch.topic, batch.partition, batch.first_offset, last, batch.error, batch.raw
        )

    def rewind(self, tp: TopicPartition, offset: int) -> bool:
        """Put the records handed out since the last ``take`` from ``offset`` on back in
        front; True if that covered ``offset``, or it is already next."""
        handed = self._handed.get(tp, [])
        for index, record in enumerate(handed):
            if record.offset == offset:
                self._held.setdefault(tp, deque()).extendleft(reversed(handed[index:]))
                self._handed[tp] = handed[:index]
                return True
        return self.next_offset(tp) == offset

    def next_offset(self, tp: TopicPartition) -> int | None:
        """The offset of the first entry held for ``tp``; None with nothing held."""
        held = self._held.get(tp)
        if not held:
            return None
        entry = held[0]
        return entry.first_offset if isinstance(entry, UnreadableBatch) else entry.offset

    def count(self, tp: TopicPartition) -> int:
        return len(self._held.get(tp, ()))

    def held_partitions(self) -> list[TopicPartition]:
        return [tp for tp, held in self._held.items() if held]

    def total(self) -> int:
        return sum(len(held) for held in self._held.values())

    def drop(self, partitions: Iterable[TopicPartition]) -> None:
        for tp in partitions:
            self._held.pop(tp, None)
            self._handed.pop(tp, None)
