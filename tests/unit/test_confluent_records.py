"""The confluent-kafka consumer's pieces that need no broker: its messages in the shapes
the source reads, its unreadable batches, its configuration, its errors."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass
from typing import Any

import pytest
from kafka import TopicPartition

from jobworker.adapters.kafka.confluent.config import consumer_config
from jobworker.adapters.kafka.confluent.records import (
    BAD_COMPRESSION,
    BAD_MESSAGE,
    ConfluentRecord,
    HeldRecords,
    sort_messages,
)
from jobworker.adapters.kafka.quirks import UnreadableBatch
from jobworker.adapters.kafka.settings import KafkaClientSettings


@dataclass
class FakeError:
    code_: int
    text: str = "failed"

    def code(self) -> int:
        return self.code_

    def str(self) -> str:
        return self.text


@dataclass
class FakeMessage:
    """What confluent_kafka.Message offers, as methods."""

    offset_: int
    partition_: int = 0
    error_: FakeError | None = None
    topic_: str = "jobs"

    def error(self) -> FakeError | None:
        return self.error_

    def topic(self) -> str:
        return self.topic_

    def partition(self) -> int:
        return self.partition_

    def offset(self) -> int:
        return self.offset_

    def key(self) -> bytes:
        return f"k{self.offset_}".encode()

    def value(self) -> bytes:
        return b"v"

    def headers(self) -> list[tuple[str, bytes]] | None:
        return None

    def timestamp(self) -> tuple[int, int]:
        return (1, 1_700_000_000_000 + self.offset_)


def test_messages_become_records_with_kafka_pythons_attribute_names() -> None:
    sorted_ = sort_messages([FakeMessage(5), FakeMessage(3, partition_=1), FakeMessage(6)])

    tp0, tp1 = TopicPartition("jobs", 0), TopicPartition("jobs", 1)
    assert [r.offset for r in sorted_.entries[tp0]] == [5, 6]
    assert sorted_.entries[tp1] == [
        ConfluentRecord("jobs", 1, 3, b"k3", b"v", [], 1_700_000_000_003)
    ]
    assert sorted_.errors == []


def test_other_errors_are_kept_apart() -> None:
    transport = FakeError(-195, "broker transport failure")

    sorted_ = sort_messages([FakeMessage(0, error_=transport), FakeMessage(1)])

    assert sorted_.errors == [transport]
    assert [r.offset for r in sorted_.entries[TopicPartition("jobs", 0)]] == [1]


TP0, TP1 = TopicPartition("jobs", 0), TopicPartition("jobs", 1)


def held(*messages: FakeMessage, limit: int = 1000) -> HeldRecords:
    records = HeldRecords(limit)
    records.add(sort_messages(messages).entries)
    return records


def offsets(taken: Any, tp: TopicPartition = TP0) -> list[int]:
    return [record.offset for record in taken.records.get(tp, [])]


def test_an_unreadable_batch_ends_its_partitions_records_and_the_next_record_bounds_it() -> None:
    crc = FakeError(BAD_MESSAGE, "MessageSet at offset 10 failed CRC32C check")
    records = held(
        FakeMessage(8),
        FakeMessage(9),
        FakeMessage(10, error_=crc),
        FakeMessage(40, partition_=1),
        FakeMessage(15),  # librdkafka read on past the batch: 10-14
        FakeMessage(16),
    )

    first = records.take(100, set())
    second = records.take(100, set())
    third = records.take(100, set())

    assert (offsets(first), offsets(first, TP1), first.unreadable) == ([8, 9], [40], [])
    # Handed out alone, so that with fail nothing after it runs.
    assert second.records == {}
    assert second.unreadable == [UnreadableBatch("jobs", 0, 10, 14, crc.text, None)]
    assert offsets(third) == [15, 16]


def test_a_batch_that_ends_what_is_held_has_only_its_first_offset() -> None:
    broken = FakeError(BAD_COMPRESSION, "Decompression (codec 0x4) failed")
    records = held(FakeMessage(4, error_=broken))

    assert records.take(10, set()).unreadable == [
        UnreadableBatch("jobs", 0, 4, 4, broken.text, None)
    ]


def test_paused_partitions_are_held_back_and_partitions_take_turns() -> None:
    both = (*(FakeMessage(i) for i in range(5)), *(FakeMessage(i, 1) for i in range(5)))
    records = held(*both)

    paused = records.take(10, {TP0})
    turns = [records.take(2, set()) for _ in range(2)]

    assert (offsets(paused), offsets(paused, TP1)) == ([], [0, 1, 2, 3, 4])
    assert [offsets(t) for t in turns] == [[0, 1], [2, 3]]
    records = held(*both)
    turns = [records.take(2, set()) for _ in range(2)]
    assert {tp for t in turns for tp in t.records} == {TP0, TP1}


def test_a_seek_back_to_a_record_just_handed_out_puts_it_back_in_front() -> None:
    records = held(*(FakeMessage(i) for i in range(6)))
    records.take(4, set())  # 0-3

    assert records.rewind(TP0, 2)
    assert records.next_offset(TP0) == 2
    assert offsets(records.take(10, set())) == [2, 3, 4, 5]
    assert records.rewind(TP0, 6) is False  # nothing there: librdkafka must seek
    assert records.rewind(TP1, 0) is False


def test_settings_map_to_librdkafkas_keys() -> None:
    settings = KafkaClientSettings(
        ["b1:9093", "b2:9093"],
        client_id="w-1",
        security_protocol="SASL_SSL",
        sasl_mechanism="SCRAM-SHA-512",
        sasl_username="worker",
        sasl_password="secret",  # noqa: S106 - a test value
        ssl_cafile="/etc/ca.pem",
        ssl_certfile="/etc/cert.pem",
        ssl_keyfile="/etc/key.pem",
        session_timeout_ms=10_000,
        max_poll_interval_ms=60_000,
        isolation_level="read_uncommitted",
        max_partition_fetch_bytes=2_097_152,
        fetch_max_bytes=10_485_760,
        fetch_max_wait_ms=250,
    )

    config = consumer_config(settings, "group-a")

    assert config | {} == config  # plain values only: librdkafka takes no objects here
    expected = {
        "bootstrap.servers": "b1:9093,b2:9093",
        "client.id": "w-1",
        "group.id": "group-a",
        "security.protocol": "sasl_ssl",
        "sasl.mechanism": "SCRAM-SHA-512",
        "sasl.username": "worker",
        "sasl.password": "secret",
        "ssl.ca.location": "/etc/ca.pem",
        "ssl.certificate.location": "/etc/cert.pem",
        "ssl.key.location": "/etc/key.pem",
        "session.timeout.ms": 10_000,
        "heartbeat.interval.ms": 3_000,
        "max.poll.interval.ms": 60_000,
        "isolation.level": "read_uncommitted",
        "max.partition.fetch.bytes": 2_097_152,
        "fetch.max.bytes": 10_485_760,
        "fetch.wait.max.ms": 250,
        "enable.auto.commit": False,
        "auto.offset.reset": "earliest",
        "check.crcs": True,
    }
    assert {key: config[key] for key in expected} == expected


def test_plaintext_sets_no_tls_or_sasl_keys_and_the_poll_interval_covers_the_session() -> None:
    settings = KafkaClientSettings(["b:9092"], session_timeout_ms=600_000)

    config = consumer_config(settings, "g")

    assert config["security.protocol"] == "plaintext"
    assert not [key for key in config if key.startswith(("ssl.", "sasl."))]
    assert config["max.poll.interval.ms"] == 600_000  # librdkafka refuses less


def test_the_read_ahead_is_about_two_polls_of_records_refilled_soon() -> None:
    config = consumer_config(KafkaClientSettings(["b:9092"], max_poll_records=300), "g")

    assert config["queued.min.messages"] == 600  # librdkafka: 100,000
    assert config["queued.max.messages.kbytes"] == 51_200  # KAFKA_FETCH_MAX_BYTES
    assert config["fetch.queue.backoff.ms"] == 20  # librdkafka: 1 s


def test_tls_without_a_bundle_trusts_the_systems_cas() -> None:
    config = consumer_config(KafkaClientSettings(["b:9093"], security_protocol="SSL"), "g")

    assert config["ssl.ca.location"] == "probe"


@pytest.mark.parametrize(
    ("code", "expected"),
    [
        (26, "KAFKA_SESSION_TIMEOUT"),  # INVALID_SESSION_TIMEOUT
        (29, "READ and DESCRIBE on KAFKA_TOPIC"),  # TOPIC_AUTHORIZATION_FAILED
        (30, "READ on the group"),  # GROUP_AUTHORIZATION_FAILED
        (-169, "KAFKA_SASL_PASSWORD"),  # _AUTHENTICATION
        (-181, "KAFKA_SSL_CAFILE (/etc/ca.pem) did not sign it"),  # _SSL
    ],
)
def test_errors_retrying_cannot_fix_stop_the_source_naming_the_setting(
    code: int, expected: str
) -> None:
    from confluent_kafka import KafkaError

    from jobworker.adapters.kafka.confluent.consumer import ConfluentConsumer
    from jobworker.domain.errors import SourceFailed

    consumer: Any = ConfluentConsumer.__new__(ConfluentConsumer)
    consumer.topic, consumer._group_id, consumer._session_timeout_ms = "jobs", "g", 6_000
    consumer._settings = KafkaClientSettings(["b:9093"], ssl_cafile="/etc/ca.pem")

    failure = consumer._error(KafkaError(code, "refused: certificate verify failed"))

    assert isinstance(failure, SourceFailed)
    assert expected in str(failure)
    assert "\n" not in str(failure)


# Transport, all brokers down, a TLS handshake cut short, unknown topic, rebalancing…
@pytest.mark.parametrize("code", [-195, -187, -181, 3, 27, 15])
def test_transient_errors_are_retried(code: int) -> None:
    from confluent_kafka import KafkaError

    from jobworker.adapters.kafka.confluent.consumer import ConfluentConsumer
    from jobworker.adapters.kafka.consumer import ConsumerError

    consumer: Any = ConfluentConsumer.__new__(ConfluentConsumer)
    consumer.topic, consumer._group_id, consumer._session_timeout_ms = "jobs", "g", 6_000
    consumer._settings = KafkaClientSettings(["b:9093"], ssl_cafile="/etc/ca.pem")

    assert isinstance(consumer._error(KafkaError(code, "later")), ConsumerError)


def test_the_default_client_never_loads_librdkafka() -> None:
    # KAFKA_CLIENT=confluent imports it when chosen; the default pays nothing for it.
    code = (
        "import sys; import jobworker.adapters.kafka, jobworker.entrypoints.container;"
        " assert 'confluent_kafka' not in sys.modules, 'confluent_kafka imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
