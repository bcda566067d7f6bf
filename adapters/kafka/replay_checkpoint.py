"""Where replay keeps what it has sent: the offsets of a consumer group of its own.

The ``ReplayCheckpoint`` port over committed offsets. Group ``<KAFKA_GROUP_ID>.dlq-replay``
holds, per partition of a dead-letter topic, the first letter not replayed (the
committed offset) and the letters above it that were (in the commit's metadata, as the
worker records finished jobs: ``offsets/finished_offsets.py``). The group is never
joined: its offsets are written directly, so no worker and no rebalance is involved,
and `kafka-consumer-groups --describe` shows replay's progress like any group's.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import structlog
from kafka import KafkaConsumer, TopicPartition
from kafka.errors import KafkaError
from kafka.structs import OffsetAndMetadata

from jobworker.adapters.kafka.bootstrap import open_client
from jobworker.adapters.kafka.offsets import finished_offsets
from jobworker.adapters.kafka.quirks import never_create_topics
from jobworker.adapters.kafka.settings import KafkaClientSettings
from jobworker.domain.dead_letters import ReplayProgress
from jobworker.domain.errors import AccessRefused, JobWorkerError

log = structlog.get_logger(__name__)

# Each gap costs two varints of at most 5 bytes (offsets below 2**35) in the metadata:
# 250 gaps take at most 3,400 of the broker's default 4,096 bytes.
MAX_GAPS = 250
_TIMEOUT_MS = 10_000


class KafkaReplayCheckpoint:
    """The checkpoint of replays of ``topic`` in consumer group ``group_id``."""

    max_gaps = MAX_GAPS
    # The metadata decoder refuses a claim over more offsets (as garbage): what a
    # checkpoint records must read back.
    max_span = finished_offsets.MAX_OFFSETS

    def __init__(self, settings: KafkaClientSettings, topic: str, group_id: str) -> None:
        self.topic = topic
        self.group_id = group_id
        self._consumer: Any = open_client(
            KafkaConsumer,
            settings,
            **settings.client_kwargs(),
            group_id=group_id,
            enable_auto_commit=False,
        )
        # Its offset requests name the topic: a missing one must stay missing.
        never_create_topics(self._consumer)
        self._committed: dict[TopicPartition, OffsetAndMetadata] = {}

    def load(self) -> dict[int, ReplayProgress]:
        progress: dict[int, ReplayProgress] = {}
        for partition in sorted(self._consumer.partitions_for_topic(self.topic) or ()):
            tp = TopicPartition(self.topic, partition)
            try:
                committed = self._consumer.committed(tp, metadata=True, timeout_ms=_TIMEOUT_MS)
            except KafkaError as error:
                raise self._failed("read", error) from None
            if committed is None:
                continue
            self._committed[tp] = committed
            try:
                done = finished_offsets.decode(committed.metadata or "", committed.offset)
            except finished_offsets.UnreadableMetadataError as error:
                # An operator moved the group's offset by hand: take it as it is.
                log.warning(
                    "replay checkpoint metadata not ours; using its offset alone",
                    group=self.group_id,
                    partition=partition,
                    problem=str(error),
                )
                done = frozenset()
            progress[partition] = ReplayProgress(committed.offset, set(done))
        return progress

    def check_writable(self) -> None:
        """Commit what ``load`` read, unchanged (for a group that has nothing yet: the
        first partition's first offset, which says the same: nothing replayed). READ on
        the group is what a commit needs; DESCRIBE alone lets ``load`` through."""
        offsets = dict(self._committed)
        partitions = self._consumer.partitions_for_topic(self.topic)
        if not offsets and not partitions:
            return  # no such topic: the reader says so
        if not offsets:
            tp = TopicPartition(self.topic, min(partitions))
            try:
                first = self._consumer.beginning_offsets([tp], timeout_ms=_TIMEOUT_MS)[tp]
            except KafkaError as error:
                raise self._failed("read", error) from None
            offsets = {tp: OffsetAndMetadata(first, "", -1)}
        try:
            self._consumer.commit(offsets, timeout_ms=_TIMEOUT_MS)
        except KafkaError as error:
            raise self._failed("write", error) from None

    def save(self, progress: Mapping[int, ReplayProgress]) -> None:
        offsets = {}
        for partition, each in progress.items():
            if each.next_offset is None:
                continue
            metadata = finished_offsets.encode(each.next_offset, each.done)
            if not finished_offsets.fits(metadata):  # MAX_GAPS keeps it from happening
                raise JobWorkerError(f"replay checkpoint of partition {partition} is full")
            offsets[TopicPartition(self.topic, partition)] = OffsetAndMetadata(
                each.next_offset, metadata, -1
            )
        if not offsets:
            return
        try:
            self._consumer.commit(offsets, timeout_ms=_TIMEOUT_MS)
        except KafkaError as error:
            raise self._failed("write", error) from None

    def _failed(self, what: str, error: KafkaError) -> JobWorkerError:
        name = type(error).__name__
        if "Authorization" in name:
            return AccessRefused(
                f"Kafka refused the replay checkpoint's group {self.group_id!r}: {name} —"
                " grant the principal of KAFKA_SASL_USERNAME READ on that group"
                " (<KAFKA_GROUP_ID>.dlq-replay)"
            )
        return JobWorkerError(
            f"cannot {what} the replay checkpoint (group {self.group_id!r}): {name}: {error}"
        )

    def close(self) -> None:
        self._consumer.close(autocommit=False)
