"""``jobworker dlq`` as a child process, and dead-letter topics written by hand, for the
end-to-end tests of listing, showing and replaying letters."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterable, Mapping
from typing import Any

from kafka import KafkaConsumer, KafkaProducer

from tests.support.processes import ROOT, worker_env

Headers = list[tuple[str, bytes]]
CLI_TIMEOUT_S = 120


def dlq_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "jobworker", "dlq", *args]


def dlq(settings: Mapping[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    """``jobworker dlq ARGS`` with ``settings`` as its environment, no terminal on stdin."""
    return subprocess.run(
        dlq_command(*args),
        env=worker_env(**settings),
        cwd=ROOT,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=CLI_TIMEOUT_S,
        check=False,
    )


def said(stderr: str) -> list[str]:
    """What the CLI said to its reader on stderr: the lines that are not JSON log events."""
    return [line for line in stderr.splitlines() if line.strip() and not line.startswith("{")]


def json_lines(stdout: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stdout.splitlines() if line.strip()]


def dead_letter_headers(
    reason: str, source_topic: str, source_partition: int, source_offset: int
) -> Headers:
    """The x-dlq-* headers a worker gives a poison record's letter."""
    return [
        ("x-dlq-reason", reason.encode()),
        ("x-dlq-source-topic", source_topic.encode()),
        ("x-dlq-source-partition", str(source_partition).encode()),
        ("x-dlq-source-offset", str(source_offset).encode()),
        ("x-dlq-worker", b"worker-by-hand"),
    ]


def produce_letters(
    servers: str,
    topic: str,
    letters: Iterable[tuple[bytes | None, bytes | None, Headers, int]],
) -> None:
    """Write ``(key, value, headers, partition)`` records and wait until all are acknowledged."""
    producer = KafkaProducer(bootstrap_servers=servers, acks="all")
    try:
        futures = [
            producer.send(topic, key=key, value=value, headers=headers, partition=partition)
            for key, value, headers, partition in letters
        ]
        producer.flush(timeout=60)
        for future in futures:
            future.get(timeout=0)
    finally:
        producer.close()


def topic_exists(servers: str, topic: str) -> bool:
    consumer = KafkaConsumer(bootstrap_servers=servers, client_id="tests-topics")
    try:
        return topic in consumer.topics()
    finally:
        consumer.close()


def replayed(records: Iterable[Any]) -> list[tuple[Any, dict[str, str]]]:
    """The records replay wrote (they carry x-replay-dlq-topic), each with its headers."""
    found = []
    for record in records:
        headers = {name: bytes(value).decode() for name, value in record.headers}
        if "x-replay-dlq-topic" in headers:
            found.append((record, headers))
    return found
