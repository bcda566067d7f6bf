"""Translation between the domain model and the protobuf wire contract."""

from __future__ import annotations

from collections.abc import Hashable, Mapping

from adapters.proto.jobworker.v1 import jobworker_pb2 as pb
from domain.model import NO_TRACE_HEADERS, Job, JobResult, JobStatus

_UNKNOWN_TYPE_PREFIX = "TYPE_"


def type_name(wire_type: int) -> str:
    """The job type name for a wire enum number; ``TYPE_<n>`` for numbers we do not know.

    Proto3 enums are open: a newer producer may send a number this build lacks. Keeping
    it visible as ``TYPE_<n>`` lets the job be REJECTED with a precise reason.
    """
    try:
        return str(pb.JobTask.Type.Name(wire_type))  # type: ignore[arg-type]
    except ValueError:
        return f"{_UNKNOWN_TYPE_PREFIX}{wire_type}"


def type_number(name: str) -> int:
    """The wire enum number for a job type name (0 for plugin types the enum lacks)."""
    try:
        return int(pb.JobTask.Type.Value(name))
    except ValueError:
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
        metadata=dict(task.metadata),
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
    return pb.JobResult(
        job_id=result.job_id,
        type=type_number(result.type),  # type: ignore[arg-type]
        status=pb.JobResult.Status.Value(result.status.value),
        output=result.output,
        error=result.error,
        attempts=result.attempts,
        started_at_unix_ms=result.started_at_unix_ms,
        finished_at_unix_ms=result.finished_at_unix_ms,
        worker_id=result.worker_id,
        metadata=dict(result.metadata),
    )


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
