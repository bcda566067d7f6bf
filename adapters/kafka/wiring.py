"""The Kafka source's options, and its pieces made and wired to each other from them.

``KafkaJobSource`` only moves records between its pieces; which pieces there are, and
which of them each one talks to, is here, so that the source reads as what it does.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from jobworker.adapters.kafka.book import Book, SharedBook
from jobworker.adapters.kafka.commits import OffsetCommits
from jobworker.adapters.kafka.consumer import Consumer, SourceConsumer, TopicPartition
from jobworker.adapters.kafka.flow_control import FlowControl
from jobworker.adapters.kafka.modes import KafkaClient, Ordering, UnreadableBatches
from jobworker.adapters.kafka.offsets import finished_offsets
from jobworker.adapters.kafka.offsets.commit_cadence import CommitCadence
from jobworker.adapters.kafka.offsets.partitions import AssignedPartitions
from jobworker.adapters.kafka.poison import PoisonPolicy
from jobworker.adapters.kafka.rebalance import Rebalances
from jobworker.adapters.kafka.records import JobReader
from jobworker.adapters.kafka.settings import KafkaClientSettings

# A commit sent without waiting that has not answered after this long is taken as lost
# (the client fails requests well before).
_COMMIT_PATIENCE_S = 60.0


@dataclass(frozen=True, slots=True)
class SourceOptions:
    """What a ``KafkaJobSource`` does beyond where it reads (see its docstring).

    Taken as valid, like the source's topic and group id: the settings check them (topic
    names, a dead-letter topic that differs, a group id, a window of at least 1) before
    a source is made.
    """

    # Where poison records and unreadable batches go (KAFKA_DLQ_TOPIC).
    dlq_topic: str
    # Named in the dead letters' headers: which worker wrote them.
    worker_id: str = ""
    # A partition's span, from its lowest unfinished offset to its newest taken one: what
    # a restart reads again. A partition whose span is full is paused until it drains.
    max_in_flight_per_partition: int = 1000
    # Done offsets are committed this often, or after this many acks, without waiting
    # for the broker's answer.
    commit_interval_s: float = 0.1
    commit_every: int = 1000
    # Dead letters the topic refuses are retried after this, doubling up to the maximum;
    # writing them takes at most ``dead_letter_budget_s`` of each fetch.
    dead_letter_retry_s: float = 1.0
    dead_letter_max_backoff_s: float = 30.0
    dead_letter_budget_s: float = 1.0
    # What a batch the consumer cannot decode does (see ``poison.PoisonPolicy``).
    unreadable_batches: UnreadableBatches = UnreadableBatches.DEAD_LETTER
    # How long ``close`` waits for each of its commits and for leaving the group.
    close_timeout_s: float = 10.0
    # How long a revoke waits for the revoked partitions' running jobs before its commit.
    revoke_grace_s: float = 5.0
    # KAFKA_ORDERING: ``KEY`` runs the jobs of one record key one at a time, in offset
    # order, ``PARTITION`` one job of a partition at a time, ``NONE`` all at once. Held
    # jobs count in the window.
    ordering: Ordering = Ordering.NONE
    # KAFKA_CLIENT: the library the consumer is made with (``make_consumer``).
    client: KafkaClient = KafkaClient.KAFKA_PYTHON
    clock: Callable[[], float] = time.monotonic


@dataclass(frozen=True, slots=True)
class SourcePieces:
    """The source's pieces, each one's file named by its field."""

    reader: JobReader
    shared: SharedBook
    consumer: SourceConsumer
    commits: OffsetCommits
    flow: FlowControl
    poison: PoisonPolicy
    rebalances: Rebalances


def wire(
    settings: KafkaClientSettings,
    topic: str,
    group_id: str,
    options: SourceOptions,
    *,
    closing: Callable[[], bool],
) -> SourcePieces:
    """The pieces of a source reading ``topic`` in ``group_id``; ``closing`` says when
    the source is closing (the revoke grace is not waited then). Opens the consumer
    (a refused connection raises ``AccessRefused``) and the dead-letter producer; the
    consumer is not subscribed yet."""
    partitions: AssignedPartitions[TopicPartition] = AssignedPartitions(
        options.max_in_flight_per_partition,
        ordering=options.ordering,
        metadata_max_bytes=_metadata_max_bytes(options.client),
    )
    cadence = CommitCadence(
        options.commit_interval_s,
        options.commit_every,
        options.clock,
        patience_s=_COMMIT_PATIENCE_S,
    )
    shared = SharedBook(Book(partitions, cadence))
    consumer = make_consumer(settings, topic, group_id, options.client)
    commits = OffsetCommits(consumer, shared, options.close_timeout_s)
    flow = FlowControl(consumer, shared)
    poison = PoisonPolicy(
        consumer,
        shared,
        commits.done,
        settings,
        dlq_topic=options.dlq_topic,
        worker_id=options.worker_id,
        unreadable_batches=options.unreadable_batches,
        retry_s=options.dead_letter_retry_s,
        max_backoff_s=options.dead_letter_max_backoff_s,
        budget_s=options.dead_letter_budget_s,
        clock=options.clock,
    )
    rebalances = Rebalances(
        consumer,
        shared,
        commits,
        flow,
        revoke_grace_s=options.revoke_grace_s,
        clock=options.clock,
        closing=closing,
    )
    reader = JobReader(keyed=options.ordering == Ordering.KEY)
    return SourcePieces(reader, shared, consumer, commits, flow, poison, rebalances)


def _metadata_max_bytes(client: KafkaClient) -> int:
    # confluent-kafka sends a NUL after the commit metadata (the broker keeps it, and
    # counts it against offset.metadata.max.bytes); finished_offsets.decode drops it.
    limit = finished_offsets.METADATA_MAX_BYTES
    return limit - 1 if client == KafkaClient.CONFLUENT else limit


def make_consumer(
    settings: KafkaClientSettings, topic: str, group_id: str, client: KafkaClient
) -> SourceConsumer:
    """The consumer of ``client``'s library. confluent-kafka is imported only here, when
    chosen: loading librdkafka is start-up time the default does not need."""
    if client == KafkaClient.CONFLUENT:
        from jobworker.adapters.kafka.confluent.consumer import (  # noqa: PLC0415 - see above
            ConfluentConsumer,
        )

        return ConfluentConsumer(settings, topic, group_id)
    return Consumer(settings, topic, group_id)
