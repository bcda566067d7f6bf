"""Contract tests run against a real broker; see tests/support/kafka.py for where it comes from."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any

import pytest

from jobworker.adapters.kafka import KafkaClientSettings, KafkaJobSource, SourceOptions
from jobworker.adapters.kafka.modes import KafkaClient
from tests.support.clients import kafka_client, parametrize_kafka_client
from tests.support.kafka import create_topic, produce, task_bytes, unique_name
from tests.support.secure_kafka import SecureBroker, secure_broker

JobsTopic = Callable[..., str]
"""The ``jobs_topic`` fixture: ``jobs_topic(ids_on_partition_0, ids_on_partition_1, …)``."""


@pytest.fixture(scope="session")
def secure_kafka(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SecureBroker]:
    """One SASL_SSL/SCRAM/ACL broker for the session (tests/support/secure_kafka.py):
    fails on CI, skips elsewhere, without java and the Kafka jars."""
    with secure_broker(tmp_path_factory.mktemp("secure-kafka")) as broker:
        yield broker


@pytest.fixture
def settings(kafka_servers: str) -> KafkaClientSettings:
    # Short group timeouts (the broker's minimum session is 6 s) keep rebalances quick.
    return KafkaClientSettings(
        [kafka_servers],
        client_id="contract-tests",
        session_timeout_ms=6_000,
        heartbeat_interval_ms=1_000,
    )


@pytest.fixture
def topic_factory(kafka_servers: str) -> Callable[[int], str]:
    def make(partitions: int = 1) -> str:
        return create_topic(kafka_servers, partitions)

    return make


@pytest.fixture
def jobs_topic(kafka_servers: str) -> JobsTopic:
    """A fresh topic with one partition per sequence of job ids, each holding its jobs
    (key = id, value = a 1 ms SLEEP task) in that order."""

    def make(*ids_per_partition: Sequence[str]) -> str:
        topic = create_topic(kafka_servers, len(ids_per_partition))
        records = [
            (job_id.encode(), task_bytes(job_id), partition)
            for partition, ids in enumerate(ids_per_partition)
            for job_id in ids
        ]
        produce(kafka_servers, topic, records)
        return topic

    return make


@pytest.fixture
def group_id() -> str:
    return unique_name("group")


__all__ = ["kafka_client"]

pytest_generate_tests = parametrize_kafka_client


@pytest.fixture
def source_factory(
    settings: KafkaClientSettings, kafka_client: KafkaClient
) -> Iterator[Callable[..., KafkaJobSource]]:
    """Make sources that are closed after the test, whatever happens in it, with each
    Kafka client in turn (``kafka_client``)."""
    sources: list[KafkaJobSource] = []

    def make(topic: str, group_id: str, **options: Any) -> KafkaJobSource:
        options.setdefault("dlq_topic", f"{topic}.dlq")  # what KAFKA_DLQ_TOPIC defaults to
        options.setdefault("client", kafka_client)
        client = options.pop("settings", settings)
        source = KafkaJobSource(client, topic, group_id, SourceOptions(**options))
        sources.append(source)
        return source

    yield make
    for source in sources:
        source.close()
