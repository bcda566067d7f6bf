"""The confluent consumer never makes the hub wait for a call it stopped waiting for.

librdkafka lets one call at a time into a consumer: with the broker frozen, a synchronous
commit past its timeout goes on on the native thread, and a direct call from the hub
(position, seek, an asynchronous commit) would wait for it until the broker answers:
57 s once in bench/frozen_broker.py. The client here is a stand-in whose synchronous
commit waits until released, as librdkafka's does.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from confluent_kafka import TopicPartition as RdTopicPartition
from gevent import monkey
from kafka import TopicPartition

from jobworker.adapters.kafka.confluent.consumer import ConfluentConsumer
from jobworker.adapters.kafka.consumer import ConsumerError
from jobworker.adapters.kafka.offsets.partitions import Commit
from jobworker.adapters.kafka.settings import KafkaClientSettings

TP = TopicPartition("jobs", 0)
_thread_id = monkey.get_original("_thread", "get_ident")
_event = monkey.get_original("threading", "Event")


class FrozenBrokerClient:
    """A synchronous commit waits for ``release``; other calls note the thread they came
    from, and would wait too if made while it waits (as librdkafka's do)."""

    def __init__(self) -> None:
        self.release = _event()
        self.calls: list[tuple[str, int]] = []
        self._busy = threading.Lock()

    def commit(self, offsets: list[Any], asynchronous: bool) -> list[Any]:
        if asynchronous:
            self._note("commit_async")
            return []
        with self._busy:
            self.release.wait(10)
        return []

    def position(self, partitions: list[Any]) -> list[Any]:
        self._note("position")
        return [RdTopicPartition(TP.topic, TP.partition, 7)]

    def seek(self, partition: Any) -> None:
        self._note("seek")

    def close(self) -> None:
        pass

    def _note(self, call: str) -> None:
        assert not self._busy.locked(), f"{call} made while the commit waits: it would wait too"
        self.calls.append((call, _thread_id()))


@pytest.fixture
def consumer() -> Iterator[tuple[ConfluentConsumer, FrozenBrokerClient]]:
    made = ConfluentConsumer(KafkaClientSettings(["127.0.0.1:9"]), "jobs", "hub-test")
    real, made._client = made._client, FrozenBrokerClient()
    made._assignment = frozenset({TP})
    yield made, made._client
    made._client.release.set()
    made._thread.kill()
    real.close()


def test_while_a_timed_out_commit_waits_the_hub_calls_nothing_that_would_wait(
    consumer: tuple[ConfluentConsumer, FrozenBrokerClient],
) -> None:
    source, client = consumer
    with pytest.raises(ConsumerError):
        source.commit({TP: Commit(5, "", 0)}, timeout_s=0.05)

    started = time.monotonic()
    assert source.position(TP) is None  # unknown for now
    with pytest.raises(ConsumerError):  # sent again at the next commit
        source.commit_async({TP: Commit(5, "", 0)}, lambda _: None)
    source.seek(TP, 3)  # queued behind the commit
    assert time.monotonic() - started < 0.5
    assert client.calls == []

    client.release.set()
    source._on_native.get(timeout=5)
    ((call, thread),) = client.calls
    assert call == "seek"
    assert thread != _thread_id()  # on the native thread, after the commit


def test_with_the_native_thread_idle_the_hub_calls_the_client_directly(
    consumer: tuple[ConfluentConsumer, FrozenBrokerClient],
) -> None:
    source, client = consumer
    client.release.set()
    source.commit({TP: Commit(5, "", 0)}, timeout_s=5)

    assert source.position(TP) == 7
    source.seek(TP, 3)

    assert client.calls == [("position", _thread_id()), ("seek", _thread_id())]
