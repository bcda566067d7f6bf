"""Translation between the domain model and the protobuf wire contract."""

from __future__ import annotations

from collections.abc import Hashable, Iterable, Mapping

from jobworker.adapters.proto.jobworker.v1 import jobworker_pb2 as pb
from jobworker.domain.model import NO_METADATA, NO_TRACE_HEADERS, Job, JobResult, JobStatus

_UNKNOWN_TYPE_PREFIX = "TYPE_"
# Every job passes through these translations twice: plain dict look-ups, built once,
# cost a fraction of the enum wrappers' Name()/Value() calls.
_TYPE_NAMES: dict[int, str] = {number: name for name, number in pb.JobTask.Type.items()}
_TYPE_NUMBERS: dict[str, int] = dict(pb.JobTask.Type.items())
_STATUS_NUMBERS: dict[JobStatus, int] = {
    status: pb.JobResult.Status.Value(status.value) for status in JobStatus
}


def type_name(wire_type: int) -> str:
    """The job type name for a wire enum number; ``TYPE_<n>`` for numbers we do not know.

    Proto3 enums are open: a newer producer may send a number this build lacks. Keeping
    it visible as ``TYPE_<n>`` lets the job be REJECTED with a precise reason.
    """
    name = _TYPE_NAMES.get(wire_type)
    return f"{_UNKNOWN_TYPE_PREFIX}{wire_type}" if name is None else name


def type_number(name: str) -> int:
    """The wire enum number for a job type name (0 for plugin types the enum lacks)."""
    number = _TYPE_NUMBERS.get(name)
    if number is not None:
        return number
    suffix = name.removeprefix(_UNKNOWN_TYPE_PREFIX)
    return int(suffix) if name.startswith(_UNKNOWN_TYPE_PREFIX) and suffix.isdigit() else 0


def job_from_task(
    task: pb.JobTask, receipt: Hashable = None, trace_headers: Mapping[str, str] = NO_TRACE_HEADERS
) -> Job:
    return Job(
        id=task.id,
        type=type_name(task.type),
        payload=task.payload,
        timeout_ms=task.timeout_ms,
        metadata=dict(task.metadata) if task.metadata else NO_METADATA,
        created_at_unix_ms=task.created_at_unix_ms,
        receipt=receipt,
        trace_headers=trace_headers,
    )


def task_from_job(job: Job) -> pb.JobTask:
    return pb.JobTask(
        id=job.id,
        type=type_number(job.type),  # type: ignore[arg-type]
        payload=job.payload,
        timeout_ms=job.timeout_ms,
        metadata=dict(job.metadata),
        created_at_unix_ms=job.created_at_unix_ms,
    )


def result_to_proto(result: JobResult) -> pb.JobResult:
    message = pb.JobResult()
    _fill_result(message, result)
    return message


def results_request(results: Iterable[JobResult]) -> pb.ReportResultsRequest:
    """One ``ReportResults`` request; each result is built in place in the request
    (copying finished messages into it cost more than building them)."""
    request = pb.ReportResultsRequest()
    add = request.results.add
    for result in results:
        _fill_result(add(), result)
    return request


def _fill_result(message: pb.JobResult, result: JobResult) -> None:
    message.job_id = result.job_id
    message.type = type_number(result.type)  # type: ignore[assignment]
    message.status = _STATUS_NUMBERS[result.status]  # type: ignore[assignment]
    message.output = result.output
    if result.error:
        message.error = result.error
    message.attempts = result.attempts
    message.started_at_unix_ms = result.started_at_unix_ms
    message.finished_at_unix_ms = result.finished_at_unix_ms
    message.worker_id = result.worker_id
    if result.metadata:
        message.metadata.update(result.metadata)


def result_from_proto(message: pb.JobResult) -> JobResult:
    status_name = pb.JobResult.Status.Name(message.status)
    return JobResult(
        job_id=message.job_id,
        type=type_name(message.type),
        status=JobStatus(status_name) if status_name in JobStatus.__members__ else JobStatus.FAILED,
        output=message.output,
        error=message.error,
        attempts=message.attempts,
        started_at_unix_ms=message.started_at_unix_ms,
        finished_at_unix_ms=message.finished_at_unix_ms,
        worker_id=message.worker_id,
        metadata=dict(message.metadata),
    )
