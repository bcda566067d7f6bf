"""Unreadable batches without a broker: finding one in fetched bytes, its dead letter,
and the settings that decide what happens to it (the broker side: tests/contract)."""

from __future__ import annotations

import pytest
from kafka.record.memory_records import MemoryRecordsBuilder

from jobworker.adapters.kafka.dlq import MAX_BATCH_BYTES, unreadable_batch_message
from jobworker.adapters.kafka.quirks import UnreadableBatch, _batch_holding
from jobworker.adapters.kafka.settings import KafkaClientSettings


def batch_bytes(base_offset: int, count: int, compression: int = 0) -> bytes:
    """A v2 batch as a broker stores it: the broker writes its base offset (no CRC covers it)."""
    builder = MemoryRecordsBuilder(magic=2, compression_type=compression, batch_size=1 << 20)
    for i in range(count):
        builder.append(timestamp=0, key=f"job-{base_offset + i}".encode(), value=b"x")
    builder.close()
    return base_offset.to_bytes(8, "big") + bytes(builder.buffer())[8:]


def test_the_batch_holding_an_offset_is_found_by_its_headers_alone() -> None:
    first, second = batch_bytes(10, 3), batch_bytes(13, 4, compression=1)  # gzip
    fetched = first + second

    assert _batch_holding(fetched, 10) == (10, 12, first)
    assert _batch_holding(fetched, 14) == (13, 16, second)
    assert _batch_holding(fetched, 17) is None
    # A batch the fetch size cut off is not a batch to dead-letter.
    assert _batch_holding(fetched[:-5], 13) is None


def batch(raw: bytes | None) -> UnreadableBatch:
    return UnreadableBatch("jobs", 2, 13, 16, "UnsupportedCodecError: no zstd", raw)


def test_the_dead_letter_carries_the_raw_batch_and_says_where_it_came_from() -> None:
    raw = batch_bytes(13, 4)

    value, headers = unreadable_batch_message(batch(raw), "worker-1")

    assert value == raw
    assert dict(headers) == {
        "x-dlq-reason": b"UnsupportedCodecError: no zstd",
        "x-dlq-source-topic": b"jobs",
        "x-dlq-source-partition": b"2",
        "x-dlq-source-offset": b"13",
        "x-dlq-source-last-offset": b"16",
        "x-dlq-worker": b"worker-1",
        "x-dlq-value-format": b"record-batch",
    }


@pytest.mark.parametrize("raw", [None, b"\0" * (MAX_BATCH_BYTES + 1)], ids=["unknown", "too-big"])
def test_a_batch_without_usable_bytes_is_dead_lettered_by_its_place_alone(
    raw: bytes | None,
) -> None:
    value, headers = unreadable_batch_message(batch(raw), "worker-1")

    assert value == b""
    assert dict(headers)["x-dlq-value-format"] == b"none"
    assert dict(headers)["x-dlq-source-last-offset"] == b"16"


def test_the_isolation_level_defaults_to_read_committed_and_reaches_the_consumer() -> None:
    assert KafkaClientSettings(["k:9092"]).consumer_kwargs()["isolation_level"] == (
        "read_committed"
    )
    uncommitted = KafkaClientSettings(["k:9092"], isolation_level="read_uncommitted")
    assert uncommitted.consumer_kwargs()["isolation_level"] == "read_uncommitted"
