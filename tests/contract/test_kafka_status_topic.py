"""The status topic as the worker creates it: compacted, and made once however many
workers start (the others find it there and say nothing)."""

from __future__ import annotations

from kafka.admin import ConfigResource, ConfigResourceType
from structlog.testing import capture_logs

from jobworker.adapters.kafka.settings import KafkaClientSettings
from jobworker.adapters.kafka.status import create_status_topic
from tests.support.kafka import admin_client, unique_name


def test_the_status_topic_is_created_compacted_once(
    kafka_servers: str, settings: KafkaClientSettings
) -> None:
    topic = unique_name("jobs") + ".status"
    with capture_logs() as logs:
        create_status_topic(settings, topic)
        create_status_topic(settings, topic)  # a second worker: it exists already
    assert [line["event"] for line in logs] == ["status topic created"]
    with admin_client(kafka_servers) as admin:
        described = admin.describe_configs(
            [ConfigResource(ConfigResourceType.TOPIC, topic)], config_filter="all"
        )
        partitions = admin.describe_topics([topic])[0]["partitions"]
    configs = next(iter(described.values()))[topic]
    policy = configs["cleanup.policy"]
    assert (policy["value"] if isinstance(policy, dict) else policy) == "compact"
    assert len(partitions) == 1
