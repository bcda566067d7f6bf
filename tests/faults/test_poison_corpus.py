"""Poison on a 3-partition topic, mixed with valid jobs on every partition.

Every record ends accounted for: a result in Core when it carries a job id (REJECTED,
FAILED or TIMED_OUT as the case asks), a dead letter with its reason when it does not.
The worker never crashes, and every partition is committed to its end.
"""

from __future__ import annotations

import base64
import json
import random
from dataclasses import dataclass
from pathlib import Path

import pytest
from google.protobuf.message import DecodeError

from jobworker.adapters.core.process import CoreProcess
from jobworker.adapters.proto.jobworker.v1 import jobworker_pb2 as pb
from jobworker.domain.model import JobStatus
from tests.support.e2e import sleep_jobs, statuses, tally, worker_settings
from tests.support.faults import MIB, SilentServer, decompression_bomb_png, png_bytes
from tests.support.fixtures import Report, StartWorker
from tests.support.kafka import (
    committed_offsets,
    create_topic,
    end_offsets,
    job_record,
    produce,
    read_all,
    unique_name,
)
from tests.support.processes import log_tail, wait_until, wait_while_running

pytestmark = pytest.mark.faults

PARTITIONS = 3
VALID_PER_PARTITION = 20
DLQ_REASON = "x-dlq-reason"


@dataclass(frozen=True)
class Poison:
    """One bad record, and how it must end: a result with one of ``statuses`` in Core
    (when it has a job id), or a dead letter whose reason contains ``dead_letter``."""

    key: str
    value: bytes | None
    statuses: frozenset[JobStatus] = frozenset()
    dead_letter: str = ""


def _task(job_id: str, job_type: int, payload: object) -> bytes:
    text = payload if isinstance(payload, str) else json.dumps(payload)
    return pb.JobTask(id=job_id, type=job_type, payload=text).SerializeToString()  # type: ignore[arg-type]


def _data_url(image: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(image).decode()


def poison_corpus(hanging_url: str) -> list[Poison]:
    random_bytes = random.Random(7).randbytes(200)
    whole = _task("poison-truncated", pb.JobTask.SLEEP, {"ms": 1, "output": "y" * 200})
    truncated = whole[: len(whole) // 2]
    for undecodable in (random_bytes, truncated):  # the corpus must be what it claims
        with pytest.raises(DecodeError):
            pb.JobTask.FromString(undecodable)
    rejected = frozenset({JobStatus.REJECTED})
    refused = frozenset({JobStatus.REJECTED, JobStatus.FAILED})
    return [
        Poison("poison-random", random_bytes, dead_letter="not a JobTask"),
        Poison("poison-truncated", truncated, dead_letter="not a JobTask"),
        Poison("poison-no-id", _task("", pb.JobTask.SLEEP, {"ms": 1}), dead_letter="no id"),
        Poison("poison-blank-id", _task("  ", pb.JobTask.SLEEP, {"ms": 1}), dead_letter="no id"),
        Poison("poison-null-value", None, dead_letter="no value"),
        Poison("poison-type-99", _task("poison-type-99", 99, {"ms": 1}), rejected),
        Poison("poison-type-0", _task("poison-type-0", 0, {"ms": 1}), rejected),
        Poison("poison-not-json", _task("poison-not-json", pb.JobTask.SLEEP, "{ms:"), rejected),
        Poison(
            "poison-sleep-ms", _task("poison-sleep-ms", pb.JobTask.SLEEP, {"ms": "x"}), rejected
        ),
        Poison("poison-http-no-url", _task("poison-http-no-url", pb.JobTask.HTTP, {}), rejected),
        Poison(
            "poison-image-escape",
            _task(
                "poison-image-escape",
                pb.JobTask.IMAGE_RESIZE,
                {
                    "source": _data_url(png_bytes()),
                    "width": 8,
                    "height": 8,
                    "destination": "../x.png",
                },
            ),
            rejected,
        ),
        Poison(
            "poison-image-bomb",
            _task(
                "poison-image-bomb",
                pb.JobTask.IMAGE_RESIZE,
                {
                    "source": _data_url(decompression_bomb_png(50_000, 50_000)),
                    "width": 8,
                    "height": 8,
                    "destination": "bomb.png",
                },
            ),
            refused,
        ),
        Poison(
            # Under Pillow's own bomb error (~179 Mpx), over the worker's IMAGE_MAX_PIXELS.
            "poison-image-100mpx",
            _task(
                "poison-image-100mpx",
                pb.JobTask.IMAGE_RESIZE,
                {
                    "source": _data_url(decompression_bomb_png(10_000, 10_000)),
                    "width": 8,
                    "height": 8,
                    "destination": "big.png",
                },
            ),
            refused,
        ),
        Poison(
            # 1 MiB and more of output: over MAX_OUTPUT_BYTES, so FAILED, never sent whole.
            "poison-1mib-output",
            _task("poison-1mib-output", pb.JobTask.SLEEP, {"ms": 0, "output": "z" * (MIB + 1024)}),
            refused,
        ),
        Poison(
            "poison-http-hangs",
            _task("poison-http-hangs", pb.JobTask.HTTP, {"url": hanging_url, "timeout_ms": 1000}),
            frozenset({JobStatus.TIMED_OUT, JobStatus.FAILED}),
        ),
    ]


def test_poison_records_are_each_accounted_for_and_no_partition_stalls(
    kafka_servers: str,
    core: CoreProcess,
    start_worker: StartWorker,
    report: Report,
    tmp_path: Path,
) -> None:
    # Room for the 1 MiB record: the broker's default limit is just above 1 MB.
    topic = create_topic(
        kafka_servers, PARTITIONS, "faults-poison", configs={"max.message.bytes": str(4 * MIB)}
    )
    group = unique_name("faults-poison")
    with SilentServer() as hanging:
        corpus = poison_corpus(f"http://127.0.0.1:{hanging.port}/never-answers")
        valid = {
            p: sleep_jobs(VALID_PER_PARTITION, ms=10, prefix=f"valid-p{p}")
            for p in range(PARTITIONS)
        }
        records: list[tuple[bytes, bytes | None, int]] = []
        for p in range(PARTITIONS):
            mine = corpus[p::PARTITIONS]
            half = VALID_PER_PARTITION // 2
            records += [job_record(job, p) for job in valid[p][:half]]
            records += [(poison.key.encode(), poison.value, p) for poison in mine]
            records += [job_record(job, p) for job in valid[p][half:]]
        produce(kafka_servers, topic, records, max_request_size=4 * MIB)
        (tmp_path / "in").mkdir()
        worker = start_worker(
            "poison-worker",
            worker_settings(
                kafka_servers,
                topic,
                group,
                core.address,
                WORKER_POOL_SIZE="5",
                MAX_JOB_TIMEOUT="3s",
                RETRY_BACKOFF_BASE="200ms",
                HTTP_ALLOW_PRIVATE_NETWORKS="true",
                IMAGE_INPUT_ROOT=str(tmp_path / "in"),
                IMAGE_OUTPUT_ROOT=str(tmp_path / "out"),
                SHUTDOWN_TIMEOUT="20s",
            ),
        )

        db = core.db_path
        valid_ids = [job.id for jobs in valid.values() for job in jobs]
        with_id = [poison for poison in corpus if poison.statuses]
        expected_ids = valid_ids + [poison.key for poison in with_id]
        wait_while_running(lambda: not tally(db, expected_ids).lost, 90, worker, interval_s=0.5)
        assert worker.process.poll() is None, log_tail(worker)  # type: ignore[union-attr]
        dead = [poison for poison in corpus if poison.dead_letter]
        dead_letters = read_all(kafka_servers, f"{topic}.dlq", len(dead), timeout_s=30)
        ends = end_offsets(kafka_servers, topic)
        committed_to_end = wait_until(
            lambda: committed_offsets(kafka_servers, group, topic) == ends, 30
        )
        alive = worker.process.poll() is None  # type: ignore[union-attr]
        exit_code = worker.stop()

    result = tally(db, expected_ids)
    kept = statuses(db, expected_ids)
    reasons = {
        (letter.key or b"").decode(): dict(letter.headers).get(DLQ_REASON, b"").decode()
        for letter in dead_letters
    }
    poison_statuses = {p.key: str(kept[p.key]) for p in with_id}
    report(
        result.line("poison corpus")
        + f"; {len(valid_ids)} valid + {len(corpus)} poison records on {PARTITIONS} partitions;"
        f" dead letters: {len(dead_letters)} of {len(dead)} expected;"
        f" committed to the end: {committed_to_end}\n  poison results: {poison_statuses}"
        f"\n  dead-letter reasons: {reasons}"
    )
    assert alive, log_tail(worker)
    assert exit_code == 0, log_tail(worker)
    assert not result.lost, sorted(result.lost)
    assert all(kept[job_id] is JobStatus.SUCCEEDED for job_id in valid_ids)
    for poison in with_id:
        assert kept[poison.key] in poison.statuses, (poison.key, kept[poison.key])
    for poison in dead:
        assert poison.dead_letter in reasons.get(poison.key, ""), (poison.key, reasons)
    assert len(dead_letters) == len(dead)  # no job with an id went to the dead letters
    assert committed_to_end, (committed_offsets(kafka_servers, group, topic), ends)
