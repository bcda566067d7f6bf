"""The end-to-end benchmark's Kafka side: topics, producers and the raw consumer.

Records follow the wire contract (key = job id, value = a serialized ``JobTask``). The
harness process is not gevent-patched: these are plain kafka-python clients.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager

from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from kafka.admin import KafkaAdminClient, NewTopic

from jobworker.adapters.proto.jobworker.v1 import jobworker_pb2 as pb

PARTITIONS = 6
# The worker's defaults (KafkaClientSettings), so the raw rate reads as the worker does.
MAX_POLL_RECORDS = 500
ISOLATION_LEVEL = "read_committed"


def sleep_task(job_id: str, ms: int, created_ms: int = 0) -> bytes:
    return pb.JobTask(
        id=job_id,
        type=pb.JobTask.SLEEP,
        payload=f'{{"ms": {ms}}}',
        created_at_unix_ms=created_ms,
    ).SerializeToString()


class Topics:
    """Creates the run's topics, and deletes them all at the end."""

    def __init__(self, servers: str, prefix: str) -> None:
        self._admin = KafkaAdminClient(bootstrap_servers=servers, client_id="bench-e2e")
        self._servers = servers
        self._prefix = prefix
        self._created: list[str] = []

    def create(self, name: str) -> str:
        topic = f"{self._prefix}-{name}"
        self._admin.create_topics([NewTopic(topic, PARTITIONS, 1)])
        self._created.append(topic)
        return topic

    def close(self) -> None:
        if self._created:
            # With the status topics the workers made for them (KAFKA_STATUS_TOPIC's
            # default).
            existing = set(self._admin.list_topics())
            made = [f"{topic}.status" for topic in self._created if f"{topic}.status" in existing]
            self._admin.delete_topics(self._created + made)
        self._admin.close()


def fast_producer(servers: str, linger_ms: int = 50) -> KafkaProducer:
    """Large batches, no compression (the worker and the raw consumer read the same)."""
    return KafkaProducer(
        bootstrap_servers=servers,
        client_id="bench-e2e-producer",
        acks=1,
        linger_ms=linger_ms,
        batch_size=1 << 20,
        max_request_size=8 << 20,
    )


def fill(
    servers: str, topic: str, count: int, sleep_ms: int, prefix: str = "job", linger_ms: int = 50
) -> float:
    """Produce ``count`` SLEEP jobs round-robin over the partitions; returns seconds taken."""
    producer = fast_producer(servers, linger_ms)
    started = time.perf_counter()
    try:
        for number in range(count):
            job_id = f"{prefix}-{number:07d}"
            producer.send(
                topic,
                key=job_id.encode(),
                value=sleep_task(job_id, sleep_ms),
                partition=number % PARTITIONS,
            )
        producer.flush(120)
    finally:
        producer.close(10)
    return time.perf_counter() - started


def produce_paced(
    producer: KafkaProducer, topic: str, rate: float, duration_s: float, prefix: str
) -> dict[str, int]:
    """Produce no-op jobs at ``rate`` per second for ``duration_s``, each stamped with the
    moment it is sent (record timestamp and ``created_at_unix_ms``); returns id -> stamp."""
    stamps: dict[str, int] = {}
    started = time.perf_counter()
    number = 0
    while (elapsed := time.perf_counter() - started) < duration_s:
        due = int(elapsed * rate)
        while number < due:
            job_id = f"{prefix}-{number:07d}"
            now_ms = int(time.time() * 1000)
            producer.send(
                topic,
                key=job_id.encode(),
                value=sleep_task(job_id, 0, now_ms),
                partition=number % PARTITIONS,
                timestamp_ms=now_ms,
            )
            stamps[job_id] = now_ms
            number += 1
        time.sleep(0.002)
    producer.flush(30)
    return stamps


@contextmanager
def raw_consumer(servers: str, topic: str) -> Iterator[KafkaConsumer]:
    consumer = KafkaConsumer(
        bootstrap_servers=servers,
        client_id="bench-e2e-raw",
        enable_auto_commit=False,
        max_poll_records=MAX_POLL_RECORDS,
        isolation_level=ISOLATION_LEVEL,
    )
    try:
        consumer.assign([TopicPartition(topic, p) for p in range(PARTITIONS)])
        consumer.seek_to_beginning()
        yield consumer
    finally:
        consumer.close()


def raw_consume_rate(servers: str, topic: str, count: int) -> tuple[float, float]:
    """Records per second a plain consumer reads and decodes (``JobTask.FromString``),
    from its first record to its ``count``-th (connecting is not counted), and the CPU
    time that took per record, in µs (this process does nothing else meanwhile)."""
    decode = pb.JobTask.FromString
    with raw_consumer(servers, topic) as consumer:
        read, first, first_cpu = 0, 0.0, 0.0
        deadline = time.monotonic() + 120
        while read < count and time.monotonic() < deadline:
            batches = consumer.poll(timeout_ms=1000)
            if batches and not first:
                first, first_cpu = time.perf_counter(), time.process_time()
            for records in batches.values():
                for record in records:
                    decode(record.value)
                read += len(records)
        if read < count:
            raise RuntimeError(f"the raw consumer read {read} of {count} records")
        cpu_us = (time.process_time() - first_cpu) * 1e6 / count
        return count / (time.perf_counter() - first), cpu_us
