"""KafkaJobSource's commits on the ``commit_every`` cadence: sent without waiting, and
still never past an unfinished job."""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest

from jobworker.adapters.kafka import KafkaJobSource
from jobworker.adapters.kafka.lag import PartitionOffsets
from jobworker.domain.model import Job
from tests.contract.conftest import JobsTopic
from tests.support.kafka import commit_with_metadata, committed_offsets

pytestmark = pytest.mark.contract

SourceFactory = Callable[..., KafkaJobSource]


def fetch_until(
    source: KafkaJobSource,
    done: Callable[[], bool],
    timeout_s: float = 30,
    into: list[Job] | None = None,
) -> None:
    """Fetch until ``done()``; the jobs fetched go ``into`` the list given, if any."""
    deadline = time.monotonic() + timeout_s
    while not done():
        assert time.monotonic() < deadline, "timed out"
        jobs = source.fetch(100, 0.1)
        if into is not None:
            into.extend(jobs)


def test_commits_every_few_acks_stop_before_an_unfinished_job_which_alone_is_backlog(
    kafka_servers: str,
    jobs_topic: JobsTopic,
    group_id: str,
    source_factory: SourceFactory,
) -> None:
    topic = jobs_topic([f"job-{i}" for i in range(30)])
    # The clock never commits here: only the cadence of acks does.
    source = source_factory(topic, group_id, commit_interval_s=600, commit_every=5)
    jobs: list[Job] = []
    fetch_until(source, lambda: len(jobs) == 30, into=jobs)
    tp = source.assigned()[0]
    assert source.backlog() == {tp: 30}, "taken, none finished"
    unfinished = jobs[20]  # a slow job holds the commit back while the later ones finish
    for job in jobs:
        if job is not unfinished:
            source.ack(job)

    fetch_until(source, lambda: committed_offsets(kafka_servers, group_id, topic) == {0: 20})
    fetch_until(source, lambda: source.stats().offset_commits >= 1)
    assert source.lag() == {tp: 10}
    # The backlog counts what is not done: the finished jobs past the commit do not.
    assert source.backlog() == {tp: 1}
    # Records the broker has and the worker has not taken yet count too.
    assert source.backlog({tp: PartitionOffsets(end=35, position=20)}) == {tp: 6}

    source.ack(unfinished)  # one ack: below the cadence, so close commits it
    assert source.backlog() == {tp: 0}, "done is done, committed or not"
    source.close()
    assert committed_offsets(kafka_servers, group_id, topic) == {0: 30}


def test_a_partition_not_read_yet_has_the_brokers_backlog(
    kafka_servers: str, jobs_topic: JobsTopic, group_id: str, source_factory: SourceFactory
) -> None:
    # An idle worker (no room, or nothing left) knows a partition only from the broker.
    topic = jobs_topic([f"job-{i}" for i in range(5)])
    commit_with_metadata(kafka_servers, group_id, topic, 3, "")
    source = source_factory(topic, group_id)
    deadline = time.monotonic() + 30
    while not source.assigned():  # no room: it joins and polls, and takes nothing
        assert time.monotonic() < deadline, "never assigned"
        assert source.fetch(0, 0.1) == []
    tp = source.assigned()[0]

    assert source.backlog({tp: PartitionOffsets(end=5, position=3)}) == {tp: 2}
    source.close()


class PollTimeouts:
    """Watches the real consumer's polls (the broker is real): the timeouts asked for,
    at the seam both clients' consumers share."""

    def __init__(self, source: KafkaJobSource) -> None:
        consumer = source._consumer
        self.timeouts_ms: list[int] = []
        poll = consumer.poll

        def watched(timeout_s: float, max_records: int) -> object:
            self.timeouts_ms.append(int(timeout_s * 1000))
            return poll(timeout_s, max_records)

        consumer.poll = watched  # type: ignore[method-assign]


def test_a_full_window_keeps_polls_short_so_the_acks_that_open_it_are_seen_at_once(
    jobs_topic: JobsTopic, group_id: str, source_factory: SourceFactory
) -> None:
    topic = jobs_topic([f"job-{i}" for i in range(10)])
    source = source_factory(topic, group_id, max_in_flight_per_partition=3)
    jobs: list[Job] = []
    fetch_until(source, lambda: len(jobs) == 3, into=jobs)
    polls = PollTimeouts(source)

    # The acks that open the window come from other greenlets while the source polls:
    # a poll must not sit out the engine's whole fetch timeout with the window full.
    assert source.fetch(100, 5.0) == []
    assert polls.timeouts_ms == [20]

    for job in jobs:
        source.ack(job)
    fetch_until(source, lambda: len(jobs) == 6, into=jobs)  # the window opened again


def test_jobs_out_keep_polls_short_and_a_quiet_source_polls_long(
    kafka_servers: str, jobs_topic: JobsTopic, group_id: str, source_factory: SourceFactory
) -> None:
    topic = jobs_topic([f"job-{i}" for i in range(3)])
    source = source_factory(topic, group_id, commit_interval_s=0.3, commit_every=1000)
    jobs: list[Job] = []
    fetch_until(source, lambda: len(jobs) == 3, into=jobs)
    polls = PollTimeouts(source)

    # Jobs are out: their acks come while the source polls, and the commit they make due
    # must not wait out the engine's whole fetch timeout.
    source.fetch(100, 5.0)
    assert polls.timeouts_ms[-1] <= 50

    for job in jobs:
        source.ack(job)
    fetch_until(source, lambda: committed_offsets(kafka_servers, group_id, topic) == {0: 3})
    assert max(polls.timeouts_ms) <= 300  # done work waited at most the commit interval

    # Nothing out, nothing to commit: a whole poll, no busy loop.
    fetch_until(source, lambda: source.stats().offset_commits >= 1)
    source.fetch(100, 5.0)
    assert polls.timeouts_ms[-1] == 5000
