"""Every batch a producer can write is read, or set aside, never spun on.

Compressed batches in each codec, transactions committed and aborted, and batches the
worker cannot decode, against a real broker.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import kafka.codec
import pytest
from kafka import KafkaProducer
from kafka.record.memory_records import MemoryRecords
from structlog.testing import capture_logs

from jobworker.adapters.kafka import KafkaClientSettings, KafkaJobSource
from jobworker.adapters.kafka.modes import UnreadableBatches
from jobworker.domain.errors import SourceFailed
from jobworker.domain.model import Job
from tests.support.kafka import (
    committed_offsets,
    end_offsets,
    produce_batch,
    read_all,
    task_bytes,
    unique_name,
)

pytestmark = pytest.mark.contract

SourceFactory = Callable[..., KafkaJobSource]
CODECS = ("gzip", "snappy", "lz4", "zstd")


def fetch_until(
    source: KafkaJobSource, wanted: set[str], timeout_s: float = 30.0, ack: bool = True
) -> list[Job]:
    """Fetch (and ack) until every job in ``wanted`` came or the timeout passed."""
    jobs: list[Job] = []
    deadline = time.monotonic() + timeout_s
    while not wanted <= {job.id for job in jobs} and time.monotonic() < deadline:
        for job in source.fetch(100, 0.2):
            jobs.append(job)
            if ack:
                source.ack(job)
    return jobs


def fetch_for(source: KafkaJobSource, seconds: float) -> list[Job]:
    """Fetch and ack for ``seconds``."""
    jobs: list[Job] = []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        for job in source.fetch(100, 0.2):
            jobs.append(job)
            source.ack(job)
    return jobs


def ids(prefix: str, count: int) -> list[str]:
    return [f"{prefix}-{i}" for i in range(count)]


def test_the_codec_libraries_are_installed() -> None:
    # librdkafka's are built into its wheel (KAFKA_CLIENT=confluent): nothing to check.
    # Declared as kafka-python's extras: without one, its batches cannot be read at all.
    assert kafka.codec.has_gzip()
    assert kafka.codec.has_snappy()
    assert kafka.codec.has_lz4()
    assert kafka.codec.has_zstd()


def test_batches_in_every_codec_on_one_topic_are_all_read(
    kafka_servers: str,
    topic_factory: Callable[[int], str],
    group_id: str,
    source_factory: SourceFactory,
) -> None:
    topic = topic_factory(2)
    expected: set[str] = set()
    for number, codec in enumerate(CODECS):
        batch = ids(codec, 100)
        produce_batch(kafka_servers, topic, batch, number % 2, compression_type=codec)
        expected.update(batch)
    source = source_factory(topic, group_id, commit_interval_s=0)

    jobs = fetch_until(source, expected, timeout_s=60)
    fetch_for(source, 0.5)

    assert sorted(job.id for job in jobs) == sorted(expected)
    assert source.stats().unreadable_batches == 0
    assert committed_offsets(kafka_servers, group_id, topic) == {0: 200, 1: 200}


def _in_transactions(
    servers: str, topic: str, plan: list[tuple[str, bool]]
) -> tuple[list[str], list[str]]:
    """Per ``(name, commit)`` of ``plan``, a transaction of five jobs on partition 0,
    committed or aborted (after its records reached the log). Returns (committed ids,
    aborted ids)."""
    producer = KafkaProducer(bootstrap_servers=servers, transactional_id=unique_name("tx"))
    committed, aborted = [], []
    try:
        producer.init_transactions()
        for name, commit in plan:
            producer.begin_transaction()
            batch = ids(name, 5)
            for job_id in batch:
                producer.send(topic, key=job_id.encode(), value=task_bytes(job_id), partition=0)
            producer.flush(timeout=30)
            if commit:
                producer.commit_transaction()
                committed += batch
            else:
                producer.abort_transaction()
                aborted += batch
    finally:
        producer.close()
    return committed, aborted


def _transactions(servers: str, topic: str) -> tuple[list[str], list[str]]:
    """One transaction committed, one aborted, one committed; then a job outside any
    transaction. Returns (committed ids, aborted ids)."""
    plan = [("committed-a", True), ("aborted", False), ("committed-b", True)]
    committed, aborted = _in_transactions(servers, topic, plan)
    produce_batch(servers, topic, ["plain-0"])
    return [*committed, "plain-0"], aborted


def test_jobs_of_aborted_transactions_are_never_read(
    kafka_servers: str,
    topic_factory: Callable[[int], str],
    group_id: str,
    source_factory: SourceFactory,
) -> None:
    topic = topic_factory(1)
    committed, aborted = _transactions(kafka_servers, topic)
    # The default isolation level: nothing set.
    source = source_factory(topic, group_id, commit_interval_s=0)

    jobs = fetch_until(source, set(committed))
    jobs += fetch_for(source, 1.0)

    assert [job.id for job in jobs] == committed
    assert not {job.id for job in jobs} & set(aborted)
    # 15 committed and aborted records, 3 transaction markers, 1 plain record.
    assert committed_offsets(kafka_servers, group_id, topic) == {0: 19}


def test_offsets_are_committed_past_transaction_markers_and_aborted_records(
    kafka_servers: str,
    topic_factory: Callable[[int], str],
    group_id: str,
    source_factory: SourceFactory,
) -> None:
    # A partition that ends in an aborted transaction: the group's committed offset must
    # still reach its end (lag 0), as a Java consumer's would.
    topic = topic_factory(1)
    _in_transactions(kafka_servers, topic, [("kept", True), ("gone", False)])
    ends = end_offsets(kafka_servers, topic)
    assert ends == {0: 12}, "5 + 5 records and two transaction markers"
    source = source_factory(topic, group_id, commit_interval_s=0)

    jobs = fetch_until(source, set(ids("kept", 5)))
    deadline = time.monotonic() + 20
    while committed_offsets(kafka_servers, group_id, topic) != ends and time.monotonic() < deadline:
        jobs += fetch_for(source, 0.5)

    assert [job.id for job in jobs] == ids("kept", 5)
    assert committed_offsets(kafka_servers, group_id, topic) == ends


def test_read_uncommitted_reads_aborted_transactions_too(
    kafka_servers: str,
    settings: KafkaClientSettings,
    topic_factory: Callable[[int], str],
    group_id: str,
    source_factory: SourceFactory,
) -> None:
    # The setting reaches the consumer: the old default read what was aborted.
    topic = topic_factory(1)
    committed, aborted = _transactions(kafka_servers, topic)
    uncommitted = KafkaClientSettings(
        settings.bootstrap_servers,
        session_timeout_ms=settings.session_timeout_ms,
        heartbeat_interval_ms=settings.heartbeat_interval_ms,
        isolation_level="read_uncommitted",
    )
    source = source_factory(topic, group_id, settings=uncommitted)

    jobs = fetch_until(source, set(committed) | set(aborted))

    assert {job.id for job in jobs} == set(committed) | set(aborted)


def _hide_zstd(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make this process's kafka-python lack zstd, as if ``zstandard`` were not installed.

    kafka.codec keeps the imported module (None when the import failed) and checks it
    before decoding: this is the state the missing extra left the worker in.
    """
    monkeypatch.setattr(kafka.codec, "zstd", None)
    assert not kafka.codec.has_zstd()


@pytest.mark.kafka_python_only(
    "hides a codec library from kafka-python; librdkafka has every codec built in"
)
@pytest.mark.timeout(120)  # the bug this guards against never returns from a fetch
def test_a_batch_in_a_codec_the_worker_lacks_is_dead_lettered_and_its_partition_moves_on(
    kafka_servers: str,
    topic_factory: Callable[[int], str],
    group_id: str,
    source_factory: SourceFactory,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    topic = topic_factory(2)
    produce_batch(kafka_servers, topic, ["before-0"], 0)
    unreadable = produce_batch(kafka_servers, topic, ids("zstd", 5), 0, compression_type="zstd")
    produce_batch(kafka_servers, topic, ["after-0", "after-1"], 0)
    produce_batch(kafka_servers, topic, ids("other", 20), 1)
    expected = {"before-0", "after-0", "after-1", *ids("other", 20)}
    _hide_zstd(monkeypatch)
    source = source_factory(topic, group_id, commit_interval_s=0, worker_id="worker-3")

    with capture_logs() as logs:
        jobs = fetch_until(source, expected)
        # Nothing left to read: an idle source polls, it does not spin.
        cpu, wall = time.process_time(), time.monotonic()
        jobs += fetch_for(source, 3.0)
        cpu, wall = time.process_time() - cpu, time.monotonic() - wall

    assert sorted(job.id for job in jobs) == sorted(expected)
    assert cpu < wall / 2, f"{cpu:.1f} s of CPU in {wall:.1f} s of idle polling"
    (letter,) = read_all(kafka_servers, f"{topic}.dlq", 1)
    headers = dict(letter.headers)
    assert headers["x-dlq-source-topic"] == topic.encode()
    assert headers["x-dlq-source-partition"] == b"0"
    assert headers["x-dlq-source-offset"] == str(unreadable[0]).encode()
    assert headers["x-dlq-source-last-offset"] == str(unreadable[-1]).encode()
    assert b"zstd" in headers["x-dlq-reason"]
    assert headers["x-dlq-worker"] == b"worker-3"
    assert headers["x-dlq-value-format"] == b"record-batch"
    (error,) = [e for e in logs if e["event"].startswith("unreadable record batch")]
    assert error["log_level"] == "error"
    assert (error["partition"], error["first_offset"]) == (0, unreadable[0])
    assert source.stats().unreadable_batches == 1
    # The dead letter is written, so the commit passed the batch.
    assert committed_offsets(kafka_servers, group_id, topic) == {0: 8, 1: 20}

    # An operator with zstd installed can decode the batch and replay its jobs.
    monkeypatch.undo()
    assert _jobs_in_batch(letter.value) == ids("zstd", 5)


def _jobs_in_batch(raw: bytes) -> list[str]:
    batch = MemoryRecords(raw).next_batch()
    assert batch is not None
    assert batch.validate_crc()
    return [record.key.decode() for record in batch]


@pytest.mark.kafka_python_only(
    "hides a codec library from kafka-python; librdkafka has every codec built in"
)
@pytest.mark.timeout(120)
def test_with_fail_an_unreadable_batch_stops_the_source_committing_nothing_past_it(
    kafka_servers: str,
    topic_factory: Callable[[int], str],
    group_id: str,
    source_factory: SourceFactory,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    topic = topic_factory(1)
    produce_batch(kafka_servers, topic, ["before-0", "before-1"])
    unreadable = produce_batch(kafka_servers, topic, ids("zstd", 5), compression_type="zstd")
    produce_batch(kafka_servers, topic, ["after-0"])
    _hide_zstd(monkeypatch)
    source = source_factory(
        topic, group_id, commit_interval_s=0, unreadable_batches=UnreadableBatches.FAIL
    )

    jobs: list[Job] = []
    with pytest.raises(SourceFailed) as failure:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            for job in source.fetch(100, 0.2):
                jobs.append(job)
                source.ack(job)
    # The engine goes on fetching while its jobs drain: a repeat waits, it does not spin.
    started = time.monotonic()
    with pytest.raises(SourceFailed):
        source.fetch(100, 0.5)
    assert time.monotonic() - started >= 0.5
    source.close()

    assert [job.id for job in jobs] == ["before-0", "before-1"]
    message = str(failure.value)
    assert f"{topic}[0] offsets {unreadable[0]}-{unreadable[-1]}" in message
    assert "zstd" in message
    assert "KAFKA_UNREADABLE_BATCHES" in message
    assert "\n" not in message
    assert committed_offsets(kafka_servers, group_id, topic) == {0: unreadable[0]}
    assert read_all(kafka_servers, f"{topic}.dlq", 1, timeout_s=2) == []


def _corrupting(parse: Callable[[Any], Any], base_offset: int) -> Callable[[Any], Any]:
    """Wrap the fetcher's parser so the batch at ``base_offset`` arrives with one byte of
    its records flipped, as disk or wire corruption would leave it."""

    def parse_corrupted(completed_fetch: Any) -> Any:
        data = completed_fetch.partition_data
        raw = bytearray(data.records or b"")
        position = 0
        while position + 12 <= len(raw):
            offset = int.from_bytes(raw[position : position + 8], "big", signed=True)
            length = int.from_bytes(raw[position + 8 : position + 12], "big", signed=True)
            if offset == base_offset:
                raw[position + 12 + length - 1] ^= 0xFF  # the last byte: a record's
                data.records = bytes(raw)
                break
            position += 12 + length
        return parse(completed_fetch)

    return parse_corrupted


@pytest.mark.kafka_python_only(
    "corrupts a batch inside kafka-python's fetcher; librdkafka's is out of reach"
    " (tests/unit/test_confluent_records.py covers its reports of unreadable batches)"
)
@pytest.mark.timeout(120)
def test_a_batch_that_fails_its_crc_check_is_dead_lettered_and_skipped(
    kafka_servers: str,
    topic_factory: Callable[[int], str],
    group_id: str,
    source_factory: SourceFactory,
) -> None:
    """The broker refuses corrupt batches, so the corruption is made on arrival: the
    fetcher's parser (already wrapped by the source's workaround) is wrapped once more
    to flip a byte of one batch. The consumer's own CRC check then finds it."""
    topic = topic_factory(1)
    produce_batch(kafka_servers, topic, ["before-0"])
    corrupt = produce_batch(kafka_servers, topic, ids("corrupt", 3), compression_type="gzip")
    produce_batch(kafka_servers, topic, ["after-0"])
    source = source_factory(topic, group_id, commit_interval_s=0)
    fetcher: Any = source._consumer._client._fetcher
    fetcher._parse_fetched_data = _corrupting(fetcher._parse_fetched_data, corrupt[0])

    jobs = fetch_until(source, {"before-0", "after-0"})
    fetch_for(source, 0.5)

    assert [job.id for job in jobs] == ["before-0", "after-0"]
    (letter,) = read_all(kafka_servers, f"{topic}.dlq", 1)
    headers = dict(letter.headers)
    assert headers["x-dlq-source-offset"] == str(corrupt[0]).encode()
    assert headers["x-dlq-source-last-offset"] == str(corrupt[-1]).encode()
    assert b"crc" in headers["x-dlq-reason"].lower()
    assert committed_offsets(kafka_servers, group_id, topic) == {0: corrupt[-1] + 2}
