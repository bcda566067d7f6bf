"""The Kafka source's pieces without a broker: flow control and commits over a fake
consumer (our own ``Consumer``'s verbs, not kafka-python's), the bookkeeping real."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping

import pytest
from kafka import TopicPartition
from structlog.testing import capture_logs

from jobworker.adapters.kafka.book import Book, SharedBook
from jobworker.adapters.kafka.commits import OffsetCommits
from jobworker.adapters.kafka.consumer import ConsumerError
from jobworker.adapters.kafka.flow_control import FlowControl
from jobworker.adapters.kafka.offsets.commit_cadence import CommitCadence
from jobworker.adapters.kafka.offsets.partitions import AssignedPartitions, Commit
from jobworker.adapters.kafka.stats import SourceStats

P0 = TopicPartition("jobs", 0)
P1 = TopicPartition("jobs", 1)


class FakeConsumer:
    """What flow control and commits ask of ``consumer.Consumer``."""

    def __init__(self, assignment: set[TopicPartition]) -> None:
        self.assignment = assignment
        self.paused_now: set[TopicPartition] = set()
        self.sent: list[tuple[dict[TopicPartition, Commit], Callable[..., None]]] = []
        self.refuse: ConsumerError | None = None

    def paused(self) -> set[TopicPartition]:
        return set(self.paused_now)

    def pause(self, partitions: Iterable[TopicPartition]) -> None:
        self.paused_now |= set(partitions) & self.assignment

    def resume(self, partitions: Iterable[TopicPartition]) -> None:
        self.paused_now -= set(partitions)

    def commit_async(
        self, commits: Mapping[TopicPartition, Commit], answered: Callable[..., None]
    ) -> None:
        if self.refuse is not None:
            raise self.refuse
        self.sent.append((dict(commits), answered))


def shared(window: int = 3, every: int = 2) -> SharedBook:
    partitions: AssignedPartitions[TopicPartition] = AssignedPartitions(window)
    partitions.assigned([P0, P1])
    partitions.inherit(P0, ())
    partitions.inherit(P1, ())
    return SharedBook(Book(partitions, CommitCadence(1000.0, every, clock=lambda: 0.0)))


def take(book: SharedBook, tp: TopicPartition, offsets: list[int]) -> int:
    """Start jobs at ``offsets``; the epoch of ``tp``'s assignment."""
    with book as b:
        b.partitions.take(tp, offsets)
        return b.partitions.epoch(tp) or 0


def test_a_quiet_source_polls_as_long_as_it_is_offered() -> None:
    book = shared()
    flow = FlowControl(FakeConsumer({P0, P1}), book)  # type: ignore[arg-type]

    assert flow.poll_timeout(5.0, jobs_ready=False) == 5.0
    assert flow.poll_timeout(5.0, jobs_ready=True) == 0.0


def test_a_full_window_is_paused_and_keeps_polls_short_until_it_opens() -> None:
    book, consumer = shared(window=3), FakeConsumer({P0, P1})
    flow = FlowControl(consumer, book)  # type: ignore[arg-type]
    epoch = take(book, P0, [0, 1, 2])

    assert flow.poll_timeout(5.0, jobs_ready=False) == 0.02
    assert consumer.paused_now == {P0}

    with book as b:
        b.partitions.done(P0, 0, epoch)
    assert flow.poll_timeout(5.0, jobs_ready=False) == 0.05  # jobs still out
    assert consumer.paused_now == set()


def test_with_no_room_every_partition_is_paused_and_so_is_one_assigned_meanwhile() -> None:
    book, consumer = shared(), FakeConsumer({P0})
    flow = FlowControl(consumer, book)  # type: ignore[arg-type]

    flow.no_room()
    assert consumer.paused_now == {P0}
    consumer.assignment.add(P1)
    flow.on_assigned([P1])
    assert consumer.paused_now == {P0, P1}

    flow.poll_timeout(5.0, jobs_ready=False)  # room again: none is full
    assert consumer.paused_now == set()


def test_enough_acks_send_a_commit_and_its_answer_is_counted() -> None:
    book, consumer = shared(every=2), FakeConsumer({P0, P1})
    commits = OffsetCommits(consumer, book, close_timeout_s=1.0)  # type: ignore[arg-type]
    epoch = take(book, P0, [0, 1, 2])

    commits.done(P0, 0, epoch)
    commits.maybe_commit()
    assert consumer.sent == []
    commits.done(P0, 1, epoch)
    commits.maybe_commit()

    ((sent, answered),) = consumer.sent
    assert {tp: c.offset for tp, c in sent.items()} == {P0: 2}
    assert book.stats == SourceStats()
    answered(None)
    assert book.stats.offset_commits == 1
    with book as b:
        assert b.partitions.lag_position(P0) == 2


@pytest.mark.parametrize("failure", ["refused", "answered"])
def test_a_failed_commit_is_logged_and_not_counted(failure: str) -> None:
    book, consumer = shared(every=1), FakeConsumer({P0, P1})
    commits = OffsetCommits(consumer, book, close_timeout_s=1.0)  # type: ignore[arg-type]
    epoch = take(book, P0, [0])
    if failure == "refused":
        consumer.refuse = ConsumerError(RuntimeError("coordinator away"))

    with capture_logs() as logs:
        commits.done(P0, 0, epoch)
        commits.maybe_commit()
        if failure == "answered":
            consumer.sent[0][1](RuntimeError("coordinator away"))

    assert [(e["event"], e["error"]) for e in logs] == [
        ("offset commit failed", "coordinator away")
    ]
    assert book.stats.offset_commits == 0
