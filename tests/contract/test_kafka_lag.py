"""The broker's view of a group's lag, which the lag gauge falls back on."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from kafka import KafkaConsumer, TopicPartition
from kafka.structs import OffsetAndMetadata

from jobworker.adapters.kafka import KafkaClientSettings
from jobworker.adapters.kafka.lag import BrokerOffsetsMonitor, GroupOffsetsProbe, PartitionOffsets
from tests.support.kafka import admin_client, produce, task_bytes

pytestmark = pytest.mark.contract


def _commit(servers: str, group_id: str, offsets: dict[TopicPartition, int]) -> None:
    consumer = KafkaConsumer(bootstrap_servers=servers, group_id=group_id)
    try:
        consumer.commit({tp: OffsetAndMetadata(offset, "", -1) for tp, offset in offsets.items()})
    finally:
        consumer.close()


def test_the_probe_reads_ends_and_committed_offsets_or_the_start_where_none(
    kafka_servers: str,
    topic_factory: Callable[[int], str],
    group_id: str,
    settings: KafkaClientSettings,
) -> None:
    topic = topic_factory(2)
    produce(
        kafka_servers,
        topic,
        [(b"a", task_bytes("a"), 0)] * 5 + [(b"b", task_bytes("b"), 1)] * 3,
    )
    first, second = TopicPartition(topic, 0), TopicPartition(topic, 1)
    _commit(kafka_servers, group_id, {first: 2})
    # The partition never committed counts from its earliest offset, which is not 0.
    with admin_client(kafka_servers) as admin:
        admin.delete_records({second: 1})
    probe = GroupOffsetsProbe(settings, group_id)
    try:
        measured = probe.measure([first, second])
    finally:
        probe.close()

    assert measured == {first: PartitionOffsets(5, 2), second: PartitionOffsets(3, 1)}


def test_a_standby_owning_no_partition_still_hears_from_the_broker(
    settings: KafkaClientSettings, group_id: str
) -> None:
    # Readiness reads the time of the monitor's last answer: a replica with no
    # partitions must still ask the broker something, or it would never be ready.
    probe = GroupOffsetsProbe(settings, group_id)
    monitor = BrokerOffsetsMonitor(probe, list)
    try:
        monitor.refresh()
    finally:
        monitor.stop()

    assert monitor.latest() == {}
    answered = monitor.seconds_since_answer()
    assert answered is not None and answered < 5
