"""librdkafka's messages in the shapes the source reads: records, partitions, batches.

The source and its pieces read a record's ``topic``, ``partition``, ``offset``, ``key``,
``value``, ``headers`` and ``timestamp`` as attributes (kafka-python's
``ConsumerRecord``); a confluent ``Message`` has methods instead, so each is copied
into a ``ConfluentRecord`` once. Partitions are kafka-python's ``TopicPartition`` named
tuple on both sides of the seam.

A message with an error is not a record. librdkafka reports a batch it cannot decode
(a CRC mismatch with ``check.crcs``, a corrupt or undecodable compressed batch) as
such a message at the batch's first offset, and reads on past the batch itself; it
keeps neither the batch's bytes nor its last offset. ``sort_messages`` makes these
``UnreadableBatch``es for the poison policy. As kafka-python's fetcher does, a poll
ends a partition's records at its unreadable batch: the records after it are left out
and read again (``resume_at``), so that with KAFKA_UNREADABLE_BATCHES=fail none of them
runs. The batch's last offset is the one before the partition's next record in the
same poll; with no record after it (the batch ends what was fetched) it is the first.
"""

from __future__ import annotations

from collections.abc import Sequence
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


@dataclass(slots=True)
class SortedMessages:
    """One poll's messages: records per partition, unreadable batches, other errors, and
    where to read again the partitions whose records were cut at an unreadable batch."""

    records: dict[TopicPartition, list[Any]] = field(default_factory=dict)
    unreadable: list[UnreadableBatch] = field(default_factory=list)
    errors: list[Any] = field(default_factory=list)
    resume_at: dict[TopicPartition, int] = field(default_factory=dict)


def sort_messages(messages: Sequence[Any]) -> SortedMessages:
    """Sort ``messages`` (confluent ``Message``s, in the order consumed)."""
    sorted_ = SortedMessages()
    # Per partition, the unreadable batch still waiting for the record after it.
    open_batches: dict[TopicPartition, int] = {}
    for message in messages:
        error = message.error()
        topic, partition = message.topic(), message.partition()
        if error is not None:
            if error.code() not in UNREADABLE_CODES or topic is None or partition is None:
                sorted_.errors.append(error)
                continue
            tp = TopicPartition(topic, partition)
            if tp not in sorted_.resume_at and tp not in open_batches:
                first = message.offset()
                batch = UnreadableBatch(topic, partition, first, first, error.str(), None)
                sorted_.unreadable.append(batch)
                open_batches[tp] = len(sorted_.unreadable) - 1
            continue
        tp = TopicPartition(topic, partition)
        if tp in sorted_.resume_at:
            continue  # after an unreadable batch: read again at the next poll
        offset = message.offset()
        if (index := open_batches.pop(tp, None)) is not None:
            batch = sorted_.unreadable[index]
            last = max(batch.first_offset, offset - 1)
            sorted_.unreadable[index] = UnreadableBatch(
                batch.topic, batch.partition, batch.first_offset, last, batch.error, None
            )
            sorted_.resume_at[tp] = offset
            continue
        sorted_.records.setdefault(tp, []).append(
            ConfluentRecord(
                topic,
                partition,
                offset,
                message.key(),
                message.value(),
                message.headers() or [],
                message.timestamp()[1],
            )
        )
    return sorted_
