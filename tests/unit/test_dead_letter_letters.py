"""Decoding dead-letter records into letters, for records written by the real writers
(``dlq.py``, ``refused_results.py``): which kind, what it holds, whether it replays."""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import kafka.codec
import pytest
from kafka.record.memory_records import MemoryRecordsBuilder

from jobworker.adapters.codec import result_to_proto
from jobworker.adapters.kafka.dlq import MAX_BATCH_BYTES, DeadLetterWriter
from jobworker.adapters.kafka.letters import letter_from_record
from jobworker.adapters.kafka.quirks import UnreadableBatch
from jobworker.adapters.kafka.records import KafkaReceipt
from jobworker.adapters.kafka.refused_results import refused_result_headers
from jobworker.adapters.kafka.settings import KafkaClientSettings
from jobworker.adapters.proto.jobworker.v1 import jobworker_pb2 as pb
from jobworker.domain.dead_letters import LetterKind, RecordCopy
from jobworker.domain.errors import ResultRefused
from jobworker.domain.model import Job, JobResult, JobStatus

GZIP, ZSTD = 1, 4


class Record(NamedTuple):
    """The fields of a kafka-python ConsumerRecord that letters are read from."""

    topic: str
    partition: int
    offset: int
    timestamp: int
    key: bytes | None
    value: bytes | None
    headers: Sequence[tuple[str, bytes]] = ()
    serialized_key_size: int = -1
    serialized_value_size: int = -1
    serialized_header_size: int = -1


def jobs_record(
    key: bytes | None, value: bytes | None, headers: Sequence[tuple[str, bytes]] = ()
) -> Record:
    return Record("jobs", 2, 41, 1_000, key, value, headers)


def dead_letter_of(source: Record, reason: str, offset: int = 7) -> Record:
    """The dead letter the worker writes for ``source``, as read back from the DLQ."""
    writer = DeadLetterWriter(KafkaClientSettings(["unused:9092"]), "jobs.dlq", "worker-1")
    key, value, headers = writer._message(source, reason)  # the writer's own bytes
    return _read_back(key, value, headers, offset)


def _read_back(
    key: bytes | None, value: bytes | None, headers: Sequence[tuple[str, bytes]], offset: int = 7
) -> Record:
    return Record(
        "jobs.dlq",
        0,
        offset,
        5_000,
        key,
        value,
        list(headers),
        len(key or b""),
        len(value or b""),
        sum(len(n) + len(v) for n, v in headers),
    )


# --- poison jobs ---------------------------------------------------------------------------


def test_a_poison_record_replays_as_itself_with_its_own_headers_and_key() -> None:
    own = [("traceparent", b"00-abc-def-01"), ("x-replay-count", b"2")]
    source = jobs_record(b"k-1", b"\xff\xfe not protobuf", own)

    letter = letter_from_record(dead_letter_of(source, "not a JobTask: Error parsing message"))

    assert letter.kind is LetterKind.JOB
    assert letter.reason == "not a JobTask: Error parsing message"
    assert letter.cause == "not a JobTask"
    assert (letter.source_topic, letter.source_partition, letter.source_offset) == ("jobs", 2, 41)
    assert letter.where == "0:7"
    assert letter.timestamp_ms == 5_000
    assert letter.records == (RecordCopy(b"k-1", b"\xff\xfe not protobuf", tuple(own), 41),)
    assert letter.replays == 2
    assert letter.unreplayable is None
    assert letter.job_id is None
    assert "not a JobTask" in letter.content["not_a_job"]
    assert letter.content["value"] == {"base64": "//4gbm90IHByb3RvYnVm"}
    assert letter.size > len(source.value or b"")


def test_a_job_without_an_id_is_decoded_for_display_and_replays() -> None:
    task = pb.JobTask(type=pb.JobTask.Type.Value("SLEEP"), payload='{"ms": 1}')
    source = jobs_record(None, task.SerializeToString())

    letter = letter_from_record(dead_letter_of(source, "JobTask has no id"))

    assert letter.kind is LetterKind.JOB
    assert letter.job_id is None
    assert letter.job_type == "SLEEP"
    assert letter.content["id"] == ""
    assert letter.content["payload"] == '{"ms": 1}'
    assert letter.records[0].value == task.SerializeToString()
    assert letter.records[0].key is None
    assert letter.unreplayable is None
    assert letter.replays == 0


def test_a_record_without_key_or_value_replays_without_a_value() -> None:
    letter = letter_from_record(dead_letter_of(jobs_record(None, None), "the record had no value"))

    assert letter.kind is LetterKind.JOB
    [record] = letter.records
    assert (record.key, record.value) == (None, None)  # not the b"" the letter had to carry
    assert letter.content["not_a_job"] == "the record had no value"
    assert letter.unreplayable is None


def test_a_letter_whose_value_was_not_kept_is_unreplayable_and_says_where_to_read_it() -> None:
    source = jobs_record(b"k", b"x" * (MAX_BATCH_BYTES + 10))

    letter = letter_from_record(dead_letter_of(source, "not a JobTask"))

    assert letter.kind is LetterKind.JOB
    assert letter.unreplayable is not None
    assert "value was not kept" in letter.unreplayable
    assert str(MAX_BATCH_BYTES + 10) in letter.unreplayable
    assert "jobs[2] offset 41" in letter.unreplayable


def test_replays_are_counted_from_the_highest_replay_count_header() -> None:
    own = [("x-replay-count", b"1"), ("x-replay-count", b"3"), ("x-replay-count", b"junk")]

    letter = letter_from_record(dead_letter_of(jobs_record(b"k", b"\xff", own), "bad"))

    assert letter.replays == 3


# --- results Core refused --------------------------------------------------------------------

RESULT = JobResult(
    "job-9",
    "SLEEP",
    JobStatus.SUCCEEDED,
    output='{"ok": true}',
    attempts=2,
    worker_id="worker-1",
    metadata={"tenant": "acme"},
)
JOB = Job("job-9", "SLEEP", receipt=KafkaReceipt("jobs", 1, 300, 0))
REFUSAL = ResultRefused("Core refused job-9", "FAILED_PRECONDITION", "job already finished")


def refused(value: bytes, extra: Sequence[tuple[str, bytes]] = ()) -> Record:
    headers = [*refused_result_headers(JOB, REFUSAL, "worker-1"), *extra]
    return _read_back(b"job-9", value, headers)


def test_a_refused_result_decodes_to_the_result_core_refused() -> None:
    letter = letter_from_record(refused(result_to_proto(RESULT).SerializeToString()))

    assert letter.kind is LetterKind.RESULT
    assert letter.result == RESULT
    assert (letter.job_id, letter.job_type) == ("job-9", "SLEEP")
    assert letter.cause == "Core FAILED_PRECONDITION: job already finished"
    assert (letter.source_topic, letter.source_partition, letter.source_offset) == ("jobs", 1, 300)
    assert letter.content["status"] == "SUCCEEDED"
    assert letter.unreplayable is None
    assert letter.records == ()


@pytest.mark.parametrize(
    "value",
    [result_to_proto(RESULT).SerializeToString()[:-3], b"\xff\xff\xff garbage"],
    ids=["truncated", "garbage"],
)
def test_a_result_that_does_not_decode_is_unreplayable_and_says_why(value: bytes) -> None:
    letter = letter_from_record(refused(value))

    assert letter.kind is LetterKind.RESULT
    assert letter.result is None
    assert letter.job_id == "job-9"  # from the header, still
    assert letter.unreplayable is not None
    assert "not a JobResult" in letter.unreplayable


def test_a_result_with_a_status_this_build_does_not_know_is_unreplayable_not_a_crash() -> None:
    value = pb.JobResult(job_id="job-9", status=7).SerializeToString()  # type: ignore[arg-type]

    letter = letter_from_record(refused(value))

    assert letter.kind is LetterKind.RESULT
    assert letter.result is None
    assert letter.unreplayable is not None
    assert "7" in letter.unreplayable
    assert letter.content["status"] == "STATUS_7"


def test_a_result_without_a_job_id_is_unreplayable() -> None:
    letter = letter_from_record(refused(b""))

    assert letter.unreplayable is not None
    assert "no job id" in letter.unreplayable


def test_a_result_kept_without_its_output_is_unreplayable() -> None:
    value = result_to_proto(RESULT._replace(output="")).SerializeToString()

    letter = letter_from_record(refused(value, [("x-dlq-output-dropped-bytes", b"950000")]))

    assert letter.unreplayable is not None
    assert "output was not kept (950000 bytes)" in letter.unreplayable


# --- unreadable batches ----------------------------------------------------------------------


def batch_bytes(base_offset: int, count: int, compression: int) -> bytes:
    """A v2 batch as a broker stores it (base offset written in; no CRC covers it)."""
    builder = MemoryRecordsBuilder(magic=2, compression_type=compression, batch_size=1 << 20)
    for i in range(count):
        builder.append(
            timestamp=0,
            key=f"job-{base_offset + i}".encode(),
            value=f"value-{base_offset + i}".encode(),
            headers=[("traceparent", f"tp-{i}".encode())],
        )
    builder.close()
    return base_offset.to_bytes(8, "big") + bytes(builder.buffer())[8:]


def batch_letter(raw: bytes | None, first: int = 12, last: int = 14) -> Record:
    batch = UnreadableBatch("jobs", 2, first, last, "UnsupportedCodecError: no zstd", raw)
    writer = DeadLetterWriter(KafkaClientSettings(["unused:9092"]), "jobs.dlq", "worker-1")
    key, value, headers = writer._message(batch, batch.error)
    return _read_back(key, value, headers)


def test_a_readable_batch_replays_its_records_within_its_offsets() -> None:
    letter = letter_from_record(batch_letter(batch_bytes(10, 6, GZIP), first=12, last=14))

    assert letter.kind is LetterKind.BATCH
    assert letter.unreplayable is None
    assert [record.source_offset for record in letter.records] == [12, 13, 14]
    assert letter.records[0] == RecordCopy(b"job-12", b"value-12", (("traceparent", b"tp-2"),), 12)
    assert letter.cause == "unreadable batch: UnsupportedCodecError"
    assert [shown["offset"] for shown in letter.content["records"]] == [12, 13, 14]


def test_a_batch_in_a_codec_missing_now_is_unreplayable_and_says_so(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    raw = batch_bytes(12, 3, ZSTD)
    monkeypatch.setattr(kafka.codec, "zstd", None)  # as if zstandard were not installed

    letter = letter_from_record(batch_letter(raw))

    assert letter.kind is LetterKind.BATCH
    assert letter.records == ()
    assert letter.unreplayable is not None
    assert letter.unreplayable.startswith("cannot read the batch's records now: ")
    assert "zstd" in letter.unreplayable.lower()


def test_a_corrupt_batch_is_unreplayable_and_says_why() -> None:
    raw = bytearray(batch_bytes(12, 3, GZIP))
    raw[-5] ^= 0xFF  # inside the compressed records: the CRC no longer matches

    letter = letter_from_record(batch_letter(bytes(raw)))

    assert letter.records == ()
    assert letter.unreplayable is not None
    assert letter.unreplayable.startswith("cannot read the batch's records now: ")
    assert "CRC" in letter.unreplayable


def test_a_batch_kept_without_its_bytes_says_where_to_read_it() -> None:
    letter = letter_from_record(batch_letter(b"\0" * (MAX_BATCH_BYTES + 1), first=13, last=16))

    assert letter.kind is LetterKind.BATCH
    assert letter.unreplayable is not None
    assert f"({MAX_BATCH_BYTES + 1} bytes)" in letter.unreplayable
    assert "jobs[2] offsets 13-16" in letter.unreplayable


# --- anything else ---------------------------------------------------------------------------


def test_a_record_no_worker_wrote_is_foreign_and_never_replayed() -> None:
    letter = letter_from_record(_read_back(b"k", b"hello", [("source", b"someone")]))

    assert letter.kind is LetterKind.FOREIGN
    assert letter.unreplayable is not None
    assert letter.content == {"key": "k", "value": "hello"}
    assert letter.records == ()


def test_sizes_unknown_to_the_client_are_not_counted() -> None:
    record = Record("jobs.dlq", 0, 0, 0, b"k", b"v", (), -1, 1, -1)

    assert letter_from_record(record).size == 1
