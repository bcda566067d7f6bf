"""The web console's two Kafka readers against a real broker: the group's progress (with
the finished jobs the commit's metadata records) and the status topic's records."""

from __future__ import annotations

import json

import pytest
from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from kafka.structs import OffsetAndMetadata

from jobworker.adapters.kafka.group_progress import KafkaGroupProgress
from jobworker.adapters.kafka.offsets import finished_offsets
from jobworker.adapters.kafka.settings import KafkaClientSettings
from jobworker.adapters.kafka.status_feed import KafkaStatusFeed
from jobworker.domain.errors import JobWorkerError
from tests.support.kafka import create_topic, unique_name


def produce(servers: str, topic: str, records: list[tuple[int, bytes, bytes | None]]) -> None:
    producer = KafkaProducer(bootstrap_servers=servers)
    try:
        for partition, key, value in records:
            producer.send(topic, key=key, value=value, partition=partition)
        producer.flush(30)
    finally:
        producer.close()


def test_the_group_s_progress_counts_what_the_commit_records_as_finished(
    kafka_servers: str, settings: KafkaClientSettings
) -> None:
    topic, group = create_topic(kafka_servers, 2), unique_name("group")
    produce(kafka_servers, topic, [(0, b"k", b"v")] * 10 + [(1, b"k", b"v")] * 3)
    # Offsets 0-3 done and committed; 6 and 7 done beyond the commit, as a worker writes.
    committer = KafkaConsumer(bootstrap_servers=kafka_servers, group_id=group)
    try:
        metadata = finished_offsets.encode(4, [6, 7])
        committer.commit({TopicPartition(topic, 0): OffsetAndMetadata(4, metadata, -1)})
    finally:
        committer.close()

    probe = KafkaGroupProgress(settings, topic, group)
    try:
        by_partition = {p.partition: p for p in probe.measure()}
    finally:
        probe.close()
    first, second = by_partition[0], by_partition[1]
    assert (first.end, first.committed, first.finished_beyond) == (10, 4, 2)
    assert (first.lag, first.backlog) == (6, 4)
    assert (second.end, second.committed, second.backlog) == (3, None, 3)


def test_a_missing_jobs_topic_is_said_in_one_line(
    kafka_servers: str, settings: KafkaClientSettings
) -> None:
    probe = KafkaGroupProgress(settings, unique_name("nope"), "g")
    try:
        with pytest.raises(JobWorkerError, match="Kafka has no topic"):
            probe.measure()
    finally:
        probe.close()


def test_the_status_feed_reads_every_record_kept_then_new_ones_and_tombstones(
    kafka_servers: str, settings: KafkaClientSettings
) -> None:
    topic = create_topic(kafka_servers, 1, prefix="status")
    record = {"v": 1, "worker_id": "w1", "at_ms": 1000, "interval_s": 5.0, "partitions": []}
    produce(
        kafka_servers,
        topic,
        [
            (0, b"w1", json.dumps(record).encode()),
            (0, b"w2", b"{not json"),  # skipped, with a warning
            (0, b"w1", json.dumps(record | {"at_ms": 2000}).encode()),
        ],
    )
    feed = KafkaStatusFeed(settings, topic)
    try:
        first: list[tuple[str, object]] = []
        for _ in range(20):
            first += feed.read(0.5)
            if len(first) >= 2:
                break
        assert [(key, getattr(s, "at_ms", None)) for key, s in first] == [
            ("w1", 1000),
            ("w1", 2000),
        ]
        produce(kafka_servers, topic, [(0, b"w1", None)])
        later: list[tuple[str, object]] = []
        for _ in range(20):
            later += feed.read(0.5)
            if later:
                break
        assert later == [("w1", None)]
    finally:
        feed.close()


def test_a_status_topic_not_there_yet_says_so(
    kafka_servers: str, settings: KafkaClientSettings
) -> None:
    feed = KafkaStatusFeed(settings, unique_name("jobs") + ".status")
    try:
        with pytest.raises(JobWorkerError, match="no worker has published its status"):
            feed.read(0.1)
    finally:
        feed.close()
