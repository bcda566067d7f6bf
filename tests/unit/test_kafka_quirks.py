"""The kafka-python internals the workarounds in adapters/kafka/quirks.py touch are there.

A kafka-python upgrade that renames one makes its workaround do nothing, silently: these
tests fail first. No broker is needed: the clients are built with a fixed api_version,
so they make no connection.
"""

from __future__ import annotations

import inspect
import time
from collections.abc import Iterator
from importlib.metadata import version
from typing import Any

import pytest
from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from kafka.admin import KafkaAdminClient
from kafka.future import Future
from kafka.structs import MemberState

from jobworker.adapters.kafka import publisher, republisher
from jobworker.adapters.kafka.quirks import (
    ADMIN_INTERNALS,
    PRODUCER_INTERNALS,
    _FinishedJoin,
    fetch_position,
    missing_internals,
    pace_unready_sends,
    release_parked_records,
    resume_interrupted_join,
    wait_out_unanswered_heartbeats,
)
from jobworker.adapters.kafka.settings import KafkaClientSettings

NOWHERE = ["127.0.0.1:9"]


@pytest.fixture
def consumer() -> Iterator[KafkaConsumer]:
    client = KafkaConsumer(
        bootstrap_servers=NOWHERE, group_id="quirks", api_version=(2, 8), enable_auto_commit=False
    )
    yield client
    client.close(autocommit=False)


@pytest.fixture
def producer() -> Iterator[KafkaProducer]:
    client = KafkaProducer(bootstrap_servers=NOWHERE, api_version=(2, 8))
    yield client
    client.close(timeout=0)


def test_the_pinned_kafka_python_is_the_one_checked() -> None:
    assert version("kafka-python") == "3.0.12"


def test_every_consumer_internal_the_workarounds_touch_is_there(consumer: KafkaConsumer) -> None:
    assert missing_internals(consumer) == []


def test_every_producer_internal_the_workarounds_touch_is_there(producer: KafkaProducer) -> None:
    assert missing_internals(producer, PRODUCER_INTERNALS) == []


def test_missing_internals_names_what_is_gone(consumer: KafkaConsumer) -> None:
    del consumer._fetcher._next_partition_records

    assert missing_internals(consumer) == ["_fetcher._next_partition_records"]


def test_the_admin_client_sets_the_attributes_its_cleanup_stops() -> None:
    # Building one starts its I/O thread; reading its constructor is enough here.
    source = inspect.getsource(KafkaAdminClient.__init__)
    for name in ADMIN_INTERNALS:
        assert f"self.{name} =" in source, name


def test_fetch_position_reads_the_consumers_own_position() -> None:
    client = KafkaConsumer(bootstrap_servers=NOWHERE, api_version=(2, 8))
    try:
        tp = TopicPartition("quirks", 0)
        client.assign([tp])
        assert fetch_position(client, tp) is None
        client.seek(tp, 42)
        assert fetch_position(client, tp) == 42
    finally:
        client.close()


def test_an_emptied_parked_slot_is_released(consumer: KafkaConsumer) -> None:
    consumer._fetcher._next_partition_records = []

    release_parked_records(consumer)

    assert consumer._fetcher._next_partition_records is None


def test_a_join_that_finished_between_polls_is_handed_back_as_pending(
    consumer: KafkaConsumer,
) -> None:
    join = Future()
    join.success(True)
    consumer._coordinator._join_task = join
    consumer._coordinator.rejoin_needed = False

    resume_interrupted_join(consumer)

    task = consumer._coordinator._join_task
    assert isinstance(task, _FinishedJoin)
    assert not task.is_done
    assert consumer._coordinator.rejoin_needed


def _joined_with_heartbeat_sent(consumer: KafkaConsumer, seconds_ago: float) -> None:
    """The member is in a stable group and its last heartbeat went ``seconds_ago``,
    unanswered since."""
    coordinator = consumer._coordinator
    coordinator.state = MemberState.STABLE
    coordinator.heartbeat.last_reset = coordinator.heartbeat.last_send = (
        time.monotonic() - seconds_ago
    )


def test_an_unanswered_heartbeat_no_longer_makes_every_poll_round_wait_nothing(
    consumer: KafkaConsumer,
) -> None:
    # Sent 10 s ago against a 3 s interval: overdue, so kafka-python caps the wait at 0.
    _joined_with_heartbeat_sent(consumer, seconds_ago=10)
    assert consumer._coordinator.time_to_next_poll() == 0

    wait_out_unanswered_heartbeats(consumer)

    assert consumer._coordinator.time_to_next_poll() == pytest.approx(0.1)


def test_a_heartbeat_not_due_yet_still_bounds_the_wait_as_before(consumer: KafkaConsumer) -> None:
    _joined_with_heartbeat_sent(consumer, seconds_ago=1)
    before = consumer._coordinator.time_to_next_poll()

    wait_out_unanswered_heartbeats(consumer)

    # About the 2 s left of the 3 s interval, as kafka-python has it.
    assert consumer._coordinator.time_to_next_poll() == pytest.approx(before, abs=0.05)
    assert 1.9 < before < 2.1


def test_a_producer_waits_a_backoff_for_an_open_connection_that_cannot_send(
    producer: KafkaProducer,
) -> None:
    client = producer._sender._client
    # kafka-python's own answer for a connection that is open (no backoff running):
    # 0, which its sender waits for, in milliseconds, before looking again.
    assert client.connection_delay(1) == 0

    pace_unready_sends(producer)

    assert client.connection_delay(1) == 100


def test_a_producer_waits_out_a_reconnect_backoff_in_milliseconds(
    producer: KafkaProducer,
) -> None:
    client = producer._sender._client
    pace_unready_sends(producer)
    # A failed connection to node 1 that may be tried again in 1.5 s.
    client._manager._backoff[1] = (1, time.monotonic() + 1.5, 30_000)

    assert client.connection_delay(1) == pytest.approx(1500, abs=50)


def test_the_replay_producer_paces_its_unready_sends(monkeypatch: pytest.MonkeyPatch) -> None:
    # The console's replay button and `jobworker dlq replay` write through it: a replay
    # under way when the broker freezes must wait, not spin the hub.
    monkeypatch.setattr(republisher, "open_client", offline_producer)
    replay = republisher.KafkaRecordRepublisher(KafkaClientSettings(NOWHERE))
    try:
        assert replay._producer._sender._client.connection_delay(1) == 100
    finally:
        replay._producer.close(timeout=0)


def test_the_job_publisher_paces_its_unready_sends(monkeypatch: pytest.MonkeyPatch) -> None:
    # `jobworker submit` writes through it: a submit under way when the broker freezes
    # must wait, not spin a core.
    monkeypatch.setattr(publisher, "open_client", offline_producer)
    jobs = publisher.KafkaJobPublisher(KafkaClientSettings(NOWHERE), "jobs")
    try:
        assert jobs._producer._sender._client.connection_delay(1) == 100
    finally:
        jobs._producer.close(timeout=0)


def offline_producer(make: Any, settings: KafkaClientSettings, **config: Any) -> Any:
    """``open_client``'s stand-in: a real producer of ``make``'s kind, with no broker
    behind it, for which every topic is there."""
    producer = make(bootstrap_servers=NOWHERE, api_version=(2, 8))
    producer.partitions_for = lambda _topic: {0}
    return producer
