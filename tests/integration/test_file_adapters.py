from __future__ import annotations

import base64
import json
import time
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from jobworker.adapters.file import FileJobSource, FileResultSink, JobFileError, parse_job_line
from jobworker.adapters.file.dead_letters import JobLineDeadLetters, dead_letter_path
from jobworker.adapters.file.refused import FileRefusedResultStore
from jobworker.adapters.file.sink import result_to_record
from jobworker.domain.errors import ResultNotDelivered, ResultRefused
from jobworker.domain.model import Job, JobResult, JobStatus

pytestmark = pytest.mark.integration


def test_jobs_are_read_in_order_and_the_source_ends(tmp_path: Path) -> None:
    path = tmp_path / "jobs.jsonl"
    path.write_text(
        '{"id": "a", "type": "SLEEP", "payload": {"ms": 1}, "timeout_ms": 50,'
        ' "metadata": {"k": "v"}}\n'
        "\n"
        '{"id": "b", "type": "HTTP", "payload": "raw text"}\n'
        '{"id": "c", "type": "SLEEP"}\n'
    )
    source = FileJobSource(path)
    first = source.fetch(2, 0.01)
    assert [j.id for j in first] == ["a", "b"]
    assert first[0].payload == '{"ms": 1}'
    assert (first[0].timeout_ms, dict(first[0].metadata)) == (50, {"k": "v"})
    assert first[1].payload == "raw text"
    assert not source.exhausted()
    assert [j.id for j in source.fetch(10, 0.01)] == ["c"]
    assert source.exhausted()
    assert source.fetch(10, 0.01) == []
    source.close()


def test_malformed_lines_are_skipped_and_named(tmp_path: Path) -> None:
    path = tmp_path / "jobs.jsonl"
    path.write_text('[1, 2]\n{"id": "", "type": "SLEEP"}\n{"id": "ok", "type": "SLEEP"}\n')
    source = FileJobSource(path)
    assert [j.id for j in source.fetch(10, 0.01)] == ["ok"]
    assert source.skipped == [
        f"{path}:1: a job must be a JSON object, got list",
        f"{path}:2: 'id' must be a non-empty string",
    ]
    assert source.malformed == 2


def test_malformed_lines_are_kept_in_the_dead_letter_file(tmp_path: Path) -> None:
    path = tmp_path / "jobs.jsonl"
    path.write_bytes(
        b'{"id": "a", "type": "SLEEP"}\n'
        b"{not json\r\n"
        b'{"id": "caf\xe9", "type": "SLEEP"}\n'  # Latin-1, not UTF-8
        b'{"id": "b", "type": "SLEEP"}\n'
    )
    dead_letters = JobLineDeadLetters(dead_letter_path(str(path)), worker_id="w-1")
    source = FileJobSource(path, dead_letters)
    before_ms = time.time_ns() // 1_000_000

    assert [j.id for j in source.fetch(10, 0.01)] == ["a", "b"]
    source.close()

    assert source.dead_letter_file == f"{path}.dlq.jsonl"
    first, second = map(json.loads, Path(f"{path}.dlq.jsonl").read_text().splitlines())
    assert first["line"] == "{not json"
    assert (
        first["reason"]
        == "not valid JSON (Expecting property name enclosed in double quotes at column 2)"
    )
    assert (first["source_file"], first["source_line"], first["worker"]) == (str(path), 2, "w-1")
    assert first["dead_lettered_at_unix_ms"] >= before_ms
    assert "line" not in second  # the bytes as they were, which JSON text cannot hold
    assert base64.b64decode(second["line_base64"]) == b'{"id": "caf\xe9", "type": "SLEEP"}'
    assert second["reason"] == "not valid UTF-8 (byte 0xe9 at column 12)"
    assert second["source_line"] == 3


def test_a_clean_file_leaves_no_dead_letter_file(tmp_path: Path) -> None:
    path = tmp_path / "jobs.jsonl"
    path.write_text('{"id": "a", "type": "SLEEP"}\n')
    source = FileJobSource(path, JobLineDeadLetters(dead_letter_path(str(path))))
    assert len(source.fetch(10, 0.01)) == 1
    source.close()
    assert not Path(f"{path}.dlq.jsonl").exists()
    assert dead_letter_path("-") == "stdin.dlq.jsonl"


def test_a_dead_letter_file_that_cannot_be_written_is_counted_and_logged(
    tmp_path: Path,
) -> None:
    path = tmp_path / "jobs.jsonl"
    path.write_text("oops\n")
    blocked = tmp_path / "a-file"
    blocked.write_text("")
    source = FileJobSource(path, JobLineDeadLetters(blocked / "jobs.dlq.jsonl"))
    with capture_logs() as logs:
        assert source.fetch(10, 0.01) == []
    assert (source.malformed, source.dead_letters_lost) == (1, 1)
    [line] = logs
    assert line["log_level"] == "error"
    assert line["text"] == "oops"  # the log is its only record


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ('{"id": "x"}', "job x: 'type' must be a non-empty string"),
        (
            '{"id": "x", "type": "T", "timeout_ms": -5}',
            "'timeout_ms' must be a non-negative integer",
        ),
        (
            '{"id": "x", "type": "T", "metadata": {"a": 1}}',
            "'metadata' must map strings to strings",
        ),
        ("{oops", "not valid JSON"),
    ],
)
def test_each_bad_field_is_explained(line: str, message: str) -> None:
    with pytest.raises(JobFileError, match=message):
        parse_job_line(line)


def test_a_missing_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(JobFileError, match="cannot read jobs file .*nope.jsonl: No such file"):
        FileJobSource(tmp_path / "nope.jsonl").fetch(1, 0.01)


def test_results_are_appended_as_json_lines(tmp_path: Path) -> None:
    path = tmp_path / "out" / "results.jsonl"
    sink = FileResultSink(path)
    sink.send(
        JobResult(job_id="a", type="SLEEP", status=JobStatus.SUCCEEDED, output="{}", attempts=1)
    )
    sink.send(
        JobResult(
            job_id="b", type="HTTP", status=JobStatus.FAILED, error="404", metadata={"k": "v"}
        )
    )
    sink.close()
    records = [json.loads(line) for line in path.read_text().splitlines()]
    assert [(r["job_id"], r["status"]) for r in records] == [("a", "SUCCEEDED"), ("b", "FAILED")]
    assert records[1]["metadata"] == {"k": "v"}


def test_a_record_holds_every_field_of_the_result_in_order() -> None:
    result = JobResult(
        job_id="a",
        type="SLEEP",
        status=JobStatus.TIMED_OUT,
        output="{}",
        error="late",
        attempts=2,
        started_at_unix_ms=1,
        finished_at_unix_ms=5,
        worker_id="w",
        metadata={"k": "v"},
    )
    record = result_to_record(result)

    assert list(record) == list(JobResult._fields)
    assert record == {**result._asdict(), "status": "TIMED_OUT"}


def test_a_batch_is_appended_line_by_line(tmp_path: Path) -> None:
    path = tmp_path / "results.jsonl"
    sink = FileResultSink(path)
    sink.send(JobResult(job_id="a", type="SLEEP", status=JobStatus.SUCCEEDED))
    sink.send_batch(
        [JobResult(job_id=name, type="SLEEP", status=JobStatus.FAILED) for name in "bcd"]
    )
    sink.send_batch([])
    sink.close()

    records = [json.loads(line) for line in path.read_text().splitlines()]
    assert [r["job_id"] for r in records] == ["a", "b", "c", "d"]


def test_an_unwritable_results_file_is_not_delivered(tmp_path: Path) -> None:
    (tmp_path / "dir").mkdir()
    sink = FileResultSink(tmp_path / "dir")
    with pytest.raises(ResultNotDelivered, match="cannot write results file"):
        sink.send(JobResult(job_id="a", type="SLEEP", status=JobStatus.SUCCEEDED))


def test_a_refused_result_is_kept_in_its_file_with_the_refusal(tmp_path: Path) -> None:
    store = FileRefusedResultStore(tmp_path / "out" / "results.jsonl.refused.jsonl")
    refusal = ResultRefused(
        "Core refused the result of job 'a': INVALID_ARGUMENT: no", "INVALID_ARGUMENT", "no"
    )
    store.store(
        Job(id="a", type="SLEEP"),
        JobResult(job_id="a", type="SLEEP", status=JobStatus.SUCCEEDED, output="{}"),
        refusal,
    )
    store.close()
    [record] = [json.loads(line) for line in Path(store.path).read_text().splitlines()]
    assert (record["job_id"], record["status"], record["output"]) == ("a", "SUCCEEDED", "{}")
    assert record["refusal"] == {
        "code": "INVALID_ARGUMENT",
        "details": "no",
        "reason": str(refusal),
    }


def test_an_unwritable_refused_results_file_leaves_the_result_not_stored(tmp_path: Path) -> None:
    (tmp_path / "dir").mkdir()
    store = FileRefusedResultStore(tmp_path / "dir")
    with pytest.raises(ResultNotDelivered):
        store.store(
            Job(id="a", type="SLEEP"),
            JobResult(job_id="a", type="SLEEP", status=JobStatus.SUCCEEDED),
            ResultRefused("refused", "INVALID_ARGUMENT", "no"),
        )
