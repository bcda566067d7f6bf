"""The worker's status record and its publisher, without a broker: the record's fields
and rates (a fake clock), and a publisher whose failures never reach the worker."""

from __future__ import annotations

from collections import Counter
from typing import Any

import gevent
import orjson
import pytest
from structlog.testing import capture_logs

from jobworker.adapters.kafka.stats import SourceStats
from jobworker.adapters.kafka.status import KafkaStatusPublisher
from jobworker.adapters.observability.status_record import (
    MAX_BREAKERS,
    PartitionStatus,
    StatusReadings,
    StatusRecords,
    WorkerIdentity,
)
from jobworker.adapters.sparse_warnings import SparseWarning
from tests.support.waiting import wait_until

IDENTITY = WorkerIdentity("w-1", "1.2.3", "host-a", 4242)


class Clock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def readings(finished: Counter[str], **overrides: Any) -> StatusReadings:
    fields: dict[str, Any] = {
        "jobs_in_flight": lambda: 3,
        "jobs_waiting": lambda: 4,
        "jobs_waiting_to_retry": lambda: 1,
        "results_waiting": lambda: 2,
        "finished": lambda: finished,
        "errors": lambda: {"dlq_records": 5},
    }
    return StatusReadings(**(fields | overrides))


def test_a_record_holds_every_documented_field_and_its_version() -> None:
    finished: Counter[str] = Counter(SUCCEEDED=7, FAILED=1)
    partitions = [PartitionStatus(topic="jobs", partition=0, backlog=12, lag=None)]
    records = StatusRecords(
        IDENTITY,
        readings(
            finished,
            partitions=lambda: partitions,
            breakers=lambda: {"host:a.example": "open"},
            limits=lambda: {"HTTP=5/s": {"in_use": 1, "waiting": 0}},
            last_poll_at_ms=lambda: 1_700_000_000_000,
            last_commit_at_ms=lambda: 1_699_999_999_000,
        ),
        interval_s=5.0,
        clock=Clock(),
        wall_clock=lambda: 1_700_000_000.5,
    )
    assert records.next() == {
        "v": 1,
        "worker_id": "w-1",
        "version": "1.2.3",
        "host": "host-a",
        "pid": 4242,
        "at_ms": 1_700_000_000_500,
        "interval_s": 5.0,
        "partitions": [{"topic": "jobs", "partition": 0, "backlog": 12, "lag": None}],
        "jobs_in_flight": 3,
        "jobs_waiting": 4,
        "jobs_waiting_to_retry": 1,
        "results_waiting": 2,
        "finished": {"SUCCEEDED": 7, "FAILED": 1},
        "rate_per_s": {"SUCCEEDED": 0.0, "FAILED": 0.0},  # no time passed since start
        "errors": {"dlq_records": 5},
        "breakers": {"host:a.example": "open"},
        "limits": {"HTTP=5/s": {"in_use": 1, "waiting": 0}},
        "last_poll_at_ms": 1_700_000_000_000,
        "last_commit_at_ms": 1_699_999_999_000,
    }
    orjson.dumps(records.next())  # JSON as it is


def test_rates_are_over_the_time_since_the_last_record() -> None:
    finished: Counter[str] = Counter(SUCCEEDED=100)  # before the publisher started
    clock = Clock()
    records = StatusRecords(IDENTITY, readings(finished), interval_s=5.0, clock=clock)
    clock.now += 2.0
    finished["SUCCEEDED"] += 10
    assert records.next()["rate_per_s"] == {"SUCCEEDED": 5.0}
    clock.now += 0.5
    finished["SUCCEEDED"] += 1
    finished["TIMED_OUT"] += 2
    record = records.next()
    assert record["rate_per_s"] == {"SUCCEEDED": 2.0, "TIMED_OUT": 4.0}
    assert record["finished"] == {"SUCCEEDED": 111, "TIMED_OUT": 2}


def test_breakers_are_bounded_and_those_not_closed_come_first() -> None:
    states = {f"host:h{n:03d}.example": "closed" for n in range(MAX_BREAKERS + 10)}
    states["host:zz.example"] = "half-open"
    records = StatusRecords(IDENTITY, readings(Counter(), breakers=lambda: states), interval_s=5.0)
    breakers = records.next()["breakers"]
    assert len(breakers) == MAX_BREAKERS
    assert next(iter(breakers.items())) == ("host:zz.example", "half-open")


def test_the_source_keeps_its_last_poll_and_commit_times() -> None:
    stats = SourceStats()
    assert (stats.last_poll_at_ms, stats.last_commit_at_ms) == (None, None)
    stats = stats.polled(1_000).committed(2_000).committed(3_000)
    assert (stats.last_poll_at_ms, stats.last_commit_at_ms) == (1_000, 3_000)
    assert stats.offset_commits == 2


class Future:
    def __init__(self, error: Exception | None) -> None:
        self.error = error

    def add_callback(self, done: Any) -> Future:
        if self.error is None:
            done(object())
        return self

    def add_errback(self, failed: Any) -> Future:
        if self.error is not None:
            failed(self.error)
        return self

    def get(self, timeout: float | None = None) -> None:
        if self.error is not None:
            raise self.error


class Producer:
    """Records what is sent; ``refuse`` fails sends at once, ``lose`` in the errback."""

    def __init__(self, refuse: bool = False, lose: bool = False) -> None:
        self.sent: list[tuple[str, bytes, bytes | None]] = []
        self.refuse, self.lose = refuse, lose
        self.closed = False

    def send(self, topic: str, key: bytes, value: bytes | None) -> Future:
        if self.refuse:
            raise RuntimeError("no room in the buffer")
        self.sent.append((topic, key, value))
        return Future(RuntimeError("the broker did not answer") if self.lose else None)

    def close(self, timeout: float = 0.0) -> None:
        self.closed = True


def publisher(
    producer: Producer, record: Any = lambda: {"v": 1}, **options: Any
) -> KafkaStatusPublisher:
    return KafkaStatusPublisher(
        None,  # type: ignore[arg-type]  # the fakes below stand for what it would make
        "jobs.status",
        "w-1",
        record,
        0.01,
        open_producer=lambda: producer,
        **({"create_topic": lambda: None} | options),
    )


def test_records_go_keyed_by_worker_id_then_the_tombstone_on_stop() -> None:
    producer = Producer()
    status = publisher(producer, lambda: {"v": 1, "worker_id": "w-1"})
    status.start()
    wait_until(lambda: len(producer.sent) >= 2, 5)
    status.stop(1.0)
    assert producer.sent[0] == ("jobs.status", b"w-1", b'{"v":1,"worker_id":"w-1"}')
    assert producer.sent[-1] == ("jobs.status", b"w-1", None)
    assert all(value is not None for _, _, value in producer.sent[:-1])
    assert producer.closed
    assert status.failures == 0


def test_no_tombstone_from_a_publisher_that_never_made_its_producer() -> None:
    status = publisher(Producer())
    status.stop(1.0)  # never started: there is no record to retract
    assert status.failures == 0


@pytest.mark.parametrize(
    ("producer", "record"),
    [
        (Producer(refuse=True), lambda: {"v": 1}),
        (Producer(lose=True), lambda: {"v": 1}),
        (Producer(), lambda: 1 / 0),
        (Producer(), lambda: {"v": object()}),  # not JSON
    ],
    ids=["send-refused", "record-lost", "record-raised", "not-json"],
)
def test_failures_never_raise_and_are_logged_once_a_minute_counting_the_rest(
    producer: Producer, record: Any
) -> None:
    clock = Clock()
    status = publisher(producer, record, warnings=SparseWarning(60.0, clock=clock))
    with capture_logs() as logs:
        for _ in range(5):
            status.publish()
        clock.now += 60.0
        status.publish()
        status.stop(1.0)  # the tombstone fails too, or is lost, and still stop returns
    warnings = [line for line in logs if line["log_level"] == "warning"]
    assert [line["held_back"] for line in warnings] == [0, 4]
    assert all("jobs are not affected" in line["event"] for line in warnings)
    assert status.failures >= 6


def test_no_producer_and_no_topic_stop_nothing() -> None:
    def no_broker() -> Producer:
        raise RuntimeError("NoBrokersAvailable")

    def no_create() -> None:
        raise RuntimeError("TopicAuthorizationFailed")

    status = KafkaStatusPublisher(
        None,  # type: ignore[arg-type]
        "jobs.status",
        "w-1",
        lambda: {"v": 1},
        0.01,
        open_producer=no_broker,
        create_topic=no_create,
    )
    with capture_logs():
        status.start()
        wait_until(lambda: status.failures >= 3, 5)
        status.stop(1.0)
    gevent.sleep(0)
    assert status.sent == 0
