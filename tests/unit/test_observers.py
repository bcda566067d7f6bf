from __future__ import annotations

import logging

from structlog.testing import capture_logs

from jobworker.adapters.observability.job_log import LoggingJobObserver, current_job_fields
from jobworker.domain.model import Job, JobResult, JobStatus

JOB = Job(id="j-1", type="SLEEP")


def result(status: JobStatus, error: str = "") -> JobResult:
    return JobResult(
        job_id="j-1",
        type="SLEEP",
        status=status,
        error=error,
        attempts=2,
        started_at_unix_ms=1_000,
        finished_at_unix_ms=1_250,
    )


def test_one_summary_line_per_job_with_its_fields() -> None:
    observer = LoggingJobObserver()
    with capture_logs() as logs:
        observer.job_started(JOB, 1)
        observer.job_finished(JOB, result(JobStatus.FAILED, "HTTP 404"))
    assert logs == [
        {
            "event": "job finished",
            "log_level": "warning",
            "job_id": "j-1",
            "type": "SLEEP",
            "attempt": 2,
            "status": "FAILED",
            "duration_ms": 250,
            "error": "HTTP 404",
        }
    ]
    assert observer.finished_by_status == {"FAILED": 1}


def test_the_job_context_is_bound_while_it_runs_and_cleared_after() -> None:
    observer = LoggingJobObserver()
    observer.job_started(JOB, 3)
    assert current_job_fields() == {"job_id": "j-1", "type": "SLEEP", "attempt": 3}
    observer.job_finished(JOB, result(JobStatus.SUCCEEDED))
    assert current_job_fields() == {}


def test_a_succeeded_jobs_line_is_at_info_with_the_same_fields() -> None:
    jobs_logger = logging.getLogger("jobworker.jobs")
    level = jobs_logger.level
    jobs_logger.setLevel(logging.INFO)  # as LOG_LEVEL=info does
    observer = LoggingJobObserver()
    try:
        with capture_logs() as logs:
            observer.job_started(JOB, 2)
            observer.job_finished(JOB, result(JobStatus.SUCCEEDED))
    finally:
        jobs_logger.setLevel(level)
    assert logs == [
        {
            "event": "job finished",
            "log_level": "info",
            "job_id": "j-1",
            "type": "SLEEP",
            "attempt": 2,
            "status": "SUCCEEDED",
            "duration_ms": 250,
        }
    ]
