"""Replaying a dead-letter topic on in-memory adapters: what is sent, where, with which
headers, and what the checkpoint says was sent (so nothing is lost or sent twice)."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace

import pytest

from jobworker.adapters.memory import (
    InMemoryDeadLetterReader,
    InMemoryRecordRepublisher,
    InMemoryReplayCheckpoint,
    InMemoryResultSink,
)
from jobworker.application.dead_letter_service import (
    CHUNK_LETTERS,
    CORE,
    DeadLetterService,
    ReplayOptions,
    ReplaySummary,
)
from jobworker.domain.dead_letters import (
    DeadLetterTopicMissing,
    Headers,
    Letter,
    LetterFilter,
    LetterKind,
    RecordCopy,
    ReplayProgress,
)
from jobworker.domain.errors import AccessRefused
from jobworker.domain.model import JobResult, JobStatus

DLQ = "jobs.dlq"
NOW_MS = 1_700_000_000_000
EVERY = LetterFilter()


def job_letter(
    offset: int,
    *,
    partition: int = 0,
    source_topic: str | None = "jobs",
    reason: str = "not a JobTask",
    job_id: str | None = None,
    replays: int = 0,
    key: bytes | None = None,
    headers: Headers = (),
    timestamp_ms: int = 0,
    unreplayable: str | None = None,
) -> Letter:
    job_id = job_id or f"job-{partition}-{offset}"
    return Letter(
        topic=DLQ,
        partition=partition,
        offset=offset,
        timestamp_ms=timestamp_ms,
        kind=LetterKind.JOB,
        reason=reason,
        cause=reason,
        size=10,
        source_topic=source_topic,
        source_partition=partition,
        source_offset=1000 + offset,
        job_id=job_id,
        job_type="SLEEP",
        replays=replays,
        records=(RecordCopy(key or job_id.encode(), job_id.encode(), headers, 1000 + offset),),
        unreplayable=unreplayable,
    )


def result_letter(offset: int, job_id: str, *, partition: int = 0) -> Letter:
    return Letter(
        topic=DLQ,
        partition=partition,
        offset=offset,
        timestamp_ms=0,
        kind=LetterKind.RESULT,
        reason="Core refused",
        cause="Core FAILED_PRECONDITION: unknown job",
        size=10,
        job_id=job_id,
        result=JobResult(job_id, "SLEEP", JobStatus.SUCCEEDED, output="{}"),
    )


class Listener:
    """A ReplayListener keeping what it heard: ``sent_to`` (where, target) and
    ``left_out`` (where, why, refused)."""

    def __init__(self) -> None:
        self.sent_to: list[tuple[str, str]] = []
        self.left_out: list[tuple[str, str, bool]] = []

    def sent(self, letter: Letter, target: str) -> None:
        self.sent_to.append((letter.where, target))

    def left(self, letter: Letter, why: str, *, refused: bool) -> None:
        self.left_out.append((letter.where, why, refused))


class Clock:
    """A clock that moves only when replay sleeps; ``sleeps`` are the waits it asked for."""

    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


@dataclass
class Setup:
    """The service over one dead-letter topic, and the adapters it replays through."""

    reader: InMemoryDeadLetterReader
    checkpoint: InMemoryReplayCheckpoint = field(default_factory=InMemoryReplayCheckpoint)
    republisher: InMemoryRecordRepublisher = field(default_factory=InMemoryRecordRepublisher)
    sink: InMemoryResultSink = field(default_factory=InMemoryResultSink)
    clock: Clock = field(default_factory=Clock)
    listener: Listener = field(default_factory=Listener)

    @property
    def service(self) -> DeadLetterService:
        return DeadLetterService(
            self.reader,
            checkpoint=lambda: self.checkpoint,
            republisher=lambda: self.republisher,
            sink=lambda: self.sink,
            clock=self.clock,
            wall_clock_ms=lambda: NOW_MS,
            sleep=self.clock.sleep,
        )

    def replay(
        self,
        which: LetterFilter = EVERY,
        should_stop: Callable[[], bool] = lambda: False,
        **options: object,
    ) -> ReplaySummary:
        chosen = ReplayOptions(**{"max_replays": 3, **options})  # type: ignore[arg-type]
        return self.service.replay(which, chosen, self.listener, should_stop)

    def sent_offsets(self) -> list[int]:
        """The dead-letter offsets of the records sent (from their provenance header)."""
        return [int(dict(record.headers)["x-replay-dlq-offset"]) for _, record in self.sent()]

    def sent_places(self) -> list[tuple[int, int]]:
        """The dead-letter partitions and offsets of the records sent."""
        return [
            (
                int(dict(headers)["x-replay-dlq-partition"]),
                int(dict(headers)["x-replay-dlq-offset"]),
            )
            for headers in (record.headers for _, record in self.sent())
        ]

    def sent(self) -> list[tuple[str, RecordCopy]]:
        return self.republisher.sent


def topic(*letters: Letter) -> Setup:
    by_partition: dict[int, list[Letter]] = {}
    for letter in letters:
        by_partition.setdefault(letter.partition, []).append(letter)
    return Setup(InMemoryDeadLetterReader(DLQ, by_partition))


def jobs(offsets: Iterable[int], **fields: object) -> list[Letter]:
    return [job_letter(offset, **fields) for offset in offsets]  # type: ignore[arg-type]


# --- what a replayed record looks like -------------------------------------------------


def test_a_replayed_job_keeps_its_key_and_own_headers_and_carries_its_provenance() -> None:
    own = (("traceparent", b"00-abc-def-01"), ("tenant", b"acme"))
    earlier = (
        ("x-replay-count", b"2"),
        ("x-replay-dlq-offset", b"77"),
        ("x-replay-at-ms", b"1"),
        ("x-dlq-reason", b"an old reason"),
    )
    setup = topic(job_letter(5, key=b"the-key", headers=own + earlier, replays=2))

    summary = setup.replay()

    [(target, record)] = setup.sent()
    assert target == "jobs"
    assert record.key == b"the-key"
    assert record.value == b"job-0-5"
    assert record.headers == (
        *own,
        ("x-replay-count", b"3"),
        ("x-replay-dlq-topic", DLQ.encode()),
        ("x-replay-dlq-partition", b"0"),
        ("x-replay-dlq-offset", b"5"),
        ("x-replay-at-ms", str(NOW_MS).encode()),
    )
    assert summary.replayed_total == 1
    assert summary.targets == {"jobs": 1}
    assert setup.listener.sent_to == [("0:5", "jobs")]


def test_to_replaces_the_source_topic_and_sends_letters_that_name_none() -> None:
    setup = topic(job_letter(0), job_letter(1, source_topic=None))

    setup.replay(to_topic="jobs.retry")

    assert [target for target, _ in setup.sent()] == ["jobs.retry", "jobs.retry"]


def test_a_letter_without_a_source_topic_is_skipped_with_the_reason() -> None:
    setup = topic(job_letter(0, source_topic=None), job_letter(1))

    summary = setup.replay()

    assert setup.sent_offsets() == [1]
    [(where, why, refused)] = setup.listener.left_out
    assert (where, refused) == ("0:0", False)
    assert "no source topic" in why
    assert "--to" in why
    assert sum(summary.skipped.values()) == 1


def test_a_batch_letter_is_sent_record_by_record_with_each_record_s_source_offset() -> None:
    records = tuple(RecordCopy(f"k{n}".encode(), b"v", (), 40 + n) for n in range(3))
    batch = replace(job_letter(9), kind=LetterKind.BATCH, records=records)
    setup = topic(batch)

    summary = setup.replay()

    assert [record.key for _, record in setup.sent()] == [b"k0", b"k1", b"k2"]
    assert [dict(record.headers)["x-replay-source-offset"] for _, record in setup.sent()] == [
        b"40",
        b"41",
        b"42",
    ]
    assert all(dict(r.headers)["x-replay-dlq-offset"] == b"9" for _, r in setup.sent())
    assert summary.replayed_total == 1  # one letter, however many records
    assert setup.checkpoint.saved[0].is_done(9)


def test_unreplayable_letters_are_skipped_with_their_own_reason() -> None:
    foreign = Letter(
        topic=DLQ,
        partition=0,
        offset=0,
        timestamp_ms=0,
        kind=LetterKind.FOREIGN,
        reason="no x-dlq-reason header",
        cause="not a dead letter",
        size=1,
        unreplayable="not a worker's dead letter (no x-dlq-* headers)",
    )
    dropped = job_letter(1, unreplayable="its value was not kept (2000000 bytes)")
    setup = topic(foreign, dropped, job_letter(2))

    summary = setup.replay()

    assert setup.sent_offsets() == [2]
    assert summary.skipped == {
        "not a worker's dead letter (no x-dlq-* headers)": 1,
        "its value was not kept (2000000 bytes)": 1,
    }


# --- the checkpoint: each letter once ---------------------------------------------------


def test_a_second_replay_sends_nothing_new_and_says_it_resumed() -> None:
    setup = topic(*jobs(range(3)), *jobs(range(2), partition=1))

    first = setup.replay()
    second = setup.replay()

    assert first.replayed_total == 5
    assert not first.resumed
    assert len(setup.sent()) == 5
    assert second.replayed_total == 0
    assert second.resumed
    assert setup.checkpoint.saved[0].next_offset == 3
    assert setup.checkpoint.saved[1].next_offset == 2


def test_letters_written_after_a_replay_are_all_the_next_one_sends() -> None:
    setup = topic(*jobs(range(3)))
    setup.replay()
    setup.reader.by_partition[0].extend(jobs(range(3, 5)))  # type: ignore[index]

    setup.replay()

    assert setup.sent_offsets() == [0, 1, 2, 3, 4]


WANTED = {(0, 3), (0, 4), (1, 0), (1, 1)}


@pytest.mark.parametrize(
    ("which", "taken"),
    [
        (LetterFilter(reason="TIMEOUT"), WANTED),
        (LetterFilter(job_id="wanted"), WANTED),
        (LetterFilter(since_ms=2_000), WANTED),
        (LetterFilter(partition=1), {(1, 0), (1, 1)}),
    ],
    ids=["reason", "job-id", "since", "partition"],
)
def test_letters_filtered_out_are_left_for_a_later_replay_which_sends_only_them(
    which: LetterFilter, taken: set[tuple[int, int]]
) -> None:
    wanted = {"reason": "timeout reading payload", "job_id": "wanted", "timestamp_ms": 2_000}
    others = {"timestamp_ms": 1_000}
    letters = [
        *(job_letter(n, **others) for n in range(3)),  # type: ignore[arg-type]
        *(job_letter(n, **wanted) for n in (3, 4)),  # type: ignore[arg-type]
        job_letter(5, **others),  # type: ignore[arg-type]
        *(job_letter(n, partition=1, **wanted) for n in range(2)),  # type: ignore[arg-type]
    ]
    setup = topic(*letters)

    setup.replay(which)

    assert set(setup.sent_places()) == taken
    everything = {(letter.partition, letter.offset) for letter in letters}
    later = setup.replay()  # unfiltered
    assert later.replayed_total == len(everything - taken)
    assert sorted(setup.sent_places()) == sorted(everything)  # each exactly once


def test_from_start_sends_every_letter_again() -> None:
    setup = topic(*jobs(range(3)))
    setup.replay()

    again = setup.replay(from_start=True)

    assert again.replayed_total == 3
    assert not again.resumed
    assert setup.sent_offsets() == [0, 1, 2, 0, 1, 2]


def test_a_limit_takes_the_first_letters_and_leaves_the_rest_for_later() -> None:
    setup = topic(*jobs(range(5)))

    setup.replay(LetterFilter(limit=2))
    setup.replay()

    assert setup.sent_offsets() == [0, 1, 2, 3, 4]


def test_stopping_checkpoints_exactly_what_was_acknowledged_and_resuming_sends_the_rest_once() -> (
    None
):
    total = CHUNK_LETTERS * 2 + 50
    setup = topic(*jobs(range(total)))
    asked = 0

    def stop_after_150() -> bool:
        nonlocal asked
        asked += 1
        return asked > 150

    stopped = setup.replay(should_stop=stop_after_150)

    assert stopped.interrupted
    assert stopped.replayed_total == 150
    assert setup.checkpoint.saved[0] == ReplayProgress(150, set())
    assert setup.checkpoint.saves == 2  # after the full chunk, and at the stop
    resumed = setup.replay()
    assert resumed.replayed_total == total - 150
    assert setup.sent_offsets() == list(range(total))


def test_a_dry_run_sends_nothing_and_saves_nothing_but_counts_what_would_go() -> None:
    setup = topic(*jobs(range(3)), result_letter(3, "r-1"), job_letter(4, replays=3))

    summary = setup.replay(dry_run=True)

    assert summary.dry_run
    assert summary.replayed_total == 4
    assert summary.targets == {"jobs": 3, CORE: 1}
    assert sum(summary.skipped.values()) == 1
    assert setup.sent() == []
    assert setup.sink.results == []
    assert setup.checkpoint.saves == 0
    assert setup.checkpoint.saved == {}


def test_a_second_letter_of_the_same_source_record_is_checkpointed_not_sent_again() -> None:
    # A worker that died between writing a dead letter and committing wrote it twice.
    first = job_letter(0)
    setup = topic(
        first, job_letter(1), replace(first, offset=2), replace(first, offset=3, replays=1)
    )

    summary = setup.replay()

    assert setup.sent_offsets() == [0, 1, 3]  # offset 3 came back after a replay: not a copy
    assert [(where, "copy of letter 0:0" in why) for where, why, _ in setup.listener.left_out] == [
        ("0:2", True)
    ]
    assert summary.replayed_total == 3
    assert setup.checkpoint.saved[0] == ReplayProgress(4, set())


def test_a_dry_run_names_the_copies_it_would_not_send() -> None:
    first = job_letter(0)
    setup = topic(first, replace(first, offset=1))

    summary = setup.replay(dry_run=True)

    assert summary.replayed_total == 1
    assert [where for where, _, _ in setup.listener.left_out] == ["0:1"]


# --- how many times a job may come back ---------------------------------------------------


def test_a_letter_replayed_max_replays_times_is_skipped_unless_forced() -> None:
    setup = topic(job_letter(0, replays=3), job_letter(1, replays=2))

    summary = setup.replay(max_replays=3)

    assert setup.sent_offsets() == [1]
    [why] = summary.skipped
    assert "replayed 3 time(s) already" in why
    assert "--force" in why

    forced = setup.replay(max_replays=3, force=True)

    assert forced.replayed_total == 1
    assert setup.sent_offsets() == [1, 0]
    assert dict(setup.sent()[-1][1].headers)["x-replay-count"] == b"4"


# --- results, sent to Core ----------------------------------------------------------------


def test_results_go_to_core_in_one_batch_per_chunk() -> None:
    setup = topic(*(result_letter(n, f"r-{n}") for n in range(3)))

    summary = setup.replay()

    assert [result.job_id for result in setup.sink.results] == ["r-0", "r-1", "r-2"]
    assert setup.sink.batches == [3]
    assert summary.targets == {CORE: 3}
    assert setup.checkpoint.saved[0].next_offset == 3


def test_results_refused_again_are_listed_left_out_of_the_checkpoint_and_sent_later() -> None:
    setup = topic(*(result_letter(n, f"r-{n}") for n in range(3)))
    setup.sink.refuse = frozenset({"r-1"})

    summary = setup.replay()

    # The batch was refused as a whole: one at a time, the others went through.
    assert sorted(setup.sink.by_id()) == ["r-0", "r-2"]
    assert [(letter.where, "r-1" in why) for letter, why in summary.refused] == [("0:1", True)]
    assert setup.listener.left_out[0][0] == "0:1"
    assert setup.listener.left_out[0][2] is True  # refused, not skipped
    assert summary.replayed_total == 2
    assert not setup.checkpoint.saved[0].is_done(1)

    setup.sink.refuse = frozenset()
    later = setup.replay()

    assert later.replayed_total == 1
    assert [result.job_id for result in setup.sink.results] == ["r-0", "r-2", "r-1"]


def test_a_sink_without_batches_is_sent_results_one_at_a_time_from_then_on() -> None:
    letters = [result_letter(n, f"r-{n}") for n in range(CHUNK_LETTERS + 5)]
    setup = topic(*letters)
    setup.sink.refuse_batches = True

    summary = setup.replay()

    assert summary.replayed_total == len(letters)
    assert len(setup.sink.results) == len(letters)
    assert setup.sink.batches == [CHUNK_LETTERS]  # asked once, never again


def test_core_going_away_does_not_lose_the_jobs_acknowledged_in_the_same_chunk() -> None:
    setup = topic(job_letter(0), result_letter(1, "r-1"), result_letter(2, "r-2"))
    setup.sink.fail = frozenset({"r-1"})  # ResultNotDelivered: Core is away

    summary = setup.replay()

    assert summary.stopped_by is not None
    assert setup.sent_offsets() == [0]
    assert setup.checkpoint.saved[0].is_done(0)
    assert not setup.checkpoint.saved[0].is_done(1)
    assert not setup.checkpoint.saved[0].is_done(2)

    setup.sink.fail = frozenset()
    setup.replay()

    assert setup.sent_offsets() == [0]  # not sent again
    assert sorted(setup.sink.by_id()) == ["r-1", "r-2"]


# --- the broker refusing records -----------------------------------------------------------


def test_a_record_the_broker_refuses_stops_the_replay_after_checkpointing_those_acked() -> None:
    setup = topic(*jobs(range(4)))
    setup.republisher.fail = {1002: RuntimeError("NotEnoughReplicas")}  # letter 2's record

    summary = setup.replay()

    assert summary.stopped_by is not None
    assert "0:2" in str(summary.stopped_by)
    assert "NotEnoughReplicas" in str(summary.stopped_by)
    saved = setup.checkpoint.saved[0]
    assert [saved.is_done(n) for n in range(4)] == [True, True, False, True]

    setup.republisher.fail = {}
    setup.replay()

    assert setup.sent_offsets() == [0, 1, 3, 2]


def test_a_write_refusal_stops_the_replay_as_it_is() -> None:
    refusal = AccessRefused("Kafka refused writing to topic 'jobs'")
    setup = topic(*jobs(range(2)))
    setup.republisher.fail = {1000: refusal}

    summary = setup.replay()

    assert summary.stopped_by is refusal


# --- pacing and room ------------------------------------------------------------------------


def test_the_rate_paces_records_with_the_injected_sleep() -> None:
    setup = topic(*jobs(range(5)))

    summary = setup.replay(rate_per_s=4)

    assert summary.replayed_total == 5
    assert setup.clock.sleeps == pytest.approx([0.25] * 4)


def test_no_rate_no_sleep() -> None:
    setup = topic(*jobs(range(5)))

    setup.replay()

    assert setup.clock.sleeps == []


def test_a_letter_that_would_open_a_gap_the_checkpoint_has_no_room_for_is_skipped() -> None:
    # Matching letters between ones filtered out: each sent one opens a gap.
    letters = [job_letter(n, reason="wanted" if n % 2 else "other") for n in range(7)]
    setup = topic(*letters)
    setup.checkpoint.max_gaps = 2

    summary = setup.replay(LetterFilter(reason="wanted"))

    assert setup.sent_offsets() == [1, 3]
    [(why, count)] = summary.skipped.items()
    assert count == 1  # letter 5; letter 6 is filtered out
    assert "holds no more gaps" in why
    assert setup.checkpoint.saved[0].gaps <= setup.checkpoint.max_gaps


def test_a_checkpoint_that_cannot_be_saved_stops_replay_before_anything_is_sent() -> None:
    setup = topic(job_letter(0), job_letter(1))
    setup.checkpoint.refusal = AccessRefused("no READ on the group")

    summary = setup.replay()

    assert setup.sent_offsets() == []
    assert isinstance(summary.stopped_by, AccessRefused)


def test_a_dry_run_needs_no_checkpoint_it_could_save() -> None:
    setup = topic(job_letter(0))
    setup.checkpoint.refusal = AccessRefused("no READ on the group")

    summary = setup.replay(dry_run=True)

    assert summary.stopped_by is None
    assert summary.replayed_total == 1


def test_a_letter_further_above_the_first_left_behind_than_the_checkpoint_spans_waits() -> None:
    letters = [job_letter(n, reason="other" if n == 0 else "wanted") for n in range(6)]
    setup = topic(*letters)
    setup.checkpoint.max_span = 4

    summary = setup.replay(LetterFilter(reason="wanted"))

    assert setup.sent_offsets() == [1, 2, 3]
    [(why, count)] = summary.skipped.items()
    assert count == 2  # letters 4 and 5: four or more past letter 0
    assert "reaches 4 letters past the first not replayed (0)" in why
    assert setup.checkpoint.saved[0].next_offset == 0


def test_a_dry_run_predicts_the_letters_the_checkpoint_has_no_room_for() -> None:
    letters = [job_letter(n, reason="wanted" if n % 2 else "other") for n in range(7)]
    setup = topic(*letters)
    setup.checkpoint.max_gaps = 2

    summary = setup.replay(LetterFilter(reason="wanted"), dry_run=True)

    assert summary.replayed_total == 2
    assert sum(summary.skipped.values()) == 1


# --- listing -----------------------------------------------------------------------------


def test_letters_are_listed_by_filter_and_limit_and_found_by_place() -> None:
    setup = topic(*jobs(range(4)), *jobs(range(2), partition=1, reason="TIMEOUT"))
    service = setup.service

    assert [letter.where for letter in service.letters(LetterFilter(limit=3))] == [
        "0:0",
        "0:1",
        "0:2",
    ]
    assert [letter.where for letter in service.letters(LetterFilter(reason="timeout"))] == [
        "1:0",
        "1:1",
    ]
    found = service.letter_at(0, 2)
    assert found is not None
    assert found.where == "0:2"
    assert service.letter_at(0, 9) is None
    assert service.partitions() == [0, 1]


def test_a_topic_that_is_not_there_says_so() -> None:
    service = DeadLetterService(InMemoryDeadLetterReader("nope.dlq", None))

    with pytest.raises(DeadLetterTopicMissing):
        list(service.letters())
    with pytest.raises(DeadLetterTopicMissing):
        service.partitions()


def test_replay_closes_what_it_opened() -> None:
    setup = topic(job_letter(0), result_letter(1, "r-1"))

    setup.replay()

    assert setup.republisher.closed
    assert setup.sink.closed
    assert setup.checkpoint.closed


def test_the_in_memory_reader_reads_to_where_a_partition_ended_when_asked() -> None:
    reader = InMemoryDeadLetterReader(DLQ, {0: jobs(range(2)), 1: jobs(range(3), partition=1)})
    read = reader.letters({1: 1})
    reader.by_partition[0].append(job_letter(2))  # type: ignore[index]

    assert [letter.where for letter in read] == ["0:0", "0:1", "1:1", "1:2"]
    late = [job_letter(n, timestamp_ms=n * 10) for n in range(4)]
    since = InMemoryDeadLetterReader(DLQ, {0: late}).letters({}, since_ms=15)
    assert [letter.offset for letter in since] == [2, 3]
