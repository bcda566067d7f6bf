"""The consumer group's progress through the jobs topic, from the broker's offsets.

Per partition: its start and end, the group's committed offset, and the jobs the commit
records as finished beyond that offset (its metadata: ``offsets/finished_offsets.py``).
So it knows the true backlog of partitions no worker holds, where a lag exporter would
count finished work as waiting.
"""

from __future__ import annotations

from kafka import TopicPartition
from kafka.admin import KafkaAdminClient, OffsetSpec
from kafka.errors import KafkaError

from jobworker.adapters.kafka.admin import LazyAdminClient
from jobworker.adapters.kafka.offsets import finished_offsets
from jobworker.adapters.kafka.settings import KafkaClientSettings
from jobworker.domain.errors import JobWorkerError
from jobworker.domain.fleet import GroupPartition


class KafkaGroupProgress:
    """``GroupProgressProbe`` of ``group_id`` in ``topic``."""

    def __init__(
        self, settings: KafkaClientSettings, topic: str, group_id: str, timeout_s: float = 5.0
    ) -> None:
        self._topic = topic
        self._group_id = group_id
        self._timeout_ms = int(timeout_s * 1000)
        self._admin = LazyAdminClient(settings, self._timeout_ms)

    def measure(self) -> list[GroupPartition]:
        try:
            return self._measure(self._admin.get())
        except KafkaError as error:
            self.close()  # a new client next time (LazyAdminClient says why)
            raise JobWorkerError(
                f"cannot read the offsets of group {self._group_id!r} in {self._topic!r}:"
                f" {type(error).__name__}: {error}"
            ) from None

    def _measure(self, admin: KafkaAdminClient) -> list[GroupPartition]:
        described = admin.describe_topics([self._topic])
        partitions = sorted(
            TopicPartition(self._topic, p["partition_index"])
            for topic in described
            if topic.get("error_code") == 0
            for p in topic.get("partitions", ())
        )
        if not partitions:
            raise JobWorkerError(f"Kafka has no topic {self._topic!r} (KAFKA_TOPIC)")
        starts = self._offsets(admin, partitions, OffsetSpec.EARLIEST)
        ends = self._offsets(admin, partitions, OffsetSpec.LATEST)
        committed = admin.list_group_offsets({self._group_id: partitions}).get(self._group_id, {})
        found = []
        for tp in partitions:
            meta = committed.get(tp)
            offset = meta.offset if meta is not None and meta.offset >= 0 else None
            found.append(
                GroupPartition(
                    topic=tp.topic,
                    partition=tp.partition,
                    start=starts.get(tp, 0),
                    end=ends.get(tp, 0),
                    committed=offset,
                    finished_beyond=_finished_beyond(meta, offset, ends.get(tp, 0)),
                )
            )
        return found

    def _offsets(
        self, admin: KafkaAdminClient, partitions: list[TopicPartition], spec: OffsetSpec
    ) -> dict[TopicPartition, int]:
        answer = admin.list_partition_offsets(
            dict.fromkeys(partitions, spec), timeout_ms=self._timeout_ms
        )
        return {tp: found.offset for tp, found in answer.items()}

    def close(self) -> None:
        self._admin.close()


def _finished_beyond(meta: object, committed: int | None, end: int) -> int:
    """Jobs the commit's metadata records as finished beyond ``committed`` (and before
    ``end``); 0 when it records none, or is not ours."""
    metadata = getattr(meta, "metadata", None)
    if committed is None or not metadata:
        return 0
    try:
        finished = finished_offsets.decode(metadata, committed)
    except finished_offsets.UnreadableMetadataError:
        return 0
    return sum(1 for offset in finished if committed <= offset < end)
