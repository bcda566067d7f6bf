"""AssignedPartitions: a Kafka source's per-partition rules, without a broker."""

from __future__ import annotations

from jobworker.adapters.kafka.modes import Ordering
from jobworker.adapters.kafka.offsets import finished_offsets
from jobworker.adapters.kafka.offsets.finished_offsets import decode
from jobworker.adapters.kafka.offsets.partitions import AssignedPartitions, Commit, Taken

P0 = ("jobs", 0)
P1 = ("jobs", 1)


def owning(*partitions: tuple[str, int], window: int = 100) -> AssignedPartitions[tuple[str, int]]:
    state: AssignedPartitions[tuple[str, int]] = AssignedPartitions(window)
    state.assigned(partitions)
    for tp in partitions:
        state.inherit(tp, ())
    return state


def finish(state: AssignedPartitions[tuple[str, int]], tp: tuple[str, int], offsets: range) -> None:
    epoch = state.epoch(tp)
    assert epoch is not None
    for offset in offsets:
        assert state.done(tp, offset, epoch)


def test_records_are_taken_while_the_span_stays_in_the_window() -> None:
    state = owning(P0, window=5)

    taken = state.take(P0, list(range(10, 20)))

    assert taken.count == 5
    assert state.full() == {P0}
    finish(state, P0, range(10, 11))
    assert state.full() == set()
    assert state.take(P0, list(range(15, 20))).count == 1


def test_a_slow_head_holds_the_commit_but_the_metadata_records_what_is_done() -> None:
    state = owning(P0)
    state.take(P0, list(range(0, 11)))
    finish(state, P0, range(1, 11))

    commits = state.committable([P0])

    assert commits[P0].offset == 0
    assert decode(commits[P0].metadata, 0) == set(range(1, 11))


def test_nothing_to_commit_until_the_position_or_the_finished_set_moves() -> None:
    state = owning(P0)
    state.take(P0, [0, 1, 2])
    assert state.committable([P0]) == {}
    finish(state, P0, range(1, 2))
    commit = state.committable([P0])[P0]

    state.committed(P0, commit)

    assert state.committable([P0]) == {}
    finish(state, P0, range(0, 1))
    # Offset 2 is pending and nothing above it is done: no metadata.
    assert state.committable([P0])[P0] == Commit(2, "", commit.epoch)


def test_a_new_owner_skips_the_inherited_finished_offsets_and_keeps_them_in_its_commits() -> None:
    state: AssignedPartitions[tuple[str, int]] = AssignedPartitions(1000)
    state.assigned([P0])
    assert state.needs_finished() == {P0}
    state.inherit(P0, set(range(1, 601)))
    assert state.needs_finished() == set()

    taken = state.take(P0, list(range(0, 300)))

    assert taken.count == 300
    assert taken.finished == set(range(1, 300))
    commit = state.committable([P0])[P0]
    # The head (offset 0) runs again; every inherited offset, read or not, stays recorded.
    assert commit.offset == 0
    assert decode(commit.metadata, 0) == set(range(1, 601))
    finish(state, P0, range(0, 1))
    commit = state.committable([P0])[P0]
    assert commit.offset == 300
    assert decode(commit.metadata, 300) == set(range(300, 601))


def test_inherited_offsets_count_in_the_window_like_any_done_offset() -> None:
    # The window bounds the tracker's memory and the metadata's length, done or not.
    state: AssignedPartitions[tuple[str, int]] = AssignedPartitions(10)
    state.assigned([P0])
    state.inherit(P0, set(range(1, 500)))

    assert state.take(P0, list(range(0, 505))).count == 10
    finish(state, P0, range(0, 1))
    assert state.take(P0, list(range(10, 505))).count == 495


def test_finished_offsets_that_do_not_fit_keep_the_leading_ones_and_are_counted() -> None:
    state: AssignedPartitions[tuple[str, int]] = AssignedPartitions(100_000, metadata_max_bytes=64)
    state.assigned([P0])
    state.inherit(P0, ())
    state.take(P0, list(range(0, 1000)))
    for offset in [0, *range(1, 1000, 2)]:
        state.done(P0, offset, state.epoch(P0) or 0)

    commit = state.committable([P0])[P0]

    assert commit.offset == 2
    assert len(commit.metadata.encode()) <= 64
    kept = finished_offsets.decode(commit.metadata, 2)
    # The first finished offsets above the commit, with no gap left out: a prefix.
    assert kept == frozenset(range(3, 3 + 2 * len(kept), 2))
    assert len(kept) > 10
    assert state.metadata_fallbacks == 1


def test_acks_of_an_earlier_assignment_are_ignored() -> None:
    state = owning(P0)
    state.take(P0, [0])
    old_epoch = state.epoch(P0)
    assert old_epoch is not None

    state.lost([P0])
    state.assigned([P0])
    state.take(P0, [0])

    assert state.epoch(P0) != old_epoch
    assert not state.done(P0, 0, old_epoch)


def test_a_revoked_partition_that_comes_back_keeps_its_state() -> None:
    state = owning(P0, P1)
    state.take(P0, [0, 1])
    epoch = state.epoch(P0)

    assert state.revoked([P0, P1, ("jobs", 9)]) == [P0, P1]
    assert state.owned() == set()
    assert state.owned_epoch(P0) is None
    # Acks still count while revoked, until the next assignment.
    assert state.done(P0, 0, epoch or 0)
    state.assigned([P0])

    assert state.owned() == {P0}
    assert state.epoch(P0) == epoch
    assert state.epoch(P1) is None
    assert state.committable([P0])[P0].offset == 1


def test_a_commit_confirmed_for_an_earlier_assignment_or_out_of_order_is_ignored() -> None:
    state = owning(P0)
    state.take(P0, list(range(10)))
    finish(state, P0, range(10))
    epoch = state.epoch(P0) or 0

    state.committed(P0, Commit(10, "", epoch))
    state.committed(P0, Commit(5, "", epoch))
    state.committed(P0, Commit(99, "", epoch + 1))

    assert state.lag_position(P0) == 10


def test_lag_counts_from_where_reading_began_until_this_worker_commits() -> None:
    state = owning(P0)
    state.read(P0, 42)
    state.read(P0, 50)

    assert state.lag_position(P0) == 42
    assert state.lag_position(P1) is None


def test_skipped_offsets_move_the_commit_past_transaction_markers() -> None:
    state = owning(P0)
    state.position_known(P0, 7)

    state.skipped_to(P0, 9)

    assert state.committable([P0])[P0].offset == 9


def test_an_unreadable_batch_holds_the_commit_until_both_ends_are_done() -> None:
    state = owning(P0)
    state.unreadable(P0, 3, 8)
    epoch = state.epoch(P0) or 0

    assert state.committable([P0]) == {}
    # The dead letter is written: both ends are done together.
    state.done(P0, 3, epoch)
    state.done(P0, 8, epoch)
    assert state.committable([P0])[P0].offset == 9


# -- ordering (KAFKA_ORDERING) ------------------------------------------------------------


def ordered(mode: Ordering, window: int = 100) -> AssignedPartitions[tuple[str, int]]:
    state: AssignedPartitions[tuple[str, int]] = AssignedPartitions(window, ordering=mode)
    state.assigned([P0, P1])
    state.inherit(P0, ())
    state.inherit(P1, ())
    return state


def offer(
    state: AssignedPartitions[tuple[str, int]], tp: tuple[str, int], keys: list[bytes | None]
) -> list[int]:
    """Take offsets 0.. with these keys; the offsets admitted to run now."""
    state.take(tp, list(range(len(keys))))
    return [o for o, key in enumerate(keys) if state.admit(tp, o, key, f"{tp[1]}@{o}")]


def test_without_ordering_every_job_runs_at_once() -> None:
    state = ordered(Ordering.NONE)

    assert offer(state, P0, [b"a", b"a", b"a"]) == [0, 1, 2]
    assert not state.holding()


def test_a_keys_later_jobs_wait_and_are_released_one_by_one_in_offset_order() -> None:
    state = ordered(Ordering.KEY)
    epoch = state.epoch(P0) or 0

    assert offer(state, P0, [b"a", b"b", b"a", b"a", None, b"b"]) == [0, 1, 4]
    assert state.holding()
    assert state.ready(10) == []

    state.done(P0, 0, epoch)
    assert state.ready(10) == ["0@2"]  # only the next of key a, not offset 3 too
    state.done(P0, 1, epoch)
    state.done(P0, 2, epoch)
    assert state.ready(10) == ["0@5", "0@3"]  # in the order their predecessors finished
    state.done(P0, 3, epoch)
    state.done(P0, 5, epoch)
    assert state.ready(10) == []
    assert not state.holding()


def test_a_job_that_runs_long_or_retries_holds_its_key_until_it_is_done() -> None:
    state = ordered(Ordering.KEY)
    epoch = state.epoch(P0) or 0
    offer(state, P0, [b"a", b"a"])

    state.done(P0, 1, epoch)  # not released: an ack of a job never handed out is ignored
    assert state.ready(10) == []
    state.done(P0, 0, epoch)
    assert state.ready(10) == ["0@1"]


def test_keys_are_per_partition() -> None:
    state = ordered(Ordering.KEY)

    assert offer(state, P0, [b"a"]) == [0]
    assert offer(state, P1, [b"a"]) == [0]


def test_partition_ordering_runs_one_job_per_partition_whatever_the_keys() -> None:
    state = ordered(Ordering.PARTITION)

    assert offer(state, P0, [b"a", b"b", None]) == [0]
    assert offer(state, P1, [b"a"]) == [0]
    state.done(P0, 0, state.epoch(P0) or 0)
    assert state.ready(10) == ["0@1"]


def test_ready_hands_out_at_most_the_room_the_caller_has() -> None:
    state = ordered(Ordering.KEY)
    epoch = state.epoch(P0) or 0
    offer(state, P0, [b"a", b"b", b"a", b"b"])
    state.done(P0, 0, epoch)
    state.done(P0, 1, epoch)

    assert state.ready(1) == ["0@2"]
    assert state.ready(0) == []
    assert state.ready(5) == ["0@3"]


def test_held_jobs_fill_the_window_and_pause_the_partition() -> None:
    state = ordered(Ordering.PARTITION, window=4)

    assert offer(state, P0, [b"a"] * 10) == [0]

    assert state.full() == {P0}  # four taken, three of them held
    assert state.take(P0, [4]).count == 0


def test_held_jobs_of_a_partition_that_moved_are_dropped() -> None:
    state = ordered(Ordering.KEY)
    epoch = state.epoch(P0) or 0
    offer(state, P0, [b"a", b"a"])
    state.done(P0, 0, epoch)

    state.lost([P0])

    assert state.ready(10) == []
    assert not state.holding()


def test_commits_are_unchanged_by_ordering() -> None:
    state = ordered(Ordering.KEY)
    epoch = state.epoch(P0) or 0
    offer(state, P0, [b"a", b"a", b"b"])
    state.done(P0, 2, epoch)

    commit = state.committable([P0])[P0]

    assert commit.offset == 0
    assert decode(commit.metadata, 0) == {2}


def test_jobs_held_or_released_but_not_handed_out_are_not_counted_as_handed_out() -> None:
    state = ordered(Ordering.KEY)
    epoch = state.epoch(P0) or 0
    offer(state, P0, [b"a", b"a", b"a", b"b"])

    assert state.in_flight(P0) == 4
    assert state.handed_out(P0) == 2  # a@0 and b@3
    state.done(P0, 0, epoch)
    assert state.handed_out(P0) == 1  # a@1 released, waiting for a fetch
    state.ready(10)
    assert state.handed_out(P0) == 2


def test_nothing_is_taken_before_the_finished_offsets_are_read() -> None:
    state: AssignedPartitions[tuple[str, int]] = AssignedPartitions(100)
    state.assigned([P0])

    assert state.take(P0, [0, 1]).count == 0
    state.inherit(P0, {1})
    assert state.take(P0, [0, 1]) == Taken(count=2, finished={1})


def test_jobs_read_ahead_are_handed_out_in_order_after_those_already_waiting() -> None:
    state = ordered(Ordering.KEY)
    epoch = state.epoch(P0) or 0
    assert offer(state, P0, [b"a", b"a", b"b", b"c"]) == [0, 2, 3]
    state.done(P0, 0, epoch)  # releases offset 1 before anything is set aside

    state.set_aside(P0, epoch, ["0@2", "0@3"])

    assert state.holding()
    assert state.waiting_to_hand_out() == 3
    assert state.ready(2) == ["0@1", "0@2"]
    assert state.ready(10) == ["0@3"]
    assert state.waiting_to_hand_out() == 0


def test_jobs_read_ahead_count_as_not_handed_out() -> None:
    state = owning(P0)
    epoch = state.epoch(P0) or 0
    state.take(P0, [0, 1, 2])

    state.set_aside(P0, epoch, ["0@1", "0@2"])

    assert state.in_flight(P0) == 3
    assert state.handed_out(P0) == 1
    state.ready(1)
    assert state.handed_out(P0) == 2


def test_jobs_read_ahead_of_a_partition_given_up_are_never_handed_out() -> None:
    state = owning(P0, P1)
    p0, p1 = state.epoch(P0) or 0, state.epoch(P1) or 0
    state.take(P0, [0, 1])
    state.take(P1, [0, 1])
    state.set_aside(P0, p0, ["0@0", "0@1"])
    state.set_aside(P1, p1, ["1@0", "1@1"])

    state.revoked([P0, P1])
    state.assigned([P1])  # P0 went to another worker, which reads those records again
    state.lost([])

    assert state.waiting_to_hand_out() == 2
    assert state.ready(10) == ["1@0", "1@1"]


def test_jobs_read_ahead_before_a_partition_was_lost_and_assigned_again_are_dropped() -> None:
    state = owning(P0)
    old = state.epoch(P0) or 0
    state.take(P0, [0, 1])
    state.set_aside(P0, old, ["old@0", "old@1"])

    state.lost([P0])
    state.assigned([P0])
    state.inherit(P0, ())

    assert state.epoch(P0) != old
    assert state.ready(10) == []
    assert state.handed_out(P0) == 0


def test_jobs_read_ahead_wait_while_their_partition_is_revoked_and_go_if_it_comes_back() -> None:
    # Between a revoke and the next assignment the revoke commit is before them: handed
    # out then, they would run here and again on the partition's next owner.
    state = owning(P0, P1)
    p0, p1 = state.epoch(P0) or 0, state.epoch(P1) or 0
    state.take(P0, [0, 1])
    state.take(P1, [0])
    state.set_aside(P0, p0, ["0@0", "0@1"])
    state.set_aside(P1, p1, ["1@0"])

    state.revoked([P0, P1])
    assert state.ready(10) == []
    # Not counted as at hand: a fetch counting them would poll without waiting, again
    # and again, until the rebalance ends.
    assert state.waiting_to_hand_out() == 0
    assert not state.holding()
    assert state.handed_out(P0) == 0  # taken, but kept here

    state.assigned([P0])  # P0 comes back (same assignment), P1 goes elsewhere
    assert state.waiting_to_hand_out() == 2
    assert state.ready(10) == ["0@0", "0@1"]
    assert state.waiting_to_hand_out() == 0


def test_a_job_released_for_its_key_while_its_partition_is_revoked_waits_for_its_return() -> None:
    state = ordered(Ordering.KEY)
    epoch = state.epoch(P0) or 0
    offer(state, P0, [b"a", b"a"])

    state.revoked([P0])
    state.done(P0, 0, epoch)  # finished within the revoke's grace: releases offset 1
    assert state.ready(10) == []
    assert state.waiting_to_hand_out() == 0

    state.assigned([P0, P1])
    assert state.ready(10) == ["0@1"]


def test_jobs_kept_for_a_revoked_partition_that_goes_elsewhere_are_dropped() -> None:
    state = owning(P0, P1)
    state.take(P0, [0])
    state.set_aside(P0, state.epoch(P0) or 0, ["0@0"])

    state.revoked([P0, P1])
    state.assigned([P1])
    state.assigned([P0])  # a new assignment of P0: read again from its commit

    assert state.ready(10) == []


def test_nothing_is_taken_of_a_partition_revoked_and_awaiting_its_next_assignment() -> None:
    state = owning(P0)
    state.take(P0, [0])

    state.revoked([P0])
    assert state.take(P0, [1, 2]).count == 0  # read again if it comes back

    state.assigned([P0])
    assert state.take(P0, [1, 2]).count == 2
