"""Each Kafka client library (KAFKA_CLIENT) for the tiers that run against a broker:
a test that asks for ``kafka_client`` (itself, or through ``start_worker`` in the e2e
and fault tiers) runs once with each. A test that only makes sense for kafka-python
marks itself ``@pytest.mark.kafka_python_only("why")`` and runs with that one alone:
it does not apply to the other, so it is not generated for it (rather than skipped)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from jobworker.adapters.kafka.modes import KafkaClient
from tests.support.fixtures import StartWorker


def parametrize_kafka_client(metafunc: pytest.Metafunc) -> None:
    """A tier's ``pytest_generate_tests``."""
    if "kafka_client" not in metafunc.fixturenames:
        return
    only = metafunc.definition.get_closest_marker("kafka_python_only") is not None
    clients = [KafkaClient.KAFKA_PYTHON] if only else list(KafkaClient)
    metafunc.parametrize("kafka_client", clients, ids=str, indirect=True)


@pytest.fixture
def kafka_client(request: pytest.FixtureRequest) -> KafkaClient:
    return KafkaClient(request.param)


@pytest.fixture
def start_worker(start_worker: StartWorker, kafka_client: KafkaClient) -> Iterator[StartWorker]:
    """The shared ``start_worker`` (tests/support/fixtures.py), with ``KAFKA_CLIENT`` set
    unless a test sets it; imported into a tier's conftest, it takes that name's place."""

    def start(name: str, settings: dict[str, str]) -> object:
        return start_worker(name, {"KAFKA_CLIENT": str(kafka_client)} | settings)

    yield start  # type: ignore[misc]
