"""The fault tier runs each scenario with each Kafka client (KAFKA_CLIENT)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from jobworker.adapters.kafka.modes import KafkaClient
from tests.support.fixtures import StartWorker


@pytest.fixture(params=list(KafkaClient), ids=str)
def kafka_client(request: pytest.FixtureRequest) -> KafkaClient:
    return KafkaClient(request.param)


@pytest.fixture
def start_worker(start_worker: StartWorker, kafka_client: KafkaClient) -> Iterator[StartWorker]:
    """The shared ``start_worker``, with ``KAFKA_CLIENT`` set unless a test sets it."""

    def start(name: str, settings: dict[str, str]) -> object:
        return start_worker(name, {"KAFKA_CLIENT": str(kafka_client)} | settings)

    yield start  # type: ignore[misc]
