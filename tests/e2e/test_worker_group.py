"""Several worker processes in one consumer group: one joins mid-run, one is SIGKILLed
mid-run, and still every job reaches Core and every partition ends fully committed."""

from __future__ import annotations

import signal

import pytest

from jobworker.adapters.core.process import CoreProcess
from tests.support.e2e import (
    reporting_workers,
    results_in_core,
    sleep_jobs,
    tally,
    worker_settings,
)
from tests.support.fixtures import StartWorker
from tests.support.group import SteadyPublisher, group_is_settled
from tests.support.kafka import committed_offsets, create_topic, end_offsets, unique_name
from tests.support.processes import events_named, jobs_finished_by, wait_while_running

PARTITIONS = 6
JOBS = 1200
JOB_MS = 30
# The publisher waits at these points for the scenario: the third worker joins during
# the first part, the second worker dies during the second, the last part comes after.
HOLDS = (500, 900)
PUBLISH_RATE_PER_S = 120
# Waits, not speed limits: generous for a busy two-core machine.
STEP_TIMEOUT_S = 60
ALL_RESULTS_TIMEOUT_S = 120


def test_group_survives_a_join_and_a_sigkill_mid_run(
    kafka_servers: str,
    core: CoreProcess,
    start_worker: StartWorker,
    capsys: pytest.CaptureFixture[str],
) -> None:
    topic = create_topic(kafka_servers, PARTITIONS)
    group_id = unique_name("group")
    jobs = sleep_jobs(JOBS, ms=JOB_MS)
    job_ids = [job.id for job in jobs]
    db = core.db_path

    # A short group session (the broker's minimum is 6 s): the killed member is noticed
    # quickly.
    settings = worker_settings(
        kafka_servers,
        topic,
        group_id,
        core.address,
        WORKER_POOL_SIZE="5",
        KAFKA_SESSION_TIMEOUT="8s",
    )

    def results() -> int:
        return len(results_in_core(db, job_ids))

    first = start_worker("worker-a", settings)
    doomed = start_worker("worker-b", settings)
    # Both own partitions before any job is out, so each of them gets work.
    assert wait_while_running(
        lambda: group_is_settled([first, doomed], PARTITIONS), STEP_TIMEOUT_S, first, doomed
    ), "the first two workers did not share the partitions"
    publisher = SteadyPublisher(
        kafka_servers, topic, jobs, rate_per_s=PUBLISH_RATE_PER_S, holds=HOLDS
    ).start()
    try:
        assert wait_while_running(
            lambda: jobs_finished_by(first) > 0 and jobs_finished_by(doomed) > 0,
            STEP_TIMEOUT_S,
            first,
            doomed,
        ), "the first two workers did not both run jobs"

        # A third member joins while jobs flow: the group rebalances.
        joiner = start_worker("worker-c", settings)
        assert wait_while_running(
            lambda: group_is_settled([first, doomed, joiner], PARTITIONS),
            STEP_TIMEOUT_S,
            first,
            doomed,
            joiner,
        ), "the group did not settle with three members"
        assert events_named(first, "partitions revoked"), "the join caused no rebalance"

        doomed_before = jobs_finished_by(doomed)
        publisher.release()
        assert wait_while_running(
            lambda: jobs_finished_by(joiner) > 0 and jobs_finished_by(doomed) > doomed_before,
            STEP_TIMEOUT_S,
            first,
            doomed,
            joiner,
        ), "after the rebalance, the joiner or the doomed worker got no jobs"

        # Kill one mid-run: its unfinished and uncommitted jobs must go to the others.
        finished_before_kill = jobs_finished_by(doomed)
        doomed.kill()
        assert doomed.process is not None
        assert doomed.process.returncode == -signal.SIGKILL
        publisher.release()

        assert wait_while_running(
            lambda: results() >= JOBS, ALL_RESULTS_TIMEOUT_S, first, joiner
        ), f"only {results()} of {JOBS} results reached Core (publisher error: {publisher.error})"
        assert publisher.error is None
        count = tally(db, job_ids)
        with capsys.disabled():
            print(
                f"\n{count.line('worker group: 3 workers, join + SIGKILL')}"
                f" (worker-b ran {finished_before_kill} jobs before SIGKILL)"
            )
        assert not count.lost
        by_worker = reporting_workers(db)
        assert set(by_worker) == {"worker-a", "worker-b", "worker-c"}, by_worker

        # Idle survivors commit everything: nothing is left for the group to redeliver.
        ends = end_offsets(kafka_servers, topic)
        assert sum(ends.values()) == JOBS
        assert wait_while_running(
            lambda: committed_offsets(kafka_servers, group_id, topic) == ends,
            STEP_TIMEOUT_S,
            first,
            joiner,
        ), f"committed {committed_offsets(kafka_servers, group_id, topic)} != end {ends}"

        assert first.stop(STEP_TIMEOUT_S) == 0
        assert joiner.stop(STEP_TIMEOUT_S) == 0
        assert committed_offsets(kafka_servers, group_id, topic) == ends
    finally:
        publisher.stop()
