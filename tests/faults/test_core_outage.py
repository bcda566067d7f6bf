"""Core down for 20 s mid-run: the worker holds its results, stops taking jobs, stays
bounded in memory, and delivers everything once Core is back on the same port and file."""

from __future__ import annotations

import time

import pytest

from jobworker.adapters.core.process import CoreProcess
from tests.support.e2e import publish, sleep_jobs, tally, worker_settings
from tests.support.faults import MIB, metrics_answer, rss_bytes, scrape_metric
from tests.support.fixtures import Report, StartWorker
from tests.support.kafka import create_topic, unique_name
from tests.support.processes import free_port, log_tail, wait_until, wait_while_running

pytestmark = pytest.mark.faults

JOBS = 1000
POOL = 10
JOBS_QUEUE = 10
RESULTS_QUEUE = 10
SENDERS = 4
BATCH = 5
# A job taken from Kafka and not yet reported is in the jobs queue, the pool, the
# results queue or a sender's batch: nowhere else, however long Core is away.
PIPELINE_CAPACITY = JOBS_QUEUE + POOL + RESULTS_QUEUE + SENDERS * BATCH
OUTAGE_S = 20.0
RSS_GROWTH_LIMIT = 50 * MIB
# Published while Core is away: the lag gauge must count them though no fetch sees them.
LATE_JOBS = 200
CONSUMED = "jobworker_jobs_consumed_total"
RESULTS_QUEUE_DEPTH = "jobworker_results_queue_depth"
LAG = "jobworker_consumer_lag"


def test_core_down_for_20s_loses_nothing_and_pauses_consumption(
    kafka_servers: str, core: CoreProcess, start_worker: StartWorker, report: Report
) -> None:
    topic = create_topic(kafka_servers, partitions=2, prefix="faults-core")
    jobs = sleep_jobs(JOBS, ms=50, prefix="outage")
    late_jobs = sleep_jobs(LATE_JOBS, ms=50, prefix="outage-late")
    ids = [job.id for job in jobs + late_jobs]
    publish(kafka_servers, topic, jobs)
    metrics_port = free_port()
    worker = start_worker(
        "outage-worker",
        worker_settings(
            kafka_servers,
            topic,
            unique_name("faults-core"),
            core.address,
            WORKER_POOL_SIZE=str(POOL),
            JOBS_QUEUE_SIZE=str(JOBS_QUEUE),
            RESULTS_QUEUE_SIZE=str(RESULTS_QUEUE),
            RESULT_SENDERS=str(SENDERS),
            RESULT_BATCH_SIZE=str(BATCH),
            METRICS_PORT=str(metrics_port),
            METRICS_HOST="127.0.0.1",
            GRPC_CALL_TIMEOUT="2s",
            # Back within a second or two of Core's return, not after a 10 s backoff.
            GRPC_RETRY_BACKOFF_MAX="1s",
            SHUTDOWN_TIMEOUT="20s",
        ),
    )
    db = core.db_path
    assert wait_while_running(lambda: len(tally(db, ids).received) >= 100, 90, worker), log_tail(
        worker
    )

    core.kill()
    outage_ends = time.monotonic() + OUTAGE_S
    delivered_before = len(tally(db, ids).received)
    assert delivered_before < JOBS - PIPELINE_CAPACITY, "the run ended before the outage"
    assert wait_until(lambda: metrics_answer(metrics_port), 10)
    assert wait_while_running(
        lambda: scrape_metric(metrics_port, RESULTS_QUEUE_DEPTH) == RESULTS_QUEUE, 30, worker
    ), "the pipeline did not back up to the results queue"
    pid = worker.process.pid  # type: ignore[union-attr]
    rss_at_start = rss_bytes(pid)
    consumed_first = scrape_metric(metrics_port, CONSUMED)
    # The pipeline is full and the partitions paused: no fetch will see these.
    publish(kafka_servers, topic, late_jobs)
    # Not synchronisation: time passes on purpose, in which nothing may be consumed
    # beyond the pipeline (a slow machine consumes less, never more), and the outage
    # lasts its 20 s.
    time.sleep(5)  # on purpose: the window to count in
    consumed_second = scrape_metric(metrics_port, CONSUMED)
    time.sleep(max(0.0, outage_ends - time.monotonic()))  # on purpose: the outage's 20 s
    rss_at_end = rss_bytes(pid)
    consumed_at_end = scrape_metric(metrics_port, CONSUMED)
    lag_at_end = scrape_metric(metrics_port, LAG)
    assert worker.process.poll() is None, log_tail(worker)  # type: ignore[union-attr]

    core.start()
    wait_while_running(lambda: not tally(db, ids).lost, 120, worker, interval_s=0.5)
    result = tally(db, ids)
    report(
        result.line("core outage 20s")
        + f"; delivered before the outage: {delivered_before}, consumed by its end: "
        f"{consumed_at_end:.0f}, consumed over 5 s of it: {consumed_second - consumed_first:.0f}"
        f" (pipeline holds {PIPELINE_CAPACITY}); lag gauge at its end: {lag_at_end:.0f} "
        f"(backlog at least {JOBS + LATE_JOBS - delivered_before}); worker RSS "
        f"{rss_at_start / MIB:.1f} -> {rss_at_end / MIB:.1f} MiB"
    )
    assert not result.lost, f"{len(result.lost)} lost\n{log_tail(worker)}"
    assert consumed_second - consumed_first <= PIPELINE_CAPACITY
    # Stronger: nothing is taken from Kafka beyond what the pipeline can hold.
    assert consumed_at_end <= delivered_before + PIPELINE_CAPACITY
    assert rss_at_end - rss_at_start < RSS_GROWTH_LIMIT
    # Only done jobs are committed, so the lag is at least what Core has not received,
    # the late jobs included, though the paused partitions fetched none of them.
    assert lag_at_end >= JOBS + LATE_JOBS - delivered_before
    assert "Core call failed; retrying" in worker.log()
    assert worker.stop() == 0, log_tail(worker)
    assert "Traceback" not in worker.log()
