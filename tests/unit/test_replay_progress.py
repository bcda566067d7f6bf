"""What replay has sent of a partition (``ReplayProgress``), and the room its checkpoint
has for it in a commit's metadata."""

from __future__ import annotations

import math
import random

import pytest

from jobworker.adapters.kafka.offsets import finished_offsets
from jobworker.adapters.kafka.replay_checkpoint import MAX_GAPS, KafkaReplayCheckpoint
from jobworker.domain.dead_letters import ReplayProgress


def runs_above(progress: ReplayProgress) -> int:
    """The gaps counted the slow way: runs of done offsets above ``next_offset``."""
    return sum(1 for offset in progress.done if offset - 1 not in progress.done)


def test_a_partition_never_replayed_starts_at_the_first_letter_seen() -> None:
    progress = ReplayProgress()
    assert not progress.is_done(0)

    progress.seen(5)
    progress.seen(9)  # only the first counts

    assert progress.next_offset == 5
    assert progress.is_done(4)  # below the first letter: nothing there to send
    assert not progress.is_done(5)


def test_letters_marked_in_order_move_the_next_offset_and_leave_no_gaps() -> None:
    progress = ReplayProgress()
    for offset in range(3, 8):
        progress.mark(offset)

    assert progress == ReplayProgress(8, set())
    assert progress.gaps == 0


def test_a_letter_left_behind_is_a_gap_until_it_is_marked() -> None:
    progress = ReplayProgress(10, set())
    for offset in (11, 12, 14):
        progress.mark(offset)

    assert progress.next_offset == 10
    assert progress.done == {11, 12, 14}
    assert progress.gaps == 2  # before 11, and before 14
    assert not progress.is_done(10)
    assert not progress.is_done(13)

    progress.mark(10)  # the first gap filled: 10-12 join what was sent

    assert progress == ReplayProgress(13, {14})
    assert progress.gaps == 1

    progress.mark(13)

    assert progress == ReplayProgress(15, set())
    assert progress.gaps == 0


def test_marking_a_letter_already_done_changes_nothing() -> None:
    progress = ReplayProgress(10, {12})

    progress.mark(4)
    progress.mark(12)

    assert progress == ReplayProgress(10, {12})
    assert progress.gaps == 1


def test_gaps_are_counted_from_a_loaded_checkpoint() -> None:
    assert ReplayProgress(0, {2, 3, 4, 7, 9, 10}).gaps == 3


def test_gaps_after_marking_predicts_the_gaps_marking_leaves() -> None:
    chance = random.Random(7)
    for _ in range(200):
        start = chance.randrange(0, 50)
        progress = ReplayProgress()
        progress.seen(start)
        for _ in range(chance.randrange(0, 30)):
            offset = start + chance.randrange(0, 40)
            predicted = progress.gaps_after_marking(offset)
            progress.mark(offset)
            assert progress.gaps == predicted == runs_above(progress)
            assert progress.next_offset is not None
            assert all(done > progress.next_offset for done in progress.done)


# --- the checkpoint's room -----------------------------------------------------------------


def test_max_gaps_gaps_fit_in_the_commit_metadata_at_the_largest_offsets() -> None:
    # Gaps of 2**28 take 5-byte varints, the most an offset below 2**35 takes; a run of
    # 128 sent letters takes 2 (a real run can take 5 too: the bound below covers it).
    next_offset = 2**34
    gap, run = 2**28, 128
    done = {next_offset + n * (gap + run) + gap + k for n in range(MAX_GAPS) for k in range(run)}
    assert ReplayProgress(next_offset, done).gaps == MAX_GAPS

    metadata = finished_offsets.encode(next_offset, done)

    assert finished_offsets.fits(metadata)
    # The worst case: every run a 5-byte varint, offsets up to 2**35.
    worst = len(f"{finished_offsets.VERSION}:{2**35}:") + math.ceil(MAX_GAPS * 2 * 5 * 4 / 3)
    assert worst <= finished_offsets.METADATA_MAX_BYTES


def test_a_checkpoint_with_gaps_of_usual_size_reads_back_as_it_was_written() -> None:
    next_offset = 2**34
    done = {next_offset + 3 * n + 1 for n in range(MAX_GAPS)}

    metadata = finished_offsets.encode(next_offset, done)

    assert finished_offsets.decode(metadata, next_offset) == done


def test_the_kafka_checkpoint_spans_no_more_offsets_than_its_metadata_reads_back() -> None:
    # The decoder refuses a claim over more offsets as garbage; the service never asks
    # the checkpoint to record a letter further above the first not replayed.
    span = KafkaReplayCheckpoint.max_span
    at_the_limit = {span - 1}
    beyond = {span + 1}

    assert finished_offsets.decode(finished_offsets.encode(0, at_the_limit), 0) == at_the_limit
    with pytest.raises(finished_offsets.UnreadableMetadataError):
        finished_offsets.decode(finished_offsets.encode(0, beyond), 0)
