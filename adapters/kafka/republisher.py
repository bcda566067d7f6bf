"""Writing replayed records back to a jobs topic: the ``RecordRepublisher`` port."""

from __future__ import annotations

import contextlib
from typing import Any

from kafka import KafkaProducer
from kafka.errors import (
    ClusterAuthorizationFailedError,
    KafkaError,
    KafkaTimeoutError,
    TopicAuthorizationFailedError,
)

from jobworker.adapters.kafka.bootstrap import open_client
from jobworker.adapters.kafka.log_noise import quiet_topic_lookup
from jobworker.adapters.kafka.quirks import never_create_topics, pace_unready_sends
from jobworker.adapters.kafka.refusals import is_write_refusal
from jobworker.adapters.kafka.settings import KafkaClientSettings
from jobworker.domain.dead_letters import RecordCopy
from jobworker.domain.errors import AccessRefused, JobWorkerError

# How long to wait for a topic's metadata, and for a chunk's acknowledgements.
METADATA_WAIT_S = 5.0
FLUSH_WAIT_S = 30.0


class ReplayTargetMissing(JobWorkerError):  # noqa: N818 - reads as the fact it is
    """The topic replay would write to is not there."""


class KafkaRecordRepublisher:
    """Sends records with their key, value and headers as given (acks=all).

    The producer is idempotent, kafka-python's default: a send it retries after a lost
    answer is not written twice.
    """

    def __init__(self, settings: KafkaClientSettings) -> None:
        self._producer: Any = open_client(
            KafkaProducer,
            settings,
            **settings.producer_kwargs(),
            acks="all",
            max_block_ms=int(METADATA_WAIT_S * 1000),
        )
        never_create_topics(self._producer)
        # A replay (the console's button, ``jobworker dlq replay``) under way when the
        # broker freezes would otherwise spin the hub until its requests time out.
        pace_unready_sends(self._producer)
        self._known: set[str] = set()
        self._pending: list[Any] = []
        self._closed = False

    def send(self, topic: str, record: RecordCopy) -> None:
        if topic not in self._known:
            self._check(topic)
        value = record.value
        if record.key is None and value is None:
            value = b""  # a record needs one of them; the empty value stands for none
        try:
            future = self._producer.send(
                topic, key=record.key, value=value, headers=list(record.headers)
            )
        except KafkaError as error:
            raise self._refusal(topic, error) or JobWorkerError(
                f"cannot send to {topic!r}: {type(error).__name__}: {error}"
            ) from None
        self._pending.append((topic, future))

    def flush(self) -> list[BaseException | None]:
        pending, self._pending = self._pending, []
        with contextlib.suppress(KafkaTimeoutError):  # the futures pending say so below
            self._producer.flush(timeout=FLUSH_WAIT_S)
        outcomes: list[BaseException | None] = []
        for topic, future in pending:
            if not future.is_done:
                outcomes.append(KafkaTimeoutError(f"not acknowledged within {FLUSH_WAIT_S:g} s"))
            elif future.failed():
                outcomes.append(self._refusal(topic, future.exception) or future.exception)
            else:
                outcomes.append(None)
        return outcomes

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._producer.close(timeout=FLUSH_WAIT_S)

    def _check(self, topic: str) -> None:
        try:
            with quiet_topic_lookup(topic):
                self._producer.partitions_for(topic)
        except KafkaTimeoutError:
            raise ReplayTargetMissing(
                f"Kafka has no topic {topic!r} to replay to (no metadata for it within"
                f" {METADATA_WAIT_S:g} s): create it, or name another with --to"
            ) from None
        except KafkaError as error:
            raise self._refusal(topic, error) or JobWorkerError(
                f"cannot write to {topic!r}: {type(error).__name__}: {error}"
            ) from None
        self._known.add(topic)

    @staticmethod
    def _refusal(topic: str, error: BaseException) -> AccessRefused | None:
        if not is_write_refusal(error):
            return None
        refusal = type(error).__name__
        if not isinstance(error, ClusterAuthorizationFailedError | TopicAuthorizationFailedError):
            # kafka-python's wrapping of the idempotent producer's first request refused
            # as a cluster operation: the principal may WRITE to no topic at all.
            refusal = "ClusterAuthorizationFailedError for InitProducerId"
        return AccessRefused(
            f"Kafka refused writing to topic {topic!r}: {refusal} — grant the principal of"
            " KAFKA_SASL_USERNAME WRITE and DESCRIBE on it, or replay to another topic"
            " with --to"
        )
