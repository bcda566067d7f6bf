"""Reading a dead-letter topic as an operator does: no group joined, nothing committed.

The ``DeadLetterReader`` port over kafka-python. Each partition is read on its own, from
where it is asked to start up to where it ended when the read began, so a listing is in
a stable order and letters written meanwhile wait for the next one.
"""

from __future__ import annotations

from collections.abc import Collection, Iterator, Mapping
from typing import Any

from kafka import KafkaConsumer, TopicPartition
from kafka.errors import KafkaError, TopicAuthorizationFailedError

from jobworker.adapters.kafka.bootstrap import open_client
from jobworker.adapters.kafka.letters import letter_from_record
from jobworker.adapters.kafka.log_noise import quiet_topic_lookup
from jobworker.adapters.kafka.quirks import topic_metadata_error, unauthorized_topics
from jobworker.adapters.kafka.settings import KafkaClientSettings
from jobworker.domain.dead_letters import DeadLetterTopicMissing, Letter
from jobworker.domain.errors import AccessRefused, JobWorkerError

# A poll that brings nothing while records remain before the end: the broker is slow or
# away. After this many seconds of that, the read stops and says so.
_STALLED_S = 30.0
_POLL_S = 1.0
_METADATA_TIMEOUT_MS = 10_000


class KafkaDeadLetterReader:
    """Letters of ``topic`` (see ``DeadLetterReader``); ``variable`` names the setting
    that chose the topic, for the messages."""

    def __init__(self, settings: KafkaClientSettings, topic: str, variable: str) -> None:
        self.topic = topic
        self._variable = variable
        self._consumer: Any = open_client(
            KafkaConsumer,
            settings,
            **settings.consumer_kwargs(),
            group_id=None,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
        )

    def partitions(self) -> list[int]:
        """The topic's partitions; raises ``DeadLetterTopicMissing`` or ``AccessRefused``."""
        with quiet_topic_lookup(self.topic):  # a missing topic is said once, below
            partitions = self._consumer.partitions_for_topic(self.topic)
            if partitions and self.topic not in unauthorized_topics(self._consumer):
                return sorted(partitions)
            answer = topic_metadata_error(self._consumer, self.topic, _METADATA_TIMEOUT_MS)
        if self.topic in unauthorized_topics(self._consumer) or isinstance(
            answer, TopicAuthorizationFailedError
        ):
            raise AccessRefused(
                f"Kafka refused access to topic {self.topic!r} ({self._variable}):"
                " TopicAuthorizationFailedError — grant the principal of KAFKA_SASL_USERNAME"
                " READ and DESCRIBE on it (without DESCRIBE, Kafka does not say whether the"
                " topic exists)"
            )
        raise DeadLetterTopicMissing(self.topic)

    def letters(
        self,
        start_at: Mapping[int, int],
        *,
        partitions: Collection[int] | None = None,
        since_ms: int | None = None,
    ) -> Iterator[Letter]:
        existing = self.partitions()
        for partition in existing if partitions is None else sorted(partitions):
            if partition not in existing:
                raise JobWorkerError(
                    f"topic {self.topic!r} has no partition {partition}"
                    f" (it has {len(existing)}: 0-{len(existing) - 1})"
                )
            yield from self._partition(TopicPartition(self.topic, partition), start_at, since_ms)

    def _partition(
        self, tp: TopicPartition, start_at: Mapping[int, int], since_ms: int | None
    ) -> Iterator[Letter]:
        consumer = self._consumer
        try:
            consumer.assign([tp])
            end = consumer.end_offsets([tp])[tp]
            start = start_at.get(tp.partition)
            if start is None:
                start = consumer.beginning_offsets([tp])[tp]
            if since_ms is not None:
                found = consumer.offsets_for_times({tp: since_ms})[tp]
                start = max(start, end if found is None else found.offset)
            if start >= end:
                return
            consumer.seek(tp, start)
        except KafkaError as error:
            raise self._failed(error) from None
        yield from self._read_to(tp, end)

    def _read_to(self, tp: TopicPartition, end: int) -> Iterator[Letter]:
        consumer = self._consumer
        idle_s = 0.0
        while True:
            try:
                if consumer.position(tp) >= end:
                    return
                batches = consumer.poll(timeout_ms=int(_POLL_S * 1000), max_records=500)
            except KafkaError as error:
                raise self._failed(error) from None
            records = batches.get(tp, [])
            idle_s = 0.0 if records else idle_s + _POLL_S
            if idle_s >= _STALLED_S:
                raise JobWorkerError(
                    f"Kafka sent nothing of {self.topic}[{tp.partition}] for {_STALLED_S:g} s"
                    f" though records remain before offset {end}: is the broker away?"
                )
            for record in records:
                if record.offset >= end:
                    return
                yield letter_from_record(record)

    def _failed(self, error: KafkaError) -> JobWorkerError:
        if "Authorization" in type(error).__name__:
            return AccessRefused(
                f"Kafka refused reading topic {self.topic!r} ({self._variable}):"
                f" {type(error).__name__} — grant the principal of KAFKA_SASL_USERNAME READ"
                " and DESCRIBE on it"
            )
        return JobWorkerError(f"cannot read topic {self.topic!r}: {type(error).__name__}: {error}")

    def close(self) -> None:
        self._consumer.close(autocommit=False)
