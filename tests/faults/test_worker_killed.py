"""One of two workers killed with SIGKILL mid-run: once its group session expires, the
other worker takes over its partitions and redoes what it had not committed."""

from __future__ import annotations

from collections import Counter

import pytest

from jobworker.adapters.core.process import CoreProcess
from tests.support.e2e import reporters, reporting_workers, sleep_jobs, tally, worker_settings
from tests.support.fixtures import Report, StartWorker
from tests.support.kafka import create_topic, job_record, produce, unique_name
from tests.support.processes import (
    assigned_partitions,
    log_tail,
    wait_until,
    wait_while_running,
)

pytestmark = pytest.mark.faults

PARTITIONS = 4
JOBS_PER_PARTITION = 200
VICTIM = "victim"
SURVIVOR = "survivor"


def _partition(job_id: str) -> int:
    return int(job_id.split("-")[1][1:])  # "killed-p2-00042" -> 2


def test_a_killed_workers_jobs_are_redone_by_the_other(
    kafka_servers: str, core: CoreProcess, start_worker: StartWorker, report: Report
) -> None:
    topic = create_topic(kafka_servers, partitions=PARTITIONS, prefix="faults-kill")
    jobs = [
        job
        for p in range(PARTITIONS)
        for job in sleep_jobs(JOBS_PER_PARTITION, ms=50, prefix=f"killed-p{p}")
    ]
    ids = [job.id for job in jobs]
    settings = worker_settings(
        kafka_servers,
        topic,
        unique_name("faults-kill"),
        core.address,
        WORKER_POOL_SIZE="5",
        # The broker's minimum: the group notices the dead worker within ~6 s.
        KAFKA_SESSION_TIMEOUT="6s",
        SHUTDOWN_TIMEOUT="20s",
    )
    victim = start_worker(VICTIM, settings)
    survivor = start_worker(SURVIVOR, settings)
    assert wait_until(
        lambda: all("partitions assigned" in w.log() for w in (victim, survivor)), 60
    ), log_tail(victim) + "\n" + log_tail(survivor)
    produce(kafka_servers, topic, (job_record(job, _partition(job.id)) for job in jobs))

    db = core.db_path
    assert wait_while_running(lambda: reporting_workers(db)[VICTIM] >= 100, 90, victim), log_tail(
        victim
    )
    victim_partitions = assigned_partitions(victim)
    victim.kill()
    done_before_kill = len(tally(db, ids).received)
    assert done_before_kill < len(jobs) - 100, "the run ended before the kill"

    wait_while_running(lambda: not tally(db, ids).lost, 120, survivor, interval_s=0.5)
    result = tally(db, ids)
    kept_by = reporters(db)
    taken_over = Counter(_partition(i) for i, w in kept_by.items() if w == SURVIVOR)
    report(
        result.line("worker SIGKILL")
        + f"; done before the kill: {done_before_kill}; victim's partitions "
        f"{sorted(victim_partitions)}; results kept per worker: {dict(reporting_workers(db))}"
    )
    assert not result.lost, f"{len(result.lost)} lost\n{log_tail(survivor)}"
    # The victim owned some partitions; the survivor took each of them over.
    assert victim_partitions
    assert {_partition(i) for i, w in kept_by.items() if w == VICTIM} <= victim_partitions
    assert all(taken_over[p] > 0 for p in victim_partitions), taken_over
    assert survivor.process.poll() is None  # type: ignore[union-attr]
    assert survivor.stop() == 0, log_tail(survivor)
