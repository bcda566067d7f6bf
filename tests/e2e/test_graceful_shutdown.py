"""SIGTERM under load: the worker finishes what it runs, commits what Core has, exits 0;
a second signal ends it at once and Kafka redelivers what it had not finished."""

from __future__ import annotations

import signal
import time

import pytest

from jobworker.adapters.core.process import CoreProcess
from tests.support.e2e import (
    publish,
    reports_per_job,
    results_in_core,
    sleep_jobs,
    tally,
    worker_settings,
)
from tests.support.fixtures import StartWorker
from tests.support.kafka import create_topic, unique_name
from tests.support.processes import events_named, wait_while_running

SHUTDOWN_TIMEOUT_S = 10
# Closing the consumer (a final commit, leaving the group) and the gRPC channel comes
# after the drain; on a busy machine that can take a while.
EXIT_MARGIN_S = 20
RESULTS_TIMEOUT_S = 120


def test_sigterm_mid_run_drains_commits_and_exits_0(
    kafka_servers: str,
    core: CoreProcess,
    start_worker: StartWorker,
    capsys: pytest.CaptureFixture[str],
) -> None:
    jobs = sleep_jobs(600, ms=150)
    job_ids = [job.id for job in jobs]
    topic = create_topic(kafka_servers, partitions=3)
    group_id = unique_name("group")
    publish(kafka_servers, topic, jobs)
    settings = worker_settings(
        kafka_servers,
        topic,
        group_id,
        core.address,
        WORKER_POOL_SIZE="10",
        SHUTDOWN_TIMEOUT=f"{SHUTDOWN_TIMEOUT_S}s",
        KAFKA_SESSION_TIMEOUT="8s",
    )

    def results() -> int:
        return len(results_in_core(core.db_path, job_ids))

    worker = start_worker("worker-1", settings)
    assert wait_while_running(lambda: results() >= 150, RESULTS_TIMEOUT_S, worker)
    worker.signal(signal.SIGTERM)
    signalled = time.monotonic()
    assert worker.wait(SHUTDOWN_TIMEOUT_S + EXIT_MARGIN_S) == 0
    took_s = time.monotonic() - signalled

    assert events_named(worker, "shutdown requested")
    (stopped,) = events_named(worker, "worker stopped")
    assert stopped["jobs_abandoned_in_flight"] == 0
    assert stopped["results_not_delivered"] == 0
    # Every job it finished reached Core; the rest of the topic was left for others.
    finished = {e["job_id"] for e in events_named(worker, "job finished")}
    reported_before_exit = set(results_in_core(core.db_path, job_ids))
    assert reported_before_exit == finished
    assert len(reported_before_exit) < len(jobs)

    successor = start_worker("worker-2", settings)
    assert wait_while_running(lambda: results() >= len(jobs), RESULTS_TIMEOUT_S, successor), (
        f"only {results()} of {len(jobs)} results reached Core"
    )
    assert successor.stop(SHUTDOWN_TIMEOUT_S + EXIT_MARGIN_S) == 0

    count = tally(core.db_path, job_ids)
    with capsys.disabled():
        print(
            f"\n{count.line('graceful shutdown: SIGTERM mid-run, then a successor')}"
            f" (worker-1 reported {len(reported_before_exit)} jobs, exited 0"
            f" {took_s:.1f}s after SIGTERM, {stopped['jobs_not_started']} queued jobs"
            " left unstarted)"
        )
    assert not count.lost
    # Their offsets were committed at shutdown: the successor ran none of them again.
    reports = reports_per_job(core.db_path, sorted(reported_before_exit))
    assert {job_id: n for job_id, n in reports.items() if n != 1} == {}


def test_a_second_signal_exits_at_once_and_the_jobs_come_back(
    kafka_servers: str,
    core: CoreProcess,
    start_worker: StartWorker,
    capsys: pytest.CaptureFixture[str],
) -> None:
    # One partition, so the long jobs are taken (and started) after the short ones.
    short = sleep_jobs(5, ms=50, prefix="short")
    # Long enough that a busy machine still signals twice while they run.
    long = sleep_jobs(10, ms=8_000, prefix="long")
    job_ids = [job.id for job in short + long]
    topic = create_topic(kafka_servers, partitions=1)
    group_id = unique_name("group")
    publish(kafka_servers, topic, short + long)
    settings = worker_settings(
        kafka_servers,
        topic,
        group_id,
        core.address,
        WORKER_POOL_SIZE="10",
        SHUTDOWN_TIMEOUT="60s",
        # The broker's minimum: the successor joins once the dead worker's session ends.
        KAFKA_SESSION_TIMEOUT="6s",
    )

    worker = start_worker("worker-1", settings)
    assert wait_while_running(
        lambda: len(results_in_core(core.db_path, [j.id for j in short])) == len(short),
        RESULTS_TIMEOUT_S,
        worker,
    )
    worker.signal(signal.SIGTERM)
    assert wait_while_running(lambda: events_named(worker, "shutdown requested"), 30, worker)
    assert worker.process is not None
    assert worker.process.poll() is None, "the first signal must wait for the running jobs"
    worker.signal(signal.SIGTERM)
    signalled = time.monotonic()
    assert worker.wait(30) == 128 + signal.SIGTERM
    took_s = time.monotonic() - signalled
    assert events_named(worker, "second signal")
    # It did not wait for them: none of the long jobs had finished.
    assert not results_in_core(core.db_path, [j.id for j in long])

    successor = start_worker("worker-2", settings)
    assert wait_while_running(
        lambda: len(results_in_core(core.db_path, job_ids)) == len(job_ids),
        RESULTS_TIMEOUT_S,
        successor,
    )
    assert successor.stop(60) == 0

    count = tally(core.db_path, job_ids)
    with capsys.disabled():
        print(
            f"\n{count.line('second signal: exit at once, jobs redelivered')}"
            f" (worker-1 exited {took_s:.2f}s after the second SIGTERM)"
        )
    assert not count.lost
    assert set(reports_per_job(core.db_path, [j.id for j in long]).values()) == {1}
