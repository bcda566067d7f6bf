from __future__ import annotations

from jobworker.adapters.codec import (
    job_from_task,
    result_from_proto,
    result_to_proto,
    results_request,
    type_name,
    type_number,
)
from jobworker.adapters.proto.jobworker.v1 import jobworker_pb2 as pb
from jobworker.domain.model import JobResult, JobStatus


def result(job_id: str, **overrides: object) -> JobResult:
    values: dict[str, object] = {
        "job_id": job_id,
        "type": "SLEEP",
        "status": JobStatus.SUCCEEDED,
        "output": "ok",
        "error": "",
        "attempts": 1,
        "started_at_unix_ms": 1_700_000_000_000,
        "finished_at_unix_ms": 1_700_000_000_005,
        "worker_id": "w1",
        "metadata": {},
    }
    return JobResult(**(values | overrides))  # type: ignore[arg-type]


def test_every_field_and_status_survives_the_round_trip() -> None:
    for status in JobStatus:
        original = result(f"j-{status.value}", status=status, error="why", metadata={"tenant": "a"})
        assert result_from_proto(result_to_proto(original)) == original


def test_a_batch_request_holds_the_same_messages_as_one_built_result_by_result() -> None:
    results = [
        result("j1"),
        result("j2", status=JobStatus.FAILED, error="boom", metadata={"k": "v"}),
        result("j3", type="TYPE_99"),
    ]
    built = results_request(results)
    expected = pb.ReportResultsRequest(results=[result_to_proto(r) for r in results])
    assert built == expected
    assert built.SerializeToString() == expected.SerializeToString()
    assert [result_from_proto(m) for m in built.results] == results


def test_unknown_type_numbers_stay_visible_and_travel_back() -> None:
    assert type_name(pb.JobTask.Type.Value("SLEEP")) == "SLEEP"
    assert type_name(99) == "TYPE_99"
    assert type_number("TYPE_99") == 99
    assert type_number("SLEEP") == pb.JobTask.Type.Value("SLEEP")
    assert type_number("PLUGIN_TYPE") == 0


def test_a_task_without_metadata_gives_a_job_with_its_own_empty_metadata() -> None:
    job = job_from_task(pb.JobTask(id="j1", type=pb.JobTask.Type.Value("SLEEP"), payload="{}"))
    assert job.metadata == {}
    assert job.type == "SLEEP"
