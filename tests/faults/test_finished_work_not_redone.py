"""Finished work is not redone: each commit carries the offsets done above it.

The issue's scenario: one partition holds a 15 s job, then 600 fast ones. All 600 reach
Core while the head still runs; the worker is killed (SIGKILL). The committed offset
cannot pass the head, so before, the next worker reported all 600 again. Now it skips
the ones the last commit records as done. And when a second worker joins mid-run, the
partitions that move are committed with what is done: none is reported twice.
"""

from __future__ import annotations

import json

import pytest

from jobworker.adapters.core.process import CoreProcess
from jobworker.domain.model import Job
from tests.support.e2e import (
    publish,
    reports_per_job,
    results_in_core,
    sleep_jobs,
    tally,
    worker_settings,
)
from tests.support.fixtures import Report, StartWorker
from tests.support.kafka import (
    committed_metadata,
    committed_offsets,
    create_topic,
    end_offsets,
    job_record,
    produce,
    unique_name,
)
from tests.support.processes import (
    assigned_partitions,
    log_tail,
    wait_until,
    wait_while_running,
)

pytestmark = pytest.mark.faults

FAST = 600
# The bar: at most this many of the fast jobs are reported again.
MAX_REREPORTED = 10
# The commit that records every fast job as done: offset 0 (the head, still running) not
# done, the FAST after it done, in the commit metadata's encoding (runs of 1 and 600).
ALL_FAST_DONE = "jw1:0:AdgE"


def test_a_killed_workers_finished_jobs_are_not_redone_by_the_next(
    kafka_servers: str, core: CoreProcess, start_worker: StartWorker, report: Report
) -> None:
    topic = create_topic(kafka_servers, partitions=1, prefix="faults-finished")
    head = Job(id="head-job", type="SLEEP", payload=json.dumps({"ms": 15_000}), timeout_ms=25_000)
    fast = sleep_jobs(FAST, ms=1, prefix="fast")
    fast_ids = [job.id for job in fast]
    publish(kafka_servers, topic, [head, *fast])
    group = unique_name("faults-finished")
    settings = worker_settings(
        kafka_servers,
        topic,
        group,
        core.address,
        WORKER_POOL_SIZE="8",
        KAFKA_SESSION_TIMEOUT="6s",
    )
    db = core.db_path

    first = start_worker("first", settings)
    assert wait_while_running(lambda: not tally(db, fast_ids).lost, 60, first), log_tail(first)
    assert wait_while_running(
        lambda: committed_metadata(kafka_servers, group, topic).get(0) == ALL_FAST_DONE, 30, first
    ), "no commit recorded every fast job as done"
    assert not results_in_core(db, ["head-job"]), "the head finished before the kill"
    first.kill()

    second = start_worker("second", settings)
    assert wait_while_running(lambda: results_in_core(db, ["head-job"]), 90, second), log_tail(
        second
    )
    # Committed to the end: whatever the second worker redid has reached Core.
    ends = end_offsets(kafka_servers, topic)
    assert wait_while_running(
        lambda: committed_offsets(kafka_servers, group, topic) == ends, 30, second
    ), log_tail(second)
    rereported = [job_id for job_id, n in reports_per_job(db, fast_ids).items() if n > 1]
    report(
        tally(db, ["head-job", *fast_ids]).line("SIGKILL behind a 15 s job")
        + f"; fast jobs reported again: {len(rereported)} of {FAST}"
    )
    assert not tally(db, fast_ids).lost
    assert len(rereported) <= MAX_REREPORTED, rereported[:20]


def test_a_worker_joining_mid_run_redoes_nothing(
    kafka_servers: str, core: CoreProcess, start_worker: StartWorker, report: Report
) -> None:
    partitions, per_partition = 4, 150
    topic = create_topic(kafka_servers, partitions=partitions, prefix="faults-join")
    # Every 25th job is slow: at the rebalance, finished jobs sit behind running ones.
    jobs = [
        Job(id=f"join-p{p}-{i:05d}", type="SLEEP", payload=json.dumps({"ms": 20}))
        if i % 25
        else Job(id=f"join-p{p}-{i:05d}", type="SLEEP", payload=json.dumps({"ms": 1500}))
        for p in range(partitions)
        for i in range(per_partition)
    ]
    ids = [job.id for job in jobs]
    group = unique_name("faults-join")
    settings = worker_settings(
        kafka_servers,
        topic,
        group,
        core.address,
        WORKER_POOL_SIZE="8",
        SHUTDOWN_TIMEOUT="20s",
    )
    db = core.db_path
    first = start_worker("first", settings)
    assert wait_until(lambda: "partitions assigned" in first.log(), 60), log_tail(first)
    produce(
        kafka_servers,
        topic,
        (job_record(job, int(job.id.split("-")[1][1:])) for job in jobs),
    )
    assert wait_while_running(lambda: len(tally(db, ids).received) >= 150, 60, first)

    second = start_worker("second", settings)
    assert wait_while_running(lambda: assigned_partitions(second), 60, first, second), log_tail(
        second
    )
    assert wait_while_running(lambda: not tally(db, ids).lost, 120, first, second)
    # Committed to the end: every job either worker did has reached Core.
    ends = end_offsets(kafka_servers, topic)
    assert wait_while_running(
        lambda: committed_offsets(kafka_servers, group, topic) == ends, 30, first, second
    ), log_tail(first) + "\n" + log_tail(second)

    result = tally(db, ids)
    done_by_second = sum(1 for n in reports_per_job(db, ids).values() if n)
    report(
        result.line("second worker joins mid-run")
        + f"; partitions moved to the second: {sorted(assigned_partitions(second))}"
        f"; results kept: {done_by_second}"
    )
    assert not result.lost
    assert result.duplicates == 0, log_tail(first) + "\n" + log_tail(second)
