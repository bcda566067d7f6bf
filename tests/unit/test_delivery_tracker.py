"""DeliveryTracker: the committed offset never passes a job that is not done."""

from __future__ import annotations

import random

from jobworker.adapters.kafka.offsets.delivery_tracker import DeliveryTracker

P0 = ("jobs", 0)
P1 = ("jobs", 1)


def started(tracker: DeliveryTracker, partition: object, offsets: range) -> None:
    for offset in offsets:
        tracker.started(partition, offset)


def test_a_partition_nobody_started_has_nothing_to_commit() -> None:
    tracker = DeliveryTracker()

    assert tracker.committable(P0) is None
    assert tracker.in_flight(P0) == 0


def test_nothing_is_committable_before_the_first_job_is_done() -> None:
    tracker = DeliveryTracker()
    started(tracker, P0, range(10, 13))

    assert tracker.committable(P0) is None
    assert tracker.in_flight(P0) == 3


def test_in_order_completion_commits_one_past_the_last_done() -> None:
    tracker = DeliveryTracker()
    started(tracker, P0, range(10, 13))

    for offset in range(10, 13):
        tracker.done(P0, offset)

    assert tracker.committable(P0) == 13
    assert tracker.in_flight(P0) == 0


def test_out_of_order_completion_stops_at_the_unfinished_offset() -> None:
    tracker = DeliveryTracker()
    started(tracker, P0, range(5))

    for offset in (1, 2, 3, 4):
        tracker.done(P0, offset)

    assert tracker.committable(P0) is None  # offset 0 is still running
    tracker.done(P0, 0)
    assert tracker.committable(P0) == 5


def test_a_slow_job_in_the_middle_holds_the_commit_at_its_offset() -> None:
    tracker = DeliveryTracker()
    started(tracker, P0, range(10))
    for offset in (0, 1, 2, 4, 5, 6, 7, 8, 9):
        tracker.done(P0, offset)

    assert tracker.committable(P0) == 3
    tracker.mark_committed(P0, 3)
    assert tracker.committable(P0) is None

    tracker.done(P0, 3)
    assert tracker.committable(P0) == 10


def test_committable_reports_only_progress_since_the_last_commit() -> None:
    tracker = DeliveryTracker()
    started(tracker, P0, range(3))
    tracker.done(P0, 0)
    tracker.mark_committed(P0, tracker.committable(P0) or 0)

    assert tracker.committable(P0) is None
    tracker.done(P0, 1)
    assert tracker.committable(P0) == 2


def test_gaps_in_offsets_are_committed_past() -> None:
    # Compacted topics and transaction markers leave holes in the offsets.
    tracker = DeliveryTracker()
    for offset in (3, 7, 20):
        tracker.started(P0, offset)
    tracker.done(P0, 3)
    tracker.done(P0, 20)

    assert tracker.committable(P0) == 7
    tracker.done(P0, 7)
    assert tracker.committable(P0) == 21


def test_partitions_are_independent() -> None:
    tracker = DeliveryTracker()
    started(tracker, P0, range(3))
    started(tracker, P1, range(100, 102))

    tracker.done(P1, 100)
    tracker.done(P1, 101)

    assert tracker.committable(P0) is None
    assert tracker.committable(P1) == 102
    assert tracker.in_flight(P0) == 3


def test_done_for_unknown_offsets_and_partitions_is_ignored() -> None:
    tracker = DeliveryTracker()
    started(tracker, P0, range(2))

    assert tracker.done(P0, 99) is False
    assert tracker.done(P1, 0) is False
    assert tracker.done(P0, 0) is True
    assert tracker.done(P0, 0) is False  # a second ack of the same delivery
    assert tracker.in_flight(P0) == 1
    assert tracker.committable(P0) == 1


def test_forget_drops_the_partition_and_ignores_later_acks() -> None:
    tracker = DeliveryTracker()
    started(tracker, P0, range(3))
    tracker.done(P0, 0)

    tracker.forget(P0)

    assert tracker.done(P0, 1) is False
    assert tracker.committable(P0) is None
    assert tracker.in_flight(P0) == 0
    assert list(tracker.partitions()) == []


def test_a_partition_assigned_again_starts_a_fresh_ledger() -> None:
    tracker = DeliveryTracker()
    started(tracker, P0, range(5))
    tracker.forget(P0)

    started(tracker, P0, range(2, 4))  # the committed offset was 2
    tracker.done(P0, 2)

    assert tracker.committable(P0) == 3


def test_mark_committed_for_an_unknown_partition_is_ignored() -> None:
    tracker = DeliveryTracker()
    tracker.mark_committed(P0, 10)

    assert tracker.committable(P0) is None
    assert list(tracker.partitions()) == []


def test_starting_an_offset_twice_counts_it_once() -> None:
    tracker = DeliveryTracker()
    tracker.started(P0, 0)
    tracker.started(P0, 0)

    tracker.done(P0, 0)

    assert tracker.in_flight(P0) == 0
    assert tracker.committable(P0) == 1


def test_random_completion_orders_never_commit_past_an_unfinished_offset() -> None:
    rng = random.Random(20241128)
    for _ in range(200):
        tracker = DeliveryTracker()
        offsets = list(range(50))
        started(tracker, P0, range(50))
        rng.shuffle(offsets)
        done: set[int] = set()
        for offset in offsets:
            tracker.done(P0, offset)
            done.add(offset)
            position = tracker.committable(P0)
            if position is not None:
                assert all(o in done for o in range(position))
                assert position == 50 or position not in done
                tracker.mark_committed(P0, position)
        assert tracker.in_flight(P0) == 0
        assert tracker.committable(P0) is None  # the last done moved it to 50 already


def test_the_span_runs_from_the_lowest_pending_offset_past_the_highest_started() -> None:
    tracker = DeliveryTracker()
    assert tracker.span(P0) == 0
    started(tracker, P0, range(10, 15))

    assert tracker.span(P0) == 5
    tracker.done(P0, 10)
    assert tracker.span(P0) == 4
    tracker.done(P0, 14)  # the highest started offset still counts
    assert tracker.span(P0) == 4
    for offset in (11, 12, 13):
        tracker.done(P0, offset)
    assert tracker.span(P0) == 0
    assert tracker.lowest_pending(P0) is None


def test_one_stuck_offset_keeps_the_span_growing_while_in_flight_stays_small() -> None:
    # Counting pending jobs would let this partition read on forever behind offset 0.
    tracker = DeliveryTracker()
    tracker.started(P0, 0)
    for offset in range(1, 1000):
        tracker.started(P0, offset)
        tracker.done(P0, offset)

    assert tracker.in_flight(P0) == 1
    assert tracker.span(P0) == 1000
    assert tracker.lowest_pending(P0) == 0
    assert tracker.committable(P0) is None


def test_the_offsets_held_in_memory_never_exceed_the_span() -> None:
    rng = random.Random(7)
    tracker = DeliveryTracker()
    window = 20
    next_offset = 0
    for _ in range(2000):
        if tracker.span(P0) < window and rng.random() < 0.6:
            tracker.started(P0, next_offset)
            next_offset += 1
        elif (lowest := tracker.lowest_pending(P0)) is not None:
            tracker.done(P0, rng.randrange(lowest, next_offset))
        assert tracker.held(P0) <= tracker.span(P0) <= window

    for offset in range(next_offset):
        tracker.done(P0, offset)
    assert (tracker.held(P0), tracker.span(P0)) == (0, 0)


def test_a_gap_in_offsets_counts_in_the_span() -> None:
    tracker = DeliveryTracker()
    for offset in (3, 9):
        tracker.started(P0, offset)

    assert tracker.span(P0) == 7
    assert tracker.span(P1) == 0
    assert tracker.held(P1) == 0


def test_offsets_the_consumer_skipped_move_the_commit_once_nothing_is_pending() -> None:
    tracker = DeliveryTracker()
    tracker.started("p", 0)
    tracker.started("p", 1)
    tracker.skipped_to("p", 5, start=0)  # a transaction marker and aborted records
    assert tracker.committable("p") is None, "never past a pending job"
    tracker.done("p", 0)
    tracker.done("p", 1)
    assert tracker.committable("p") == 5
    tracker.skipped_to("p", 3, start=0)
    assert tracker.committable("p") == 5, "never moves back"


def test_skipped_offsets_of_a_partition_with_no_job_yet_start_where_reading_began() -> None:
    tracker = DeliveryTracker()
    tracker.skipped_to("p", 7, start=7)
    assert tracker.committable("p") is None
    tracker.skipped_to("p", 9, start=7)
    assert tracker.committable("p") == 9
