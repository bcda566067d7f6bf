"""The logging job observer: one summary line per finished job."""

from __future__ import annotations

from collections import Counter

import structlog

from domain.model import Job, JobResult, JobStatus


class LoggingJobObserver:
    """Binds job_id/type/attempt to the job's greenlet and logs one line per job.

    Greenlets carry their own contextvars, so anything an executor logs while it runs
    carries the job's id too.
    """

    def __init__(self) -> None:
        self._log = structlog.get_logger("jobworker.jobs")
        self.finished_by_status: Counter[str] = Counter()

    def job_received(self, job: Job) -> None:
        pass

    def job_started(self, job: Job, attempt: int) -> None:
        structlog.contextvars.bind_contextvars(job_id=job.id, type=job.type, attempt=attempt)

    def job_retrying(self, job: Job, attempt: int, error: str, delay_s: float) -> None:
        self._log.warning("job attempt failed; retrying", error=error, retry_in_s=round(delay_s, 3))

    def job_finished(self, job: Job, result: JobResult) -> None:
        self.finished_by_status[result.status.value] += 1
        fields = {
            "job_id": job.id,
            "type": job.type,
            "attempt": result.attempts,
            "status": result.status.value,
            "duration_ms": result.duration_ms,
        }
        if result.status is JobStatus.SUCCEEDED:
            self._log.info("job finished", **fields)
        else:
            self._log.warning("job finished", **fields, error=result.error)
        structlog.contextvars.clear_contextvars()

    def result_delivered(self, result: JobResult) -> None:
        pass
