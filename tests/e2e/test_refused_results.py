"""Results Core refuses for good: dead-lettered with their reasons, their partition moves
on, and every other job reaches Core. The worker is the CLI; Core is a real gRPC server
in this process that refuses chosen job ids with INVALID_ARGUMENT."""

from __future__ import annotations

import signal
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from jobworker.adapters.codec import task_from_job
from jobworker.adapters.proto.jobworker.v1 import jobworker_pb2 as pb
from tests.support.e2e import RefusingCore, core_in_this_process, sleep_jobs, tally, worker_settings
from tests.support.fixtures import StartWorker
from tests.support.kafka import (
    committed_offsets,
    create_topic,
    end_offsets,
    produce,
    read_all,
    unique_name,
)
from tests.support.processes import wait_until, wait_while_running

RESULTS_TIMEOUT_S = 120


@contextmanager
def refusing_core(db: Path, refused: frozenset[str]) -> Iterator[tuple[str, RefusingCore]]:
    with core_in_this_process(db, lambda store: RefusingCore(store, refused)) as core:
        yield core


def test_results_refused_for_good_are_dead_lettered_and_every_partition_moves_on(
    kafka_servers: str, start_worker: StartWorker, tmp_path: Path
) -> None:
    good = sleep_jobs(600, ms=5, prefix="good")
    bad = sleep_jobs(5, ms=5, prefix="refused")
    topic = create_topic(kafka_servers, partitions=3)
    group_id = unique_name("group")
    # The refused jobs all sit early on partition 0, with good jobs behind them there.
    records = [(job.id.encode(), task_from_job(job).SerializeToString(), 0) for job in good[:50]]
    records += [(job.id.encode(), task_from_job(job).SerializeToString(), 0) for job in bad]
    records += [
        (job.id.encode(), task_from_job(job).SerializeToString(), i % 3)
        for i, job in enumerate(good[50:])
    ]
    produce(kafka_servers, topic, records)
    refused_ids = frozenset(job.id for job in bad)
    good_ids = [job.id for job in good]

    with refusing_core(tmp_path / "core.db", refused_ids) as (address, servicer):
        settings = worker_settings(
            kafka_servers,
            topic,
            group_id,
            address,
            WORKER_POOL_SIZE="10",
            # Four senders by default: more refusals than senders, as in the report.
            RESULT_REFUSED_ATTEMPTS="2",
        )
        worker = start_worker("worker-1", settings)

        assert wait_while_running(
            lambda: len(tally(tmp_path / "core.db", good_ids).received) == 600,
            RESULTS_TIMEOUT_S,
            worker,
        ), f"only {len(tally(tmp_path / 'core.db', good_ids).received)} of 600 in Core"
        ends = end_offsets(kafka_servers, topic)
        assert wait_until(lambda: committed_offsets(kafka_servers, group_id, topic) == ends, 60), (
            f"committed {committed_offsets(kafka_servers, group_id, topic)}, ends {ends}"
        )
        dead = read_all(kafka_servers, f"{topic}.results.dlq", count=5)
        worker.signal(signal.SIGTERM)
        assert worker.wait(60) == 0
        assert servicer.refusals == 2 * 5, "each refused result offered twice"

    assert sorted(record.key.decode() for record in dead) == sorted(refused_ids)
    for record in dead:
        headers = {name: value.decode() for name, value in record.headers}
        assert headers["x-dlq-core-code"] == "INVALID_ARGUMENT"
        assert headers["x-dlq-core-details"] == "tenant unknown to Core"
        assert headers["x-dlq-source-topic"] == topic
        assert headers["x-dlq-source-partition"] == "0"
        assert 50 <= int(headers["x-dlq-source-offset"]) < 55
        assert headers["x-dlq-worker"] == "worker-1"
        result = pb.JobResult.FromString(record.value)
        assert result.job_id == record.key.decode()
        assert result.status == pb.JobResult.SUCCEEDED
    count = tally(tmp_path / "core.db", good_ids)
    assert not count.lost
    assert not (count.received & refused_ids)


def test_the_hold_policy_keeps_the_partition_behind_a_refused_result(
    kafka_servers: str, start_worker: StartWorker, tmp_path: Path
) -> None:
    good = sleep_jobs(30, ms=5, prefix="good")
    bad = sleep_jobs(1, ms=5, prefix="refused")
    topic = create_topic(kafka_servers, partitions=1)
    group_id = unique_name("group")
    jobs = good[:10] + bad + good[10:]
    produce(
        kafka_servers,
        topic,
        [(job.id.encode(), task_from_job(job).SerializeToString(), 0) for job in jobs],
    )
    with refusing_core(tmp_path / "core.db", frozenset({bad[0].id})) as (address, servicer):
        settings = worker_settings(kafka_servers, topic, group_id, address, RESULT_REFUSED="hold")
        worker = start_worker("worker-1", settings)
        good_ids = [job.id for job in good]
        assert wait_while_running(
            lambda: len(tally(tmp_path / "core.db", good_ids).received) == 30,
            RESULTS_TIMEOUT_S,
            worker,
        )
        assert wait_until(lambda: servicer.refusals >= 3, 30)
        # The commit stays before the refused job: a restart reads it (and those after) again.
        assert committed_offsets(kafka_servers, group_id, topic).get(0, 0) <= 10
        worker.signal(signal.SIGTERM)
        assert worker.wait(60) == 0
    assert committed_offsets(kafka_servers, group_id, topic).get(0, 0) == 10
