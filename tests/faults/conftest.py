"""The fault tier runs each scenario with each Kafka client (KAFKA_CLIENT)."""

from tests.support.clients import kafka_client, parametrize_kafka_client, start_worker

__all__ = ["kafka_client", "start_worker"]

pytest_generate_tests = parametrize_kafka_client
