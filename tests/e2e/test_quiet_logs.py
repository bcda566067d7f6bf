"""A healthy run says nothing at WARNING or above: a line at those levels is something
for an operator to act on, and kafka-python's notes about what it recovers from on its
own (a dead-letter topic auto-created by its first letter, a coordinator that moved)
are not. A poison record is worth our one warning, and no more than that."""

from __future__ import annotations

import signal

from jobworker.adapters.core.process import CoreProcess
from tests.support.e2e import publish, results_in_core, sleep_jobs, worker_settings
from tests.support.fixtures import StartWorker
from tests.support.kafka import create_topic, produce, read_all, unique_name
from tests.support.processes import WorkerProcess, log_events, wait_while_running

RESULTS_TIMEOUT_S = 60
LOUD = {"warning", "error", "critical"}


def loud_lines(worker: WorkerProcess) -> list[str]:
    """Every line at WARNING or above, and every line that is not one of our JSON lines
    (a traceback, a library printing on its own)."""
    events = log_events(worker)
    plain = [line for line in worker.log().splitlines() if not line.startswith("{")]
    return plain + [f"{e['level']}: {e['event']}" for e in events if e["level"] in LOUD]


def run_until_reported(
    start_worker: StartWorker, settings: dict[str, str], core: CoreProcess, job_ids: list[str]
) -> WorkerProcess:
    worker = start_worker("worker-1", settings)
    assert wait_while_running(
        lambda: len(results_in_core(core.db_path, job_ids)) == len(job_ids),
        RESULTS_TIMEOUT_S,
        worker,
    )
    worker.signal(signal.SIGTERM)
    assert worker.wait(30) == 0
    return worker


def test_a_healthy_run_logs_nothing_at_warning_or_above(
    kafka_servers: str, core: CoreProcess, start_worker: StartWorker
) -> None:
    # A fresh topic and group, the way a first run meets them.
    topic = create_topic(kafka_servers, partitions=3, prefix="quiet")
    jobs = sleep_jobs(60, ms=5)
    publish(kafka_servers, topic, jobs)
    settings = worker_settings(kafka_servers, topic, unique_name("quiet"), core.address)

    worker = run_until_reported(start_worker, settings, core, [job.id for job in jobs])

    assert loud_lines(worker) == []


def test_a_poison_record_is_one_warning_even_when_it_creates_the_dead_letter_topic(
    kafka_servers: str, core: CoreProcess, start_worker: StartWorker
) -> None:
    topic = create_topic(kafka_servers, partitions=1, prefix="quiet-poison")
    jobs = sleep_jobs(5, ms=5)
    publish(kafka_servers, topic, jobs)
    produce(kafka_servers, topic, [(b"k", b"\xff not a JobTask", 0)])  # its DLQ is new
    settings = worker_settings(kafka_servers, topic, unique_name("quiet"), core.address)

    worker = run_until_reported(start_worker, settings, core, [job.id for job in jobs])

    assert len(read_all(kafka_servers, f"{topic}.dlq", count=1)) == 1
    assert loud_lines(worker) == ["warning: poison record: writing it to the dead-letter topic"]
