"""``jobworker dlq`` over what a real worker set aside: poison records in the jobs
dead-letter topic, results Core refused in the results one. Listed and shown with their
reasons and sources; once Core takes them, replayed exactly once; a letter that keeps
coming back stops being replayed at DLQ_MAX_REPLAYS. The worker and the CLI are child
processes; Core is a gRPC server in this process that refuses chosen job ids until the
test says otherwise."""

from __future__ import annotations

import json
import signal
from pathlib import Path

from jobworker.adapters.codec import task_from_job
from jobworker.adapters.proto.jobworker.v1 import jobworker_pb2 as pb
from tests.support.dead_letters import dlq, json_lines, replayed, said
from tests.support.e2e import (
    RefusingCore,
    core_in_this_process,
    reports_per_job,
    sleep_jobs,
    tally,
    worker_settings,
)
from tests.support.fixtures import StartWorker
from tests.support.kafka import (
    committed_offsets,
    create_topic,
    end_offsets,
    produce,
    read_all,
    unique_name,
)
from tests.support.processes import WorkerProcess, wait_while_running
from tests.support.waiting import wait_until

TIMEOUT_S = 60


def total(offsets: dict[int, int]) -> int:
    return sum(offsets.values())


def run_until_dead_lettered(
    worker: WorkerProcess, servers: str, topic: str, group_id: str, letters: int
) -> None:
    """Wait until the worker has committed all of ``topic`` and the jobs dead-letter
    topic holds ``letters``; then stop it (SIGTERM, exit 0)."""
    ends = end_offsets(servers, topic)
    assert wait_while_running(
        lambda: (
            committed_offsets(servers, group_id, topic) == ends
            and total(end_offsets(servers, f"{topic}.dlq")) == letters
        ),
        TIMEOUT_S,
        worker,
    ), (
        f"committed {committed_offsets(servers, group_id, topic)} of {ends}; "
        f"{total(end_offsets(servers, f'{topic}.dlq'))} of {letters} dead letters"
    )
    worker.signal(signal.SIGTERM)
    assert worker.wait(60) == 0


def test_refused_results_and_poison_records_are_listed_shown_and_replayed_once(
    kafka_servers: str, start_worker: StartWorker, tmp_path: Path
) -> None:
    good, bad = sleep_jobs(20, ms=5, prefix="good"), sleep_jobs(3, ms=5, prefix="refused")
    no_id = pb.JobTask(type=pb.JobTask.SLEEP, payload='{"ms": 1}').SerializeToString()
    poison = [
        (b"poison-bytes", b"\xff\xff\xff not a JobTask"),
        (b"poison-no-id", no_id),
        (b"poison-null", None),
    ]
    topic = create_topic(kafka_servers, partitions=1)
    group_id = unique_name("group")
    records: list[tuple[bytes | None, bytes | None, int]] = [
        (j.id.encode(), task_from_job(j).SerializeToString(), 0) for j in good[:10]
    ]
    records += [(key, value, 0) for key, value in poison]  # offsets 10-12
    records += [(j.id.encode(), task_from_job(j).SerializeToString(), 0) for j in bad]
    records += [(j.id.encode(), task_from_job(j).SerializeToString(), 0) for j in good[10:]]
    produce(kafka_servers, topic, records)
    refused_ids = sorted(job.id for job in bad)
    db = tmp_path / "core.db"

    with core_in_this_process(db, lambda s: RefusingCore(s, refused_ids)) as (
        address,
        core,
    ):
        settings = worker_settings(
            kafka_servers, topic, group_id, address, RESULT_REFUSED_ATTEMPTS="1"
        )
        worker = start_worker("worker-1", settings)
        run_until_dead_lettered(worker, kafka_servers, topic, group_id, letters=3)
        assert wait_until(lambda: total(end_offsets(kafka_servers, f"{topic}.results.dlq")) == 3)
        assert not tally(db, [j.id for j in good]).lost

        # -- ls: the poison records, with their reasons and where they came from
        table = dlq(settings, "ls")
        assert table.returncode == 0, table.stderr
        assert f"3 letter(s) in {topic}.dlq, by reason:" in table.stdout
        for reason in ("value is not a JobTask", "JobTask has no id", "record has no value"):
            assert reason in table.stdout
        for offset in (10, 11, 12):
            assert f"{topic}[0]@{offset}" in table.stdout
        rows = json_lines(dlq(settings, "ls", "--json").stdout)
        assert [(r["kind"], r["source_topic"], r["source_partition"]) for r in rows] == [
            ("job", topic, 0)
        ] * 3
        assert sorted(r["source_offset"] for r in rows) == [10, 11, 12]
        assert all(r["replayable"] and r["replays"] == 0 for r in rows)
        poison_places = sorted(r["letter"] for r in rows)
        no_id_letter = next(r["letter"] for r in rows if r["source_offset"] == 11)

        # -- ls --results: the refused results, Core's answer as their reason
        results_table = dlq(settings, "ls", "--results")
        assert "Core INVALID_ARGUMENT: tenant unknown to Core" in results_table.stdout
        result_rows = json_lines(dlq(settings, "ls", "--results", "--json").stdout)
        assert sorted(r["job_id"] for r in result_rows) == refused_ids
        assert {(r["kind"], r["source_topic"]) for r in result_rows} == {("result", topic)}
        assert sorted(r["source_offset"] for r in result_rows) == [13, 14, 15]

        # -- show: every header, and the decoded JobTask / JobResult
        shown = json.loads(dlq(settings, "show", no_id_letter).stdout)
        assert shown["headers"]["x-dlq-reason"] == "JobTask has no id"
        assert shown["headers"]["x-dlq-source-topic"] == topic
        assert shown["headers"]["x-dlq-source-offset"] == "11"
        assert shown["job"]["type"] == "SLEEP"
        assert shown["job"]["payload"] == '{"ms": 1}'
        assert shown["job"]["key"] == "poison-no-id"
        shown = json.loads(dlq(settings, "show", "--results", "--job-id", refused_ids[0]).stdout)
        assert shown["kind"] == "result"
        assert shown["headers"]["x-dlq-core-code"] == "INVALID_ARGUMENT"
        assert shown["headers"]["x-dlq-core-details"] == "tenant unknown to Core"
        assert shown["result"]["job_id"] == refused_ids[0]
        assert shown["result"]["status"] == "SUCCEEDED"
        assert shown["result"]["worker_id"] == "worker-1"

        # -- Core is fixed: replay sends each refused result to it, each poison record home
        core.refused = frozenset()
        run = dlq(settings, "replay", "--results", "--yes")
        assert run.returncode == 0, run.stderr
        assert f"replayed 3 letter(s) of {topic}.results.dlq: 3 to Core" in run.stdout
        assert reports_per_job(db, refused_ids) == dict.fromkeys(refused_ids, 1)
        run = dlq(settings, "replay", "--yes")
        assert run.returncode == 0, run.stderr
        assert f"replayed 3 letter(s) of {topic}.dlq: 3 to {topic}" in run.stdout
        ends = end_offsets(kafka_servers, topic)
        assert total(ends) == len(records) + 3
        back = replayed(read_all(kafka_servers, topic, count=total(ends)))
        assert sorted(
            f"{h['x-replay-dlq-partition']}:{h['x-replay-dlq-offset']}" for _, h in back
        ) == (poison_places)
        assert {(h["x-replay-count"], h["x-replay-dlq-topic"]) for _, h in back} == {
            ("1", f"{topic}.dlq")
        }
        assert all(int(h["x-replay-at-ms"]) > 0 for _, h in back)
        assert sorted((r.key, r.value) for r, _ in back) == sorted(poison, key=lambda p: p[0])

        # -- again: nothing new is sent; a dry run sends nothing either
        reports = tally(db, refused_ids).reports
        for args in (["--results", "--yes"], ["--yes"]):
            again = dlq(settings, "replay", *args)
            assert again.returncode == 0, again.stderr
            assert "replayed 0 letter(s)" in again.stdout
            assert "letters replayed before were passed over" in again.stdout
        dry = dlq(settings, "replay", "--dry-run", "--from-start")
        assert dry.returncode == 0, dry.stderr
        assert f"would replay 3 letter(s) of {topic}.dlq: 3 to {topic}" in dry.stdout
        assert sorted(
            line.split()[2] for line in dry.stdout.splitlines() if line.startswith("would send")
        ) == (poison_places)
        dry = dlq(settings, "replay", "--results", "--dry-run", "--from-start")
        assert dry.returncode == 0, dry.stderr
        assert "would replay 3 letter(s)" in dry.stdout
        assert end_offsets(kafka_servers, topic) == ends
        assert tally(db, refused_ids).reports == reports

        # -- the worker dead-letters the replayed poison again; at DLQ_MAX_REPLAYS=1 it stays
        worker = start_worker("worker-2", settings)
        run_until_dead_lettered(worker, kafka_servers, topic, group_id, letters=6)
    rows = json_lines(dlq(settings, "ls", "--json").stdout)
    assert sorted(r["replays"] for r in rows) == [0, 0, 0, 1, 1, 1]
    limited = dlq(settings | {"DLQ_MAX_REPLAYS": "1"}, "replay", "--yes")
    assert limited.returncode == 0, limited.stderr
    skipped = [line for line in said(limited.stderr) if line.startswith("skipped")]
    assert len(skipped) == 3, limited.stderr
    assert all("replayed 1 time(s) already (DLQ_MAX_REPLAYS=1" in line for line in skipped)
    assert "replayed 0 letter(s)" in limited.stdout
    assert "skipped 3 letter(s)" in limited.stdout
    assert end_offsets(kafka_servers, topic) == ends
