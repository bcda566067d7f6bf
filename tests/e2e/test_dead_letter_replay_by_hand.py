"""``jobworker dlq replay`` over dead-letter topics written by hand: many letters under
``--rate`` and Ctrl-C, input replay must refuse or pass over, and an unreadable batch.
The CLI is a child process; no worker runs."""

from __future__ import annotations

import json
import signal
import subprocess
from collections import Counter
from pathlib import Path

from kafka.record.memory_records import MemoryRecordsBuilder

from jobworker.adapters.proto.jobworker.v1 import jobworker_pb2 as pb
from tests.support.dead_letters import (
    dead_letter_headers,
    dlq,
    dlq_command,
    json_lines,
    produce_letters,
    replayed,
    said,
    topic_exists,
)
from tests.support.e2e import core_in_this_process, reports_per_job
from tests.support.kafka import create_topic, end_offsets, read_all, task_bytes, unique_name
from tests.support.processes import ROOT, free_port, worker_env
from tests.support.waiting import wait_until

TIMEOUT_S = 60


def cli_settings(servers: str, topic: str) -> dict[str, str]:
    """What ``dlq`` needs; Core's address is never dialled: no letter here goes to Core."""
    return {
        "KAFKA_BROKERS": servers,
        "KAFKA_TOPIC": topic,
        "KAFKA_GROUP_ID": unique_name("group"),
        "GRPC_SERVER_ADDRESS": "127.0.0.1:1",
    }


def test_ctrl_c_in_a_rate_limited_replay_loses_nothing_and_sends_nothing_twice(
    kafka_servers: str, tmp_path: Path
) -> None:
    target = create_topic(kafka_servers, partitions=1)
    dead = create_topic(kafka_servers, partitions=2, prefix="dlq")
    count = 400
    produce_letters(
        kafka_servers,
        dead,
        [
            (
                f"job-{i}".encode(),
                task_bytes(f"job-{i}"),
                dead_letter_headers("by hand", target, 0, i),
                i % 2,
            )
            for i in range(count)
        ],
    )
    settings = cli_settings(kafka_servers, target)
    out, err = tmp_path / "replay.out", tmp_path / "replay.err"
    with out.open("w") as stdout, err.open("w") as stderr:
        replay = subprocess.Popen(
            dlq_command("replay", "--topic", dead, "--rate", "20/s", "--yes"),
            env=worker_env(**settings),
            cwd=ROOT,
            stdin=subprocess.DEVNULL,
            stdout=stdout,
            stderr=stderr,
        )
    try:
        assert wait_until(lambda: sum(end_offsets(kafka_servers, target).values()) >= 30, TIMEOUT_S)
        replay.send_signal(signal.SIGINT)
        assert replay.wait(TIMEOUT_S) == 130, err.read_text()
    finally:
        if replay.poll() is None:
            replay.kill()
            replay.wait(10)
    first = sum(end_offsets(kafka_servers, target).values())
    assert 30 <= first < count, "the rate should have left most letters for after Ctrl-C"
    assert f"replayed {first} letter(s) of {dead}" in out.read_text()
    assert "interrupted: the checkpoint covers exactly what was sent" in out.read_text()

    resumed = dlq(settings, "replay", "--topic", dead, "--yes")
    assert resumed.returncode == 0, resumed.stderr
    assert f"replayed {count - first} letter(s) of {dead}" in resumed.stdout

    assert sum(end_offsets(kafka_servers, target).values()) == count
    places = Counter(
        (h["x-replay-dlq-partition"], h["x-replay-dlq-offset"])
        for _, h in replayed(read_all(kafka_servers, target, count=count))
    )
    expected = {
        (str(p), str(o))
        for p, letters in ((0, (count + 1) // 2), (1, count // 2))
        for o in range(letters)
    }
    assert set(places) == expected
    assert set(places.values()) == {1}, "a letter was sent twice"


def test_missing_topics_foreign_records_and_truncated_results_are_refused_or_skipped(
    kafka_servers: str,
) -> None:
    target = create_topic(kafka_servers, partitions=1)
    settings = cli_settings(kafka_servers, target)
    missing = unique_name("nope")
    for action in (["ls"], ["replay", "--yes"]):
        run = dlq(settings, *action, "--topic", missing)
        assert run.returncode == 2, run.stderr
        assert said(run.stderr) == [
            f"jobworker: Kafka has no topic {missing!r} (--topic): nothing was dead-lettered"
            " there yet, or the name is not the one the workers use"
        ]
        # A broker creates a topic a metadata request names (auto.create.topics.enable,
        # its default): looking must not make it.
        assert not topic_exists(kafka_servers, missing), f"dlq {action[0]} created the topic"

    dead = create_topic(kafka_servers, partitions=1, prefix="dlq")
    result = pb.JobResult(job_id="job-r", status=pb.JobResult.SUCCEEDED, output="o" * 40)
    produce_letters(
        kafka_servers,
        dead,
        [
            (b"someone-else", b"not ours", [], 0),
            (b"job-1", task_bytes("job-1"), dead_letter_headers("by hand", target, 0, 7), 0),
            (
                b"job-r",
                result.SerializeToString()[:-10],
                [
                    *dead_letter_headers("Core refused it", target, 0, 8),
                    ("x-dlq-job-id", b"job-r"),
                    ("x-dlq-core-code", b"INVALID_ARGUMENT"),
                ],
                0,
            ),
        ],
    )
    rows = json_lines(dlq(settings, "ls", "--topic", dead, "--json").stdout)
    assert [(r["kind"], r["replayable"]) for r in rows] == [
        ("foreign", False),
        ("job", True),
        ("result", False),
    ]
    foreign = json.loads(dlq(settings, "show", "--topic", dead, "0").stdout)
    assert "not a worker's dead letter" in foreign["not_replayable_because"]
    truncated = json.loads(dlq(settings, "show", "--topic", dead, "0:2").stdout)
    assert truncated["kind"] == "result"
    assert "its value is not a JobResult" in truncated["not_replayable_because"]
    assert "not_a_result" in truncated["result"]

    nowhere = unique_name("nope")
    run = dlq(settings, "replay", "--topic", dead, "--to", nowhere, "--yes")
    assert run.returncode == 2, run.stderr
    assert said(run.stderr)[-1].startswith(
        f"jobworker: replay stopped: Kafka has no topic {nowhere!r} to replay to"
    )
    assert not topic_exists(kafka_servers, nowhere), "replay created the --to topic"
    assert sum(end_offsets(kafka_servers, target).values()) == 0

    asked = dlq(settings, "replay", "--topic", dead)  # no --yes, and no terminal to ask on
    assert asked.returncode == 2, asked.stderr
    assert said(asked.stderr) == [
        f"jobworker: replay 1 letter(s) of {dead}: 1 to {target} — pass --yes to do it"
        " (--dry-run lists them)"
    ]
    assert sum(end_offsets(kafka_servers, target).values()) == 0

    run = dlq(settings, "replay", "--topic", dead, "--yes")
    assert run.returncode == 0, run.stderr
    assert said(run.stderr) == [
        "skipped 0:0 (foreign): not a worker's dead letter (no x-dlq-* headers)",
        "skipped 0:2 (result job-r): its value is not a JobResult"
        f" ({truncated['result']['not_a_result']}): Core cannot take it",
    ]
    assert f"replayed 1 letter(s) of {dead}: 1 to {target}" in run.stdout
    assert "skipped 2 letter(s):" in run.stdout
    [(record, headers)] = replayed(read_all(kafka_servers, target, count=1))
    assert (record.key, headers["x-replay-dlq-offset"]) == (b"job-1", "1")


def batch_bytes(base_offset: int, job_ids: list[str]) -> bytes:
    """A gzip v2 batch of JobTasks as a broker stores it (it writes the base offset,
    which no CRC covers), each record with a header of its own."""
    builder = MemoryRecordsBuilder(magic=2, compression_type=1, batch_size=1 << 20)
    for job_id in job_ids:
        builder.append(
            timestamp=0,
            key=job_id.encode(),
            value=task_bytes(job_id),
            headers=[("trace", f"t-{job_id}".encode())],
        )
    builder.close()
    return base_offset.to_bytes(8, "big") + bytes(builder.buffer())[8:]


def test_an_unreadable_batch_is_shown_with_its_records_and_replayed_record_by_record(
    kafka_servers: str,
) -> None:
    target = create_topic(kafka_servers, partitions=1)
    dead = create_topic(kafka_servers, partitions=1, prefix="dlq")
    job_ids = [f"batched-{i}" for i in range(4)]
    headers = [
        ("x-dlq-reason", b"UnsupportedCodecError: no zstd"),
        ("x-dlq-source-topic", target.encode()),
        ("x-dlq-source-partition", b"0"),
        ("x-dlq-source-offset", b"10"),
        ("x-dlq-source-last-offset", b"13"),
        ("x-dlq-worker", b"worker-1"),
        ("x-dlq-value-format", b"record-batch"),
    ]
    produce_letters(kafka_servers, dead, [(None, batch_bytes(10, job_ids), headers, 0)])
    settings = cli_settings(kafka_servers, target)

    shown = json.loads(dlq(settings, "show", "--topic", dead, "0").stdout)
    assert shown["kind"] == "batch"
    assert shown["not_replayable_because"] is None
    assert shown["headers"]["x-dlq-value-format"] == "record-batch"
    assert [(r["offset"], r["key"], r["job"]["id"]) for r in shown["batch"]["records"]] == [
        (10 + i, job_id, job_id) for i, job_id in enumerate(job_ids)
    ]
    assert shown["batch"]["records"][0]["headers"] == {"trace": "t-batched-0"}

    run = dlq(settings, "replay", "--topic", dead, "--yes")
    assert run.returncode == 0, run.stderr
    assert f"replayed 1 letter(s) of {dead}: 1 to {target}" in run.stdout
    back = replayed(read_all(kafka_servers, target, count=4))
    assert [
        (r.key.decode(), pb.JobTask.FromString(r.value).id, h["trace"], h["x-replay-source-offset"])
        for r, h in back
    ] == [(job_id, job_id, f"t-{job_id}", str(10 + i)) for i, job_id in enumerate(job_ids)]
    assert {(h["x-replay-dlq-offset"], h["x-replay-count"]) for _, h in back} == {("0", "1")}


def test_core_unreachable_exits_69_and_the_result_goes_once_core_answers(
    kafka_servers: str, tmp_path: Path
) -> None:
    source = create_topic(kafka_servers, partitions=1)
    dead = create_topic(kafka_servers, partitions=1, prefix="results-dlq")
    result = pb.JobResult(job_id="job-1", type=pb.JobTask.SLEEP, status=pb.JobResult.SUCCEEDED)
    headers = [
        *dead_letter_headers("Core refused the result for good", source, 0, 4),
        ("x-dlq-job-id", b"job-1"),
        ("x-dlq-core-code", b"INVALID_ARGUMENT"),
        ("x-dlq-core-details", b"tenant unknown to Core"),
    ]
    produce_letters(kafka_servers, dead, [(b"job-1", result.SerializeToString(), headers, 0)])
    settings = cli_settings(kafka_servers, source) | {
        "KAFKA_RESULTS_DLQ_TOPIC": dead,
        "GRPC_SERVER_ADDRESS": f"127.0.0.1:{free_port()}",
        "CORE_START_TIMEOUT": "1s",
    }

    run = dlq(settings, "replay", "--results", "--yes")
    assert run.returncode == 69, run.stderr
    assert said(run.stderr)[-1].startswith("jobworker:"), run.stderr

    db = tmp_path / "core.db"
    with core_in_this_process(db) as (address, _):
        run = dlq(settings | {"GRPC_SERVER_ADDRESS": address}, "replay", "--results", "--yes")
        assert run.returncode == 0, run.stderr
        assert f"replayed 1 letter(s) of {dead}: 1 to Core" in run.stdout
    assert reports_per_job(db, ["job-1"]) == {"job-1": 1}
