"""KAFKA_ORDERING on a real broker: a key's later jobs are held until its job in flight
is acked, then handed out by the very next fetch, in offset order."""

from __future__ import annotations

import time
from collections.abc import Callable

from jobworker.adapters.kafka import KafkaJobSource
from jobworker.adapters.kafka.modes import Ordering
from jobworker.domain.model import Job
from tests.support.kafka import create_topic, produce, task_bytes

SourceFactory = Callable[..., KafkaJobSource]


def _fetch_until(source: KafkaJobSource, count: int, timeout_s: float = 30) -> list[Job]:
    jobs: list[Job] = []
    deadline = time.monotonic() + timeout_s
    while len(jobs) < count and time.monotonic() < deadline:
        jobs.extend(source.fetch(100, 0.2))
    return jobs


def test_a_keys_jobs_are_handed_out_one_at_a_time_in_offset_order(
    kafka_servers: str, group_id: str, source_factory: SourceFactory
) -> None:
    topic = create_topic(kafka_servers, 1)
    keyed = [(b"user-1", "a-0"), (b"user-2", "b-0"), (b"user-1", "a-1"), (b"user-1", "a-2")]
    produce(kafka_servers, topic, [(key, task_bytes(job_id), 0) for key, job_id in keyed])
    source = source_factory(topic, group_id, ordering=Ordering.KEY)

    first = _fetch_until(source, 2)
    assert [job.id for job in first] == ["a-0", "b-0"]
    assert source.fetch(100, 0.3) == []  # a-1 waits for a-0

    source.ack(first[0])
    released = source.fetch(100, 0.0)
    # Handed out by the very next fetch, even one that does not wait for records.
    assert [job.id for job in released] == ["a-1"]
    source.ack(first[1])
    source.ack(released[0])
    assert [job.id for job in _fetch_until(source, 1)] == ["a-2"]


def test_partition_ordering_hands_out_one_job_of_a_partition_at_a_time(
    kafka_servers: str, group_id: str, source_factory: SourceFactory
) -> None:
    topic = create_topic(kafka_servers, 1)
    produce(kafka_servers, topic, [(None, task_bytes(f"j-{i}"), 0) for i in range(3)])
    source = source_factory(topic, group_id, ordering=Ordering.PARTITION)

    seen = []
    for _ in range(3):
        [job] = _fetch_until(source, 1)
        assert source.fetch(100, 0.2) == []
        seen.append(job.id)
        source.ack(job)

    assert seen == ["j-0", "j-1", "j-2"]
