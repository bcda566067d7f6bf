"""Contract tests run against a real broker; see tests/support/kafka.py for where it comes from."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

from adapters.kafka import KafkaClientSettings, KafkaJobSource
from tests.support.kafka import create_topic, unique_name


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
    return lambda partitions=1: create_topic(kafka_servers, partitions)


@pytest.fixture
def group_id() -> str:
    return unique_name("group")


@pytest.fixture
def source_factory(
    settings: KafkaClientSettings,
) -> Iterator[Callable[..., KafkaJobSource]]:
    """Make sources that are closed after the test, whatever happens in it."""
    sources: list[KafkaJobSource] = []

    def make(topic: str, group_id: str, **options: Any) -> KafkaJobSource:
        source = KafkaJobSource(options.pop("settings", settings), topic, group_id, **options)
        sources.append(source)
        return source

    yield make
    for source in sources:
        source.close()
