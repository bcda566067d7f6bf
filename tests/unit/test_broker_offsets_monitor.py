"""The lag gauge: the broker's figures kept through broker outages, merged with the consumer's."""

from __future__ import annotations

import threading
import time
from collections.abc import Collection
from typing import Any, cast

import pytest
from kafka import TopicPartition
from kafka.errors import KafkaConnectionError, KafkaError
from structlog.testing import capture_logs

from jobworker.adapters.kafka import KafkaClientSettings
from jobworker.adapters.kafka.lag import (
    BrokerOffsetsMonitor,
    GroupOffsetsProbe,
    PartitionOffsets,
    partition_lag,
)

TP = TopicPartition("jobs", 0)


class ScriptedProbe:
    """Answers measure() from a script: an offsets dict, or an exception to raise."""

    def __init__(self, *answers: Any) -> None:
        self.answers = list(answers)
        self.asked: list[list[TopicPartition]] = []
        self.closed = False

    def measure(self, partitions: Collection[TopicPartition]) -> dict[TopicPartition, Any]:
        self.asked.append(list(partitions))
        answer = self.answers.pop(0)
        if isinstance(answer, BaseException):
            raise answer
        return cast(dict[TopicPartition, Any], answer)

    def close(self) -> None:
        self.closed = True


def monitor_for(probe: ScriptedProbe, owned: list[TopicPartition]) -> BrokerOffsetsMonitor:
    return BrokerOffsetsMonitor(cast(GroupOffsetsProbe, probe), lambda: owned)


def test_it_asks_for_the_owned_partitions_and_keeps_the_answer() -> None:
    probe = ScriptedProbe({TP: PartitionOffsets(10, 4)})
    monitor = monitor_for(probe, [TP])

    monitor.refresh()

    assert probe.asked == [[TP]]
    assert monitor.latest() == {TP: PartitionOffsets(10, 4)}


def test_a_broker_that_does_not_answer_leaves_the_last_figures_and_warns_once() -> None:
    down = KafkaConnectionError("connection refused")
    probe = ScriptedProbe({TP: PartitionOffsets(10, 4)}, down, down, {TP: PartitionOffsets(12, 12)})
    monitor = monitor_for(probe, [TP])

    with capture_logs() as logs:
        monitor.refresh()
        monitor.refresh()
        monitor.refresh()
        kept = monitor.latest()
        monitor.refresh()

    assert kept == {TP: PartitionOffsets(10, 4)}
    assert probe.closed, "a failed probe starts over with a new client (a moved coordinator)"
    assert monitor.latest() == {TP: PartitionOffsets(12, 12)}
    assert [e["error_type"] for e in logs if e["log_level"] == "warning"] == [
        "KafkaConnectionError"
    ]


def test_stop_closes_the_probe() -> None:
    probe = ScriptedProbe({})
    monitor = monitor_for(probe, [])
    monitor.start()
    monitor.stop()

    assert probe.closed


@pytest.mark.parametrize(
    ("highwater", "position", "broker", "lag"),
    [
        # What the consumer alone knows: after a fetch and a commit.
        (10, 4, None, 6),
        # A partition paused while records kept coming: the broker's end is newer.
        (10, 4, PartitionOffsets(25, 4), 21),
        # A commit since the broker was asked: the consumer's position is newer.
        (25, 20, PartitionOffsets(25, 4), 5),
        # A partition not read yet: only the broker knows anything.
        (None, None, PartitionOffsets(7, 2), 5),
        # Nothing known about the end: no figure rather than a wrong one.
        (None, 3, None, None),
        # Never negative, though the figures come from different moments.
        (10, 12, None, 0),
    ],
)
def test_partition_lag_takes_the_fresher_figure_of_each(
    highwater: int | None, position: int | None, broker: PartitionOffsets | None, lag: int | None
) -> None:
    assert partition_lag(highwater, position, broker) == lag


def test_a_probe_that_cannot_reach_a_broker_fails_and_leaves_no_thread_behind() -> None:
    # Port 1 on loopback refuses at once: every try fails to bootstrap.
    settings = KafkaClientSettings(["127.0.0.1:1"], client_id="probe-without-broker")
    probe = GroupOffsetsProbe(settings, "workers", timeout_s=0.3)

    for _ in range(3):
        with pytest.raises(KafkaError):
            probe.measure([TP])

    # kafka-python names a client's I/O thread after its client id.
    assert [t.name for t in threading.enumerate() if "probe-without-broker" in t.name] == []


def test_the_time_of_the_last_answer_is_kept_and_a_failure_does_not_renew_it() -> None:
    down = KafkaConnectionError("connection refused")
    probe = ScriptedProbe({TP: PartitionOffsets(10, 4)}, down)
    monitor = monitor_for(probe, [TP])
    assert monitor.seconds_since_answer() is None  # never answered: not "just now"

    before = time.monotonic()
    monitor.refresh()
    answered = monitor.seconds_since_answer()
    assert answered is not None and answered <= time.monotonic() - before
    time.sleep(0.2)  # time passes on purpose, to be measured (the monitor reads the real clock)
    with capture_logs():
        monitor.refresh()  # the broker does not answer

    silent = monitor.seconds_since_answer()
    assert silent is not None and silent >= 0.2


def test_a_partition_newly_owned_is_asked_for_within_a_second_not_the_next_interval() -> None:
    import gevent

    new = TopicPartition("jobs", 1)
    owned = [TP]
    probe = ScriptedProbe(
        {TP: PartitionOffsets(10, 4)},
        {TP: PartitionOffsets(10, 4), new: PartitionOffsets(7, 0)},
        *[{TP: PartitionOffsets(10, 4), new: PartitionOffsets(7, 0)}] * 5,
    )
    monitor = BrokerOffsetsMonitor(cast(GroupOffsetsProbe, probe), lambda: owned, interval_s=60)
    monitor.start()
    try:
        gevent.sleep(0.1)
        assert probe.asked == [[TP]]
        owned.append(new)
        gevent.sleep(1.6)
        assert probe.asked[1:] == [[TP, new]]
        assert monitor.latest()[new] == PartitionOffsets(7, 0)
        gevent.sleep(1.2)
        assert len(probe.asked) == 2, "covered: nothing more until the interval"
    finally:
        monitor.stop()
