"""KAFKA_ORDERING through the real CLI, a real broker and the reference Core: same-key
jobs never overlap and run in offset order, while different keys run side by side; in
partition mode a partition runs one job at a time. Checked from the start and finish
times the results carry."""

from __future__ import annotations

import itertools
import json
import random
import subprocess
import sys
from collections import defaultdict
from collections.abc import Iterable

import pytest

from jobworker.adapters.core.process import CoreProcess
from jobworker.adapters.core.store import ResultStore
from jobworker.adapters.proto.jobworker.v1 import jobworker_pb2 as pb
from jobworker.domain.model import JobResult
from tests.support.e2e import tally, worker_settings
from tests.support.fixtures import Report, StartWorker
from tests.support.kafka import create_topic, produce, unique_name
from tests.support.processes import log_tail, wait_while_running, worker_env

pytestmark = pytest.mark.e2e

PARTITIONS = 2
KEYS = 20
JOBS_PER_KEY = 25
JOB_MS = 40


def _record(job_id: str, key: str | None, partition: int) -> tuple[bytes | None, bytes, int]:
    task = pb.JobTask(id=job_id, type=pb.JobTask.SLEEP, payload=json.dumps({"ms": JOB_MS}))
    return (None if key is None else key.encode()), task.SerializeToString(), partition


def _results(core: CoreProcess, ids: Iterable[str]) -> dict[str, JobResult]:
    with ResultStore(core.db_path, create=False) as store:
        kept = {job_id: store.get(job_id) for job_id in ids}
    return {job_id: s.result for job_id, s in kept.items() if s is not None}


def _overlaps_in_order(runs: list[JobResult]) -> int:
    """Pairs of consecutive jobs (in offset order) where the later started before the
    earlier finished: an overlap, or the two ran out of order."""
    late = [b.started_at_unix_ms < a.finished_at_unix_ms for a, b in itertools.pairwise(runs)]
    return sum(late)


def _most_at_once(results: Iterable[JobResult]) -> int:
    edges = sorted(
        (t, step)
        for r in results
        for t, step in ((r.started_at_unix_ms, 1), (r.finished_at_unix_ms, -1))
    )
    running = most = 0
    for _, step in edges:  # a finish sorts before a start at the same ms
        running += step
        most = max(most, running)
    return most


def _run(
    kafka_servers: str,
    core: CoreProcess,
    start_worker: StartWorker,
    ordering: str,
    records: list[tuple[bytes | None, bytes, int]],
    ids: list[str],
) -> dict[str, JobResult]:
    topic = create_topic(kafka_servers, partitions=PARTITIONS, prefix=f"e2e-order-{ordering}")
    produce(kafka_servers, topic, records)
    settings = worker_settings(
        kafka_servers,
        topic,
        unique_name("e2e-order"),
        core.address,
        KAFKA_ORDERING=ordering,
        WORKER_POOL_SIZE="10",
    )
    worker = start_worker(f"ordered-{ordering}", settings)
    assert wait_while_running(lambda: not tally(core.db_path, ids).lost, 120, worker), log_tail(
        worker
    )
    worker.stop()
    return _results(core, ids)


def test_key_ordering_runs_each_key_in_order_and_keys_in_parallel(
    kafka_servers: str, core: CoreProcess, start_worker: StartWorker, report: Report
) -> None:
    # Shuffled, as many producers write them; each key stays on one partition, so a
    # key's jobs are in offset order as they come in this list.
    jobs = [(f"key-{k:02d}", f"k{k:02d}-{j:03d}") for k in range(KEYS) for j in range(JOBS_PER_KEY)]
    random.Random(9).shuffle(jobs)
    by_key: dict[str, list[str]] = defaultdict(list)
    for key, job_id in jobs:
        by_key[key].append(job_id)
    records = [_record(job_id, key, int(key[-2:]) % PARTITIONS) for key, job_id in jobs]
    keyless = [f"free-{i:03d}" for i in range(20)]
    records += [_record(job_id, None, 0) for job_id in keyless]
    ids = [job_id for jobs in by_key.values() for job_id in jobs] + keyless

    results = _run(kafka_servers, core, start_worker, "key", records, ids)

    overlaps = sum(_overlaps_in_order([results[i] for i in jobs]) for jobs in by_key.values())
    most = _most_at_once(results.values())
    first = min(r.started_at_unix_ms for r in results.values())
    last = max(r.finished_at_unix_ms for r in results.values())
    serial_ms = sum(r.finished_at_unix_ms - r.started_at_unix_ms for r in results.values())
    report(
        f"[KAFKA_ORDERING=key] {KEYS} keys x {JOBS_PER_KEY} jobs of {JOB_MS} ms: same-key"
        f" overlaps {overlaps}; most jobs at once {most}; wall {last - first} ms for"
        f" {serial_ms} ms of work (ratio {(last - first) / serial_ms:.2f})"
    )
    assert len(results) == len(ids)
    assert overlaps == 0
    assert most >= 5, "different keys should run side by side"


def test_partition_ordering_runs_one_job_at_a_time_per_partition(
    kafka_servers: str, core: CoreProcess, start_worker: StartWorker, report: Report
) -> None:
    per_partition = {p: [f"p{p}-{j:03d}" for j in range(30)] for p in range(PARTITIONS)}
    records = [_record(job_id, job_id, p) for p, jobs in per_partition.items() for job_id in jobs]
    ids = [job_id for jobs in per_partition.values() for job_id in jobs]

    results = _run(kafka_servers, core, start_worker, "partition", records, ids)

    overlaps = sum(
        _overlaps_in_order([results[i] for i in jobs]) for jobs in per_partition.values()
    )
    report(
        f"[KAFKA_ORDERING=partition] {PARTITIONS} partitions x 30 jobs: overlaps {overlaps};"
        f" most jobs at once {_most_at_once(results.values())}"
    )
    assert overlaps == 0
    assert _most_at_once(results.values()) == PARTITIONS


def test_an_unknown_ordering_is_one_line_naming_the_variable_and_exit_2() -> None:
    env = worker_env(
        JOB_SOURCE="kafka",
        RESULT_SINK="grpc",
        KAFKA_BROKERS="127.0.0.1:9",
        KAFKA_TOPIC="jobs",
        KAFKA_GROUP_ID="g",
        GRPC_SERVER_ADDRESS="127.0.0.1:9",
        KAFKA_ORDERING="by-user",
    )
    run = subprocess.run(
        [sys.executable, "-m", "jobworker", "run"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )

    assert run.returncode == 2
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1, run.stderr
    assert "KAFKA_ORDERING" in lines[0]
    assert "none, key, partition" in lines[0]
