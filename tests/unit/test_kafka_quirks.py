"""The kafka-python internals the workarounds in adapters/kafka/quirks.py touch are there.

A kafka-python upgrade that renames one makes its workaround do nothing, silently: these
tests fail first. No broker is needed: the clients are built with a fixed api_version,
so they make no connection.
"""

from __future__ import annotations

import inspect
from collections.abc import Iterator
from importlib.metadata import version

import pytest
from kafka import KafkaConsumer, TopicPartition
from kafka.admin import KafkaAdminClient
from kafka.future import Future

from jobworker.adapters.kafka.quirks import (
    ADMIN_INTERNALS,
    _FinishedJoin,
    fetch_position,
    missing_internals,
    release_parked_records,
    resume_interrupted_join,
)

NOWHERE = ["127.0.0.1:9"]


@pytest.fixture
def consumer() -> Iterator[KafkaConsumer]:
    client = KafkaConsumer(
        bootstrap_servers=NOWHERE, group_id="quirks", api_version=(2, 8), enable_auto_commit=False
    )
    yield client
    client.close(autocommit=False)


def test_the_pinned_kafka_python_is_the_one_checked() -> None:
    assert version("kafka-python") == "3.0.12"


def test_every_consumer_internal_the_workarounds_touch_is_there(consumer: KafkaConsumer) -> None:
    assert missing_internals(consumer) == []


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
