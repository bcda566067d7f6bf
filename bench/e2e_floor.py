"""The latency floor: a plain kafka-python consumer, in a process of its own, timing records.

``python -m bench.e2e_floor SERVERS TOPIC``: reads ``TOPIC`` from its end, prints
``ready`` once it knows every partition's position, then for each record notes how long
after its timestamp ``poll`` handed it out. Once records stop coming for 3 s (or after
120 s) it prints ``p50 p99 max count`` in ms. Beside the worker's added latency, this
says how much of it the producer, the broker, kafka-python and the machine's load take
with no worker at all.
"""

from __future__ import annotations

import statistics
import sys
import time

from kafka import KafkaConsumer, TopicPartition

from bench.e2e_kafka import ISOLATION_LEVEL, MAX_POLL_RECORDS, PARTITIONS

QUIET_S = 3.0


def main(servers: str, topic: str) -> None:
    consumer = KafkaConsumer(
        bootstrap_servers=servers,
        client_id="bench-e2e-floor",
        enable_auto_commit=False,
        max_poll_records=MAX_POLL_RECORDS,
        isolation_level=ISOLATION_LEVEL,
    )
    consumer.assign([TopicPartition(topic, p) for p in range(PARTITIONS)])
    consumer.seek_to_end()
    consumer.poll(timeout_ms=100)  # positions fetched: records from now on are seen
    print("ready", flush=True)
    waits: list[float] = []
    deadline = time.monotonic() + 120
    last_seen = time.monotonic()
    while time.monotonic() < deadline and not (waits and time.monotonic() - last_seen > QUIET_S):
        for records in consumer.poll(timeout_ms=100).values():
            now_ms = time.time() * 1000
            waits.extend(now_ms - record.timestamp for record in records)
            last_seen = time.monotonic()
    consumer.close()
    cuts = statistics.quantiles(waits, n=100) if len(waits) > 1 else [0.0] * 99
    print(f"{cuts[49]:.1f} {cuts[98]:.1f} {max(waits, default=0):.1f} {len(waits)}", flush=True)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
