"""The finished-offsets encoding carried in a commit's metadata."""

from __future__ import annotations

import random

import pytest

from jobworker.adapters.kafka.offsets import finished_offsets
from jobworker.adapters.kafka.offsets.finished_offsets import (
    METADATA_MAX_BYTES,
    UnreadableMetadataError,
    decode,
    encode,
    fits,
)


@pytest.mark.parametrize(
    ("committed", "finished"),
    [
        (0, set(range(1, 601))),
        (5, {5, 6, 9}),
        (3, {100}),
        (1_000_000_000_000, {1_000_000_000_001, 1_000_000_000_003}),
    ],
)
def test_finished_offsets_come_back_as_written(committed: int, finished: set[int]) -> None:
    assert decode(encode(committed, finished), committed) == finished


def test_random_sets_round_trip() -> None:
    rng = random.Random(7)
    for _ in range(200):
        committed = rng.randrange(10_000)
        finished = {committed + rng.randrange(1, 2000) for _ in range(rng.randrange(300))}
        assert decode(encode(committed, finished), committed) == finished


def test_nothing_finished_is_the_empty_string_and_offsets_below_are_dropped() -> None:
    assert encode(10, []) == ""
    assert encode(10, [3, 9]) == ""
    assert decode("", 10) == frozenset()


def test_one_long_run_is_a_few_bytes() -> None:
    # The crash: one job running at the committed offset, 600 done behind it.
    metadata = encode(0, range(1, 601))
    assert metadata.startswith("jw1:0:")
    assert len(metadata) < 16


def test_a_window_of_alternating_offsets_fits_the_default_limit() -> None:
    # The worst case for a run-length code: every other offset done.
    assert fits(encode(0, range(1, 2000, 2)))
    assert not fits(encode(0, range(1, 20_000, 2)), METADATA_MAX_BYTES)


@pytest.mark.parametrize(
    "metadata",
    [
        "hello from another tool",
        "jw2:0:AdgE",  # a later version
        "jw1:7:AdgE",  # written beside another offset (an operator's reset)
        "jw1:0:!!!!",  # not base64
        "jw1:0:gA",  # a varint cut off
        "jw1:0:" + "_" * 40,  # a varint that never ends
        "jw1:x:AdgE",
    ],
)
def test_metadata_not_ours_or_damaged_is_refused(metadata: str) -> None:
    with pytest.raises(UnreadableMetadataError):
        decode(metadata, 0)


def test_a_claim_of_more_offsets_than_fit_is_refused_before_taking_memory() -> None:
    # Two runs of 2**62 offsets: an absurd claim in a few bytes.
    huge = "jw1:0:gICAgICAgIBAgICAgICAgIBA"
    with pytest.raises(UnreadableMetadataError):
        decode(huge, 0)


def test_offsets_that_do_not_fit_are_cut_to_the_leading_runs_that_do() -> None:
    finished = set(range(101, 20_000, 2))  # every other offset: one run pair each
    metadata, complete = finished_offsets.encode_within(100, finished, max_bytes=200)

    assert not complete
    assert len(metadata.encode()) <= 200
    kept = finished_offsets.decode(metadata, 100)
    assert kept and kept <= finished
    assert kept == {o for o in finished if o <= max(kept)}  # a prefix, no holes


def test_offsets_that_fit_are_encoded_whole() -> None:
    metadata, complete = finished_offsets.encode_within(7, {8, 9, 12})

    assert complete
    assert metadata == finished_offsets.encode(7, {8, 9, 12})


def test_a_budget_too_small_for_any_run_gives_no_metadata() -> None:
    assert finished_offsets.encode_within(5, {9}, max_bytes=8) == ("", False)


def test_the_nul_confluent_kafka_writes_after_the_metadata_is_dropped() -> None:
    # librdkafka's binding commits the metadata's C string with its terminating NUL.
    assert decode(encode(10, [12, 13]) + "\x00", 10) == {12, 13}
    assert decode("\x00", 10) == frozenset()
