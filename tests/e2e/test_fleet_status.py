"""Fleet status on Kafka: a worker run as the CLI publishes its status records to
``<topic>.status``, a topic it creates compacted; SIGTERM ends its records with a
tombstone, SIGKILL just ends them."""

from __future__ import annotations

import json
import signal
from typing import Any

from kafka import KafkaConsumer, TopicPartition
from kafka.admin import ConfigResource, ConfigResourceType

from jobworker.adapters.core.process import CoreProcess
from tests.support.e2e import publish, sleep_jobs, worker_settings
from tests.support.fixtures import StartWorker
from tests.support.kafka import admin_client, create_topic, unique_name
from tests.support.processes import events_named, wait_while_running

TIMEOUT_S = 60


def status_records(servers: str, topic: str) -> list[tuple[str, dict[str, Any] | None]]:
    """Every record of the status topic, in order: (key, decoded value or None)."""
    consumer = KafkaConsumer(bootstrap_servers=servers, enable_auto_commit=False)
    try:
        tp = TopicPartition(topic, 0)
        if not consumer.partitions_for_topic(topic):
            return []
        consumer.assign([tp])
        consumer.seek_to_beginning(tp)
        end = consumer.end_offsets([tp])[tp]
        records: list[tuple[str, dict[str, Any] | None]] = []
        while consumer.position(tp) < end:
            for batch in consumer.poll(timeout_ms=500).values():
                records += [
                    (r.key.decode(), None if r.value is None else json.loads(r.value))
                    for r in batch
                ]
        return records
    finally:
        consumer.close()


def latest(servers: str, topic: str, worker_id: str) -> dict[str, Any] | None:
    mine = [value for key, value in status_records(servers, topic) if key == worker_id]
    return mine[-1] if mine else None


def topic_config(servers: str, topic: str, name: str) -> str:
    with admin_client(servers) as admin:
        described = admin.describe_configs(
            [ConfigResource(ConfigResourceType.TOPIC, topic)], config_filter="all"
        )
    configs = next(iter(described.values()))[topic]
    value = configs[name]
    return str(value["value"] if isinstance(value, dict) else value)


def test_status_records_then_a_tombstone_on_sigterm_and_none_on_sigkill(
    kafka_servers: str, core: CoreProcess, start_worker: StartWorker
) -> None:
    # Two workers at once, on topics of their own: one stopped, one killed.
    stopped_topic, killed_topic = create_topic(kafka_servers, 2), create_topic(kafka_servers, 1)
    publish(kafka_servers, stopped_topic, sleep_jobs(20, ms=10, prefix="stopped"))
    publish(kafka_servers, killed_topic, sleep_jobs(5, ms=10, prefix="killed"))
    workers = {
        name: start_worker(
            name,
            worker_settings(
                kafka_servers,
                topic,
                unique_name("group"),
                core.address,
                KAFKA_SESSION_TIMEOUT="8s",
                STATUS_INTERVAL="1s",
            ),
        )
        for name, topic in (("status-stopped", stopped_topic), ("status-killed", killed_topic))
    }
    stopped, killed = workers["status-stopped"], workers["status-killed"]
    stopped_status, killed_status = f"{stopped_topic}.status", f"{killed_topic}.status"

    def shows(topic: str, worker_id: str, jobs: int, partitions: set[int]) -> bool:
        record = latest(kafka_servers, topic, worker_id)
        return (
            record is not None
            and record["finished"].get("SUCCEEDED") == jobs
            and {p["partition"] for p in record["partitions"]} == partitions
        )

    assert wait_while_running(
        lambda: shows(stopped_status, "status-stopped", 20, {0, 1}), TIMEOUT_S, stopped
    )
    assert wait_while_running(
        lambda: shows(killed_status, "status-killed", 5, {0}), TIMEOUT_S, killed
    )
    record = latest(kafka_servers, stopped_status, "status-stopped")
    assert record is not None
    assert record["v"] == 1
    assert record["worker_id"] == "status-stopped"
    assert record["interval_s"] == 1.0
    assert record["pid"] == stopped.process.pid  # type: ignore[union-attr]
    assert {p["topic"] for p in record["partitions"]} == {stopped_topic}
    assert record["last_poll_at_ms"] is not None
    assert record["last_commit_at_ms"] is not None
    assert record["jobs_in_flight"] == 0
    assert topic_config(kafka_servers, stopped_status, "cleanup.policy") == "compact"

    assert events_named(stopped, "status topic created")
    assert not events_named(stopped, "cannot publish the worker status")

    assert stopped.stop(TIMEOUT_S) == 0
    records = status_records(kafka_servers, stopped_status)
    assert len(records) >= 2
    assert records[-1] == ("status-stopped", None)  # the tombstone, last
    assert all(value is not None for _, value in records[:-1])

    killed.signal(signal.SIGKILL)
    killed.wait(10)
    records = status_records(kafka_servers, killed_status)
    assert records
    assert records[-1][0] == "status-killed"
    assert records[-1][1] is not None  # no tombstone: its records just stop
