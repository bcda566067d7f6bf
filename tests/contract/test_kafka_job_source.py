"""KafkaJobSource against a real broker: at least once, never past an unfinished job."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from kafka import TopicPartition
from structlog.testing import capture_logs

from jobworker.adapters.kafka import (
    KafkaClientSettings,
    KafkaJobPublisher,
    KafkaJobSource,
    KafkaReceipt,
)
from jobworker.adapters.kafka.modes import KafkaClient
from jobworker.adapters.kafka.offsets.finished_offsets import decode
from jobworker.adapters.proto.jobworker.v1 import jobworker_pb2 as pb
from jobworker.domain.model import Job
from tests.contract.conftest import JobsTopic
from tests.support.kafka import (
    commit_with_metadata,
    committed_metadata,
    committed_offsets,
    produce,
    read_all,
    task_bytes,
    unique_name,
)

pytestmark = pytest.mark.contract

REPO_ROOT = Path(__file__).resolve().parents[2]
SourceFactory = Callable[..., KafkaJobSource]


def take(
    source: KafkaJobSource,
    count: int,
    timeout_s: float = 30.0,
    poll_s: float = 0.2,
    pause_s: float = 0.0,
) -> list[Job]:
    """Fetch until ``count`` jobs came (fails on timeout); acks nothing.

    Each fetch polls for ``poll_s``; ``pause_s`` is a gap between fetches.
    """
    jobs: list[Job] = []
    deadline = time.monotonic() + timeout_s
    while len(jobs) < count and time.monotonic() < deadline:
        jobs.extend(source.fetch(count - len(jobs), poll_s))
        time.sleep(pause_s)  # on purpose: a caller's pacing between fetches, 0 by default
    assert len(jobs) == count, (
        f"expected {count} jobs, got {[job.id for job in jobs]} (generation "
        f"{source.group_generation()}, assigned {source.assigned()})"
    )
    return jobs


def fetch_for(source: KafkaJobSource, seconds: float, max_jobs: int = 100) -> list[Job]:
    jobs: list[Job] = []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        jobs.extend(source.fetch(max_jobs, 0.2))
    return jobs


def committed_while_fetching(
    source: KafkaJobSource, servers: str, group_id: str, topic: str, expected: dict[int, int]
) -> dict[int, int]:
    """The group's committed offsets once they are ``expected`` (or after 15 s), fetching
    meanwhile (the source commits from its fetches): on a loaded machine a fixed wait
    can end before the broker confirmed the last commit."""
    deadline = time.monotonic() + 15
    while True:
        fetch_for(source, 0.2)
        found = committed_offsets(servers, group_id, topic)
        if found == expected or time.monotonic() > deadline:
            return found


def offset_of(job: Job) -> int:
    assert isinstance(job.receipt, KafkaReceipt)
    return job.receipt.offset


def test_a_slow_job_holds_the_committed_offset_until_it_is_acked(
    kafka_servers: str,
    jobs_topic: JobsTopic,
    group_id: str,
    source_factory: SourceFactory,
) -> None:
    topic = jobs_topic([f"job-{i}" for i in range(6)])
    source = source_factory(topic, group_id, commit_interval_s=0)

    jobs = take(source, 6)
    assert [offset_of(job) for job in jobs] == list(range(6))
    slow = jobs[2]
    for job in jobs:
        if job is not slow:
            source.ack(job)

    # Commits on the clock go out without waiting: poll until one has landed.
    assert committed_after_fetches(source, kafka_servers, group_id, topic) == {0: 2}

    source.ack(slow)

    assert committed_after_fetches(source, kafka_servers, group_id, topic) == {0: 6}


def committed_after_fetches(
    source: KafkaJobSource, servers: str, group_id: str, topic: str
) -> dict[int, int]:
    """The group's committed offsets once one more commit of ``source`` has landed."""
    before = source.stats().offset_commits
    deadline = time.monotonic() + 30
    while source.stats().offset_commits == before:
        assert time.monotonic() < deadline, "no commit landed"
        source.fetch(10, 0.1)
    return committed_offsets(servers, group_id, topic)


def test_a_restart_redelivers_exactly_the_unacked_jobs_and_loses_none(
    kafka_servers: str,
    jobs_topic: JobsTopic,
    group_id: str,
    source_factory: SourceFactory,
) -> None:
    topic = jobs_topic([f"job-{i}" for i in range(10)])
    first = source_factory(topic, group_id, commit_interval_s=60, commit_every=1000)
    jobs = take(first, 10)
    for index in (4, 1, 0, 3):  # out of order, and job-2 never finishes
        first.ack(jobs[index])

    first.close()  # commits what is done: offset 2, and 3 and 4 in its metadata
    second = source_factory(topic, group_id)
    redelivered = take(second, 6)

    assert committed_offsets(kafka_servers, group_id, topic) == {0: 2}
    assert decode(committed_metadata(kafka_servers, group_id, topic)[0], 2) == {3, 4}
    assert [job.id for job in redelivered] == ["job-2", *(f"job-{i}" for i in range(5, 10))]
    assert second.stats().finished_skipped == 2
    assert len(fetch_for(second, 0.5)) == 0


def test_metadata_the_worker_cannot_read_is_ignored_and_the_jobs_redone(
    kafka_servers: str,
    jobs_topic: JobsTopic,
    group_id: str,
    source_factory: SourceFactory,
) -> None:
    topic = jobs_topic([f"job-{i}" for i in range(5)])
    commit_with_metadata(kafka_servers, group_id, topic, offset=1, metadata="jw9:1:garbage")
    source = source_factory(topic, group_id)

    with capture_logs() as logs:
        redelivered = take(source, 4)

    assert [job.id for job in redelivered] == [f"job-{i}" for i in range(1, 5)]
    warnings = [e for e in logs if e["event"].startswith("commit metadata not understood")]
    assert len(warnings) == 1


def test_a_restart_after_acking_a_prefix_redelivers_exactly_the_unacked_jobs(
    kafka_servers: str,
    jobs_topic: JobsTopic,
    group_id: str,
    source_factory: SourceFactory,
) -> None:
    topic = jobs_topic([f"a-{i}" for i in range(5)], [f"b-{i}" for i in range(5)])
    first = source_factory(topic, group_id, commit_interval_s=60, commit_every=1000)
    jobs = take(first, 10)
    acked = {"a-0", "a-1", "a-2", "b-0"}
    for job in reversed(jobs):
        if job.id in acked:
            first.ack(job)

    first.close()
    second = source_factory(topic, group_id)
    redelivered = take(second, 6)

    assert {job.id for job in redelivered} == {job.id for job in jobs} - acked
    assert committed_offsets(kafka_servers, group_id, topic) == {0: 3, 1: 1}


def test_poison_records_go_to_the_dead_letter_topic_and_the_offset_moves_on(
    kafka_servers: str,
    topic_factory: Callable[[int], str],
    group_id: str,
    source_factory: SourceFactory,
) -> None:
    topic = topic_factory(1)
    dead_letter_topic = f"{topic}.dlq"
    no_id = pb.JobTask(type=pb.JobTask.SLEEP, payload="{}").SerializeToString()
    produce(
        kafka_servers,
        topic,
        [
            (b"garbage", b"\xff\xff\xff not protobuf", 0),  # offset 0: undecodable
            (b"job-1", task_bytes("job-1"), 0),  # offset 1: a good job
            (b"no-id", no_id, 0),  # offset 2: no id
            (b"tombstone", None, 0),  # offset 3: no value at all
            (b"job-4", task_bytes("job-4", 99), 0),  # offset 4: a type this build lacks
            (b"job-5", task_bytes("job-5", pb.JobTask.TYPE_UNSPECIFIED), 0),  # offset 5
            (b"other-key", task_bytes("job-6"), 0),  # offset 6: key differs from the id
        ],
    )
    source = source_factory(topic, group_id, commit_interval_s=0, worker_id="worker-7")

    jobs = take(source, 4)

    assert [(job.id, job.type) for job in jobs] == [
        ("job-1", "SLEEP"),
        ("job-4", "TYPE_99"),
        ("job-5", "TYPE_UNSPECIFIED"),
        ("job-6", "SLEEP"),
    ]
    dead = read_all(kafka_servers, dead_letter_topic, 3)
    assert [(record.key, record.value) for record in dead] == [
        (b"garbage", b"\xff\xff\xff not protobuf"),
        (b"no-id", no_id),
        (b"tombstone", None),
    ]
    headers = [dict(record.headers) for record in dead]
    assert [h["x-dlq-source-offset"] for h in headers] == [b"0", b"2", b"3"]
    assert headers[0]["x-dlq-reason"].startswith(b"value is not a JobTask")
    assert headers[1]["x-dlq-reason"] == b"JobTask has no id"
    assert headers[2]["x-dlq-reason"] == b"record has no value"
    assert headers[0]["x-dlq-source-key"] == b"garbage"
    for h in headers:
        assert h["x-dlq-source-topic"] == topic.encode()
        assert h["x-dlq-source-partition"] == b"0"
        assert h["x-dlq-worker"] == b"worker-7"

    for job in jobs:
        source.ack(job)
    assert committed_while_fetching(source, kafka_servers, group_id, topic, {0: 7}) == {0: 7}


def test_a_full_in_flight_window_pauses_the_partition_until_it_drains(
    kafka_servers: str,
    jobs_topic: JobsTopic,
    group_id: str,
    source_factory: SourceFactory,
) -> None:
    topic = jobs_topic([f"job-{i}" for i in range(7)])
    source = source_factory(topic, group_id, max_in_flight_per_partition=3, commit_interval_s=0)

    first = take(source, 3)
    assert fetch_for(source, 1.0) == []

    source.ack(first[1])  # done above the oldest job: the window does not move
    assert fetch_for(source, 0.5) == []
    source.ack(first[0])  # the oldest job is done: the window moves up by two
    second = take(source, 2)
    assert fetch_for(source, 0.5) == []
    for job in (first[2], *second):
        source.ack(job)
    rest = take(source, 2)

    assert [offset_of(job) for job in first + second + rest] == list(range(7))


def test_one_job_never_acked_pauses_its_partition_at_the_window_however_many_finish(
    kafka_servers: str,
    jobs_topic: JobsTopic,
    group_id: str,
    source_factory: SourceFactory,
) -> None:
    topic = jobs_topic([f"a-{i}" for i in range(60)], [f"b-{i}" for i in range(60)])
    window = 10
    source = source_factory(
        topic, group_id, max_in_flight_per_partition=window, commit_interval_s=0
    )
    stuck = TopicPartition(topic, 0)
    free = TopicPartition(topic, 1)

    taken: list[Job] = []
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and len([j for j in taken if j.id.startswith("b")]) < 60:
        jobs = source.fetch(100, 0.2)
        taken.extend(jobs)
        for job in jobs:
            if job.id != "a-0":  # a-0 never finishes
                source.ack(job)
        assert all(span <= window for span in source.spans().values()), source.spans()
    fetch_for(source, 1.0)

    from_stuck = [job.id for job in taken if job.id.startswith("a")]
    assert from_stuck == [f"a-{i}" for i in range(window)]  # and then the partition paused
    assert source.spans() == {stuck: window, free: 0}
    with source._shared as book:
        assert book.partitions.held(stuck) <= window  # done offsets above a-0 stay bounded
    # Partition 0 commits nothing past a-0, only what is done behind it; partition 1 is
    # unhindered.
    expected = {0: 0, 1: 60}
    assert committed_while_fetching(source, kafka_servers, group_id, topic, expected) == expected
    assert decode(committed_metadata(kafka_servers, group_id, topic)[0], 0) == set(range(1, 10))

    source.ack(next(job for job in taken if job.id == "a-0"))

    rest: list[Job] = []
    deadline = time.monotonic() + 30
    while len(rest) < 50 and time.monotonic() < deadline:
        jobs = source.fetch(100, 0.2)
        rest.extend(jobs)
        for job in jobs:
            source.ack(job)
    assert [job.id for job in rest] == [f"a-{i}" for i in range(window, 60)]
    expected = {0: 60, 1: 60}
    assert committed_while_fetching(source, kafka_servers, group_id, topic, expected) == expected


def test_a_consumer_with_no_room_stays_in_its_group_past_max_poll_interval(
    kafka_servers: str,
    jobs_topic: JobsTopic,
    group_id: str,
    source_factory: SourceFactory,
    settings: KafkaClientSettings,
) -> None:
    topic = jobs_topic([f"a-{i}" for i in range(5)], [f"b-{i}" for i in range(5)])
    impatient = KafkaClientSettings(
        settings.bootstrap_servers,
        session_timeout_ms=6_000,
        heartbeat_interval_ms=1_000,
        max_poll_interval_ms=7_000,
    )
    source = source_factory(topic, group_id, settings=impatient)
    jobs = take(source, 4)  # leaves records behind in the fetch buffer too
    generation, assignment = source.group_generation(), source.assigned()

    deadline = time.monotonic() + 9.0  # longer than max.poll.interval.ms
    calls = 0
    while time.monotonic() < deadline:
        assert source.fetch(0, 0.5) == []
        calls += 1

    # Each call waits as a poll would (the source polls at most every 0.1 s with no
    # room, and sleeps until then): a caller that asks again at once must not spin.
    assert calls < 200, f"{calls} no-room fetches in 9 s"
    assert source.group_generation() == generation
    assert source.assigned() == assignment
    rest = take(source, 6)
    assert sorted(job.id for job in jobs + rest) == sorted(
        [f"a-{i}" for i in range(5)] + [f"b-{i}" for i in range(5)]
    )


def test_a_rebalance_a_short_poll_cut_short_still_gives_the_member_its_partitions(
    kafka_servers: str,
    topic_factory: Callable[[int], str],
    source_factory: SourceFactory,
) -> None:
    # A new group's first assignment is often empty ("No partition metadata for
    # topic"); the rejoin that follows once metadata arrives was lost by kafka-python
    # 3.0 when a poll's timeout ended mid-join, leaving the member with no partitions
    # for good. Polls of 10 ms end mid-join nearly every time: ten fresh groups in a
    # row each have to get their partition and its job.
    for _ in range(10):
        topic = topic_factory(1)
        produce(kafka_servers, topic, [(b"job", task_bytes("job"), 0)])
        source = source_factory(topic, unique_name("group"))
        jobs = take(source, 1, timeout_s=15, poll_s=0.01, pause_s=0.005)
        assert [job.id for job in jobs] == ["job"]
        source.close()


def test_a_join_that_finishes_between_polls_is_taken_not_started_again(
    kafka_servers: str,
    topic_factory: Callable[[int], str],
    source_factory: SourceFactory,
) -> None:
    # Polls that return at once leave every join to finish between polls. kafka-python
    # 3.0 threw such a join away and started another (a new rebalance each time), so
    # a member could churn through generations for seconds; two members in that state
    # made each other rejoin for ever (seen in CI as a 30 s rebalance storm).
    topic = topic_factory(1)
    produce(kafka_servers, topic, [(b"job", task_bytes("job"), 0)])
    source = source_factory(topic, unique_name("group"))
    jobs = take(source, 1, timeout_s=15, poll_s=0, pause_s=0.01)

    assert [job.id for job in jobs] == ["job"]
    # One join for the first (often empty) assignment, one when the metadata came, and
    # room for a retry on a slow machine; a source that threw joins away needed dozens.
    assert source.group_generation() <= 5


def test_a_revoke_commits_done_jobs_and_loses_nothing(
    kafka_servers: str,
    jobs_topic: JobsTopic,
    group_id: str,
    source_factory: SourceFactory,
) -> None:
    topic = jobs_topic(*([f"{partition}-{i}" for i in range(10)] for partition in (0, 1)))
    # Only a revoke commits here: no cadence commits get in the way.
    first = source_factory(topic, group_id, commit_interval_s=600, commit_every=10_000)
    before = take(first, 20)
    for job in before:
        if offset_of(job) < 4:
            first.ack(job)
    assert committed_offsets(kafka_servers, group_id, topic) == {}

    second = source_factory(topic, group_id, commit_interval_s=0)
    again: list[Job] = []
    redelivered: list[Job] = []

    def poll_both_until(done: Callable[[], bool]) -> None:
        # Every member of a group polls all the time, or the group cannot rebalance.
        deadline = time.monotonic() + 30
        while not done() and time.monotonic() < deadline:
            again.extend(first.fetch(100, 0.2))
            redelivered.extend(second.fetch(100, 0.2))

    poll_both_until(lambda: bool(first.assigned() and second.assigned()))
    # The revoke committed what was done, for both partitions.
    assert committed_offsets(kafka_servers, group_id, topic) == {0: 4, 1: 4}
    [kept] = [tp.partition for tp in first.assigned()]
    [moved] = [tp.partition for tp in second.assigned()]
    poll_both_until(lambda: len(redelivered) >= 6)

    assert again == []  # the kept partition goes on where it was
    assert [job.id for job in redelivered] == [f"{moved}-{i}" for i in range(4, 10)]

    for job in before:  # counted for the kept partition, ignored for the moved one
        first.ack(job)
    first.close()
    assert committed_offsets(kafka_servers, group_id, topic) == {kept: 10, moved: 4}

    deadline = time.monotonic() + 30
    while len(second.assigned()) < 2 and time.monotonic() < deadline:
        assert second.fetch(100, 0.2) == []
    for job in redelivered:
        second.ack(job)
    second.close()
    assert committed_offsets(kafka_servers, group_id, topic) == {0: 10, 1: 10}


def test_jobs_read_ahead_of_a_partition_that_moves_away_are_left_to_its_new_owner(
    jobs_topic: JobsTopic, group_id: str, source_factory: SourceFactory
) -> None:
    topic = jobs_topic(*([f"{partition}-{i}" for i in range(10)] for partition in (0, 1)))
    first = source_factory(topic, group_id, commit_interval_s=0)
    # Room for one job: the poll reads ahead, and the source keeps the rest for later.
    by_first = take(first, 1)
    second = source_factory(topic, group_id, commit_interval_s=0)
    by_second: list[Job] = []
    after_the_move: list[Job] = []
    deadline = time.monotonic() + 30
    while (len(by_second) < 10 or not first.assigned()) and time.monotonic() < deadline:
        moved_before = len(first.assigned()) == 1
        jobs = first.fetch(1, 0.2)
        by_first += jobs
        if moved_before:
            after_the_move += jobs
        by_second.extend(second.fetch(100, 0.2))
    [kept] = [tp.partition for tp in first.assigned()]
    [moved] = [tp.partition for tp in second.assigned()]
    while len(by_first) < 10 + sum(job.id.startswith(f"{moved}-") for job in by_first):
        assert time.monotonic() < deadline, [job.id for job in by_first]
        jobs = first.fetch(1, 0.2)
        by_first += jobs
        after_the_move += jobs

    # Nothing was acked, so the new owner reads the moved partition from its start; the
    # old one hands out none of the jobs it had read ahead there once it lost it.
    assert [job.id for job in by_second] == [f"{moved}-{i}" for i in range(10)]
    assert all(job.id.startswith(f"{kept}-") for job in after_the_move)
    # The kept partition's jobs each come once, in order, one fetch at a time.
    assert [job.id for job in by_first if job.id.startswith(f"{kept}-")] == [
        f"{kept}-{i}" for i in range(10)
    ]
    first.close()
    second.close()


def test_the_publisher_writes_jobs_the_source_reads_back(
    kafka_servers: str,
    topic_factory: Callable[[int], str],
    group_id: str,
    source_factory: SourceFactory,
    settings: KafkaClientSettings,
) -> None:
    topic = topic_factory(1)
    publisher = KafkaJobPublisher(settings, topic)
    sent = Job(id="job-1", type="HTTP", payload='{"url": "x"}', timeout_ms=5, metadata={"t": "1"})
    publisher.publish(sent)
    publisher.close(10)

    [received] = take(source_factory(topic, group_id), 1)

    assert (received.id, received.type, received.payload) == (sent.id, sent.type, sent.payload)
    assert (received.timeout_ms, dict(received.metadata)) == (5, {"t": "1"})


GEVENT_SCRIPT = textwrap.dedent(
    """
    from gevent import monkey

    monkey.patch_all()

    import json, sys, time
    import gevent
    from gevent.queue import Queue
    from jobworker.adapters.kafka import KafkaClientSettings, KafkaJobSource, SourceOptions

    servers, topic, group_id, expected, client = sys.argv[1:6]
    source = KafkaJobSource(
        KafkaClientSettings([servers], session_timeout_ms=6000, heartbeat_interval_ms=1000),
        topic,
        group_id,
        SourceOptions(dlq_topic=f"{topic}.dlq", commit_interval_s=0.2, client=client),
    )
    acks = Queue()
    acked = []

    def acker():
        while True:
            job = acks.get()
            gevent.sleep(0.01)  # on purpose: a job's work before its ack
            source.ack(job)
            acked.append(job.id)

    ticks = []
    def ticker():  # proves the hub keeps running while the source polls
        while True:
            ticks.append(time.monotonic())
            gevent.sleep(0.05)  # on purpose: the ticks count the hub's turns

    workers = [gevent.spawn(acker), gevent.spawn(ticker)]
    deadline = time.monotonic() + 40
    while len(acked) < int(expected) and time.monotonic() < deadline:
        for job in source.fetch(5, 0.5):
            acks.put(job)
    for max_jobs in (0, 0, 0, 5, 5):  # idle polls, paused and not, must not block the hub
        source.fetch(max_jobs, 0.5)
    source.close()
    gevent.killall(workers)
    gaps = [later - earlier for earlier, later in zip(ticks, ticks[1:])]
    print(json.dumps({
        "acked": sorted(acked),
        "ticks": len(ticks),
        "span": ticks[-1] - ticks[0],
        "worst_gap": max(gaps),
    }))
    """
)


@pytest.mark.timeout(90)
def test_the_source_runs_in_a_gevent_patched_process(
    kafka_servers: str,
    jobs_topic: JobsTopic,
    group_id: str,
    kafka_client: KafkaClient,
    capsys: pytest.CaptureFixture[str],
) -> None:
    ids = [f"job-{i}" for i in range(20)]
    topic = jobs_topic(ids[:10], ids[10:])
    script = [GEVENT_SCRIPT, kafka_servers, topic, group_id, str(len(ids)), str(kafka_client)]

    completed = subprocess.run(
        [sys.executable, "-c", *script],
        capture_output=True,
        text=True,
        timeout=80,
        cwd=REPO_ROOT,
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
        check=False,
    )

    assert completed.returncode == 0, completed.stderr[-3000:]
    outcome = json.loads(completed.stdout.strip().splitlines()[-1])
    assert outcome["acked"] == sorted(ids)
    # The ticker asked to run every 50 ms; a poll blocking the hub would starve it.
    assert outcome["ticks"] >= outcome["span"] / 0.05 / 2
    # The longest the hub went without turning (joining, polls, commits, the revoke on
    # close): the ticker's worst wait past its 50 ms.
    worst_block_ms = (outcome["worst_gap"] - 0.05) * 1000
    with capsys.disabled():
        print(f"\n[{kafka_client}] worst hub block in a patched process: {worst_block_ms:.0f} ms")
    assert worst_block_ms < 500
    assert committed_offsets(kafka_servers, group_id, topic) == {0: 10, 1: 10}


def test_a_poison_record_too_large_to_copy_whole_is_dead_lettered_without_its_value(
    kafka_servers: str,
    topic_factory: Callable[[int], str],
    group_id: str,
    source_factory: SourceFactory,
) -> None:
    # The broker took it (under its ~1 MiB limit), but with our headers (the key again
    # among them) a copy would be too large to write: that must not hold the partition.
    topic = topic_factory(1)
    big_key, big_value = b"k" * 60_000, b"\xff" * 980_000
    produce(
        kafka_servers,
        topic,
        [(big_key, big_value, 0), (b"job-1", task_bytes("job-1"), 0)],
        max_request_size=2 * 1024 * 1024,
    )
    source = source_factory(topic, group_id, commit_interval_s=0)

    jobs = take(source, 1)
    source.ack(jobs[0])
    deadline = time.monotonic() + 30
    while committed_offsets(kafka_servers, group_id, topic) != {0: 2}:
        assert time.monotonic() < deadline, "the partition never moved past the record"
        source.fetch(10, 0.2)

    [letter] = read_all(kafka_servers, f"{topic}.dlq", 1)
    headers = dict(letter.headers)
    assert letter.key == big_key
    assert letter.value == b""
    assert headers["x-dlq-value-dropped-bytes"] == b"980000"
    assert headers["x-dlq-source-offset"] == b"0"
    assert "x-dlq-source-key" not in headers
