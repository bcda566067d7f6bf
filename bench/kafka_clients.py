"""Both Kafka clients' job sources on the same records, in one run, in a patched process.

    KAFKA_BOOTSTRAP_SERVERS=127.0.0.1:29092 .venv/bin/python -m bench.kafka_clients 50000

Writes ``count`` JobTask records to a fresh 6-partition topic once, then reads them all
with a ``KafkaJobSource`` per client (each in a group of its own, the clients taking
turns ``--rounds`` times), taking and acking every job as the engine would. Prints each
client's records/s, their ratio (only a ratio in one run means anything on a shared
machine), and the longest the gevent hub went without turning while each read and
closed: a greenlet that sleeps 5 ms at a time notes how late it wakes.
"""

from __future__ import annotations

from gevent import monkey

monkey.patch_all()

import argparse  # noqa: E402 - after the patch, as in the worker
import os  # noqa: E402
import time  # noqa: E402

import gevent  # noqa: E402
import structlog  # noqa: E402

from jobworker.adapters.kafka import KafkaClientSettings, KafkaJobSource, SourceOptions  # noqa: E402
from jobworker.adapters.kafka.modes import KafkaClient  # noqa: E402
from tests.support.kafka import create_topic, produce, task_bytes, unique_name  # noqa: E402

_TICK_S = 0.005


class HubLateness:
    """The longest a 5 ms sleep overslept: how long the hub went without turning."""

    def __init__(self) -> None:
        self.worst_s = 0.0
        self._greenlet = gevent.spawn(self._run)

    def _run(self) -> None:
        while True:
            before = time.monotonic()
            gevent.sleep(_TICK_S)
            self.worst_s = max(self.worst_s, time.monotonic() - before - _TICK_S)

    def stop(self) -> float:
        self._greenlet.kill()
        return self.worst_s


def read_all(servers: str, topic: str, count: int, client: KafkaClient) -> dict[str, float]:
    settings = KafkaClientSettings([servers], client_id=f"bench-{client}")
    options = SourceOptions(dlq_topic=f"{topic}.dlq", client=client)
    hub = HubLateness()
    source = KafkaJobSource(settings, topic, unique_name("bench-group"), options)
    seen = 0
    started = first_at = time.monotonic()
    while seen < count:
        jobs = source.fetch(500, 0.1)
        if jobs and not seen:
            first_at = time.monotonic()
        for job in jobs:
            source.ack(job)
        seen += len(jobs)
        if time.monotonic() - started > 300:
            raise SystemExit(f"{client}: only {seen} of {count} records in 300 s")
    done_at = time.monotonic()
    source.close()
    closed_at = time.monotonic()
    return {
        "records_per_s": count / (done_at - first_at),
        "join_s": first_at - started,
        "close_s": closed_at - done_at,
        "worst_hub_block_ms": hub.stop() * 1000,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("count", type=int, nargs="?", default=50_000)
    parser.add_argument("--rounds", type=int, default=1)
    args = parser.parse_args()
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(30))
    servers = os.environ.get("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:29092")
    topic = create_topic(servers, 6, prefix="bench-clients")
    produce(
        servers,
        topic,
        [(f"job-{i}".encode(), task_bytes(f"job-{i}"), i % 6) for i in range(args.count)],
    )
    best: dict[KafkaClient, dict[str, float]] = {}
    for _ in range(args.rounds):
        for client in KafkaClient:
            figures = read_all(servers, topic, args.count, client)
            print(client, {k: round(v, 1) for k, v in figures.items()}, flush=True)
            if figures["records_per_s"] > best.get(client, {}).get("records_per_s", 0):
                best[client] = figures
    ratio = (
        best[KafkaClient.CONFLUENT]["records_per_s"]
        / best[KafkaClient.KAFKA_PYTHON]["records_per_s"]
    )
    print(f"confluent / kafka-python, records/s taken and acked: {ratio:.2f}x")


if __name__ == "__main__":
    main()
