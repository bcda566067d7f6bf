"""The job's log: one summary line per finished job, and the job's fields on every line
logged while it runs (the logging setup merges them in with ``add_job_fields``)."""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Mapping, MutableMapping
from contextvars import ContextVar
from typing import Any

import structlog

from jobworker.domain.model import Job, JobResult, JobStatus

_JOBS_LOGGER = "jobworker.jobs"

# The fields of the job the current greenlet runs: one context variable set once per
# attempt, because binding three of structlog's contextvars per job, and clearing them
# (which walks a copy of the whole context), cost more than the job's own log line.
_job_fields: ContextVar[Mapping[str, Any] | None] = ContextVar("jobworker_job", default=None)


def bind_job_fields(fields: Mapping[str, Any]) -> None:
    """Add ``fields`` to every line logged in this greenlet until ``clear_job_fields``.

    Fields given to the log call itself win over these.
    """
    _job_fields.set(fields)


def clear_job_fields() -> None:
    _job_fields.set(None)


def current_job_fields() -> Mapping[str, Any]:
    """The job fields bound in this greenlet (empty when none)."""
    return _job_fields.get() or {}


def add_job_fields(
    _logger: Any, _method_name: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    """A processor: the fields of ``bind_job_fields``, behind the event's own."""
    fields = _job_fields.get()
    if fields:
        for key, value in fields.items():
            event_dict.setdefault(key, value)
    return event_dict


class LoggingJobObserver:
    """Binds job_id/type/attempt to the job's greenlet and logs one line per job.

    Greenlets carry their own context variables, so anything an executor logs while it
    runs carries the job's id too.
    """

    def __init__(self) -> None:
        self._log: Any = structlog.get_logger(_JOBS_LOGGER)
        self._resolved = False
        self._jobs_logger = logging.getLogger(_JOBS_LOGGER)  # its level is the one that counts
        self.finished_by_status: Counter[str] = Counter()
        self._processors: list[Any] | None = None  # structlog's, read at the first line
        self._line_logger: Any = None

    def job_received(self, job: Job) -> None:
        pass

    def job_started(self, job: Job, attempt: int) -> None:
        bind_job_fields({"job_id": job.id, "type": job.type, "attempt": attempt})

    def job_retrying(self, job: Job, attempt: int, error: str, delay_s: float) -> None:
        self._log.warning("job attempt failed; retrying", error=error, retry_in_s=round(delay_s, 3))

    def job_finished(self, job: Job, result: JobResult) -> None:
        status = result.status
        status_name = status.value
        self.finished_by_status[status_name] += 1
        # Asked before the fields are gathered: a line filtered out costs next to
        # nothing (docs/benchmarks.md).
        succeeded = status is JobStatus.SUCCEEDED
        if succeeded and not self._jobs_logger.isEnabledFor(logging.INFO):
            clear_job_fields()
            return
        fields: dict[str, Any] = {
            "job_id": job.id,
            "type": job.type,
            "attempt": result.attempts,
            "status": status_name,
            "duration_ms": result.duration_ms,
        }
        if succeeded:
            fields["event"] = "job finished"  # last, where structlog's logger puts it
            self._info_line(fields)
        else:
            if not self._resolved:
                # structlog's lazy logger looks its bound logger up on every call; this
                # is the same lookup done once, as cache_logger_on_first_use does.
                self._log, self._resolved = self._log.bind(), True
            self._log.warning("job finished", **fields, error=result.error)
        clear_job_fields()

    def _info_line(self, event_dict: Any) -> None:
        """``event_dict`` through structlog's configured processors to its logger, as a
        bound logger's ``info`` passes it on, without the bound logger's own layers.

        This is every job's line at the default level, and those layers (the fields
        passed on twice as keywords, the bound context copied, the level method) cost
        about 1 µs of the 9 µs a job's log took, measured in one process
        (docs/benchmarks.md, "Two cuts of the line's cost in the worker"). The line is
        the same, byte for byte (tests/unit/test_logging_setup.py); its level was asked
        of the standard library's logger, as for every line of ours.
        """
        if self._processors is None:
            config = structlog.get_config()
            self._processors = config["processors"]
            self._line_logger = config["logger_factory"](_JOBS_LOGGER)
        line_logger = self._line_logger
        try:
            for processor in self._processors:
                event_dict = processor(line_logger, "info", event_dict)
        except structlog.DropEvent:
            return  # a processor's way to drop a line (structlog.testing's capture too)
        # What the last processor gave, passed on as structlog does: arguments and
        # keywords, one line, or keywords alone.
        if isinstance(event_dict, tuple):
            line_logger.info(*event_dict[0], **event_dict[1])
        elif isinstance(event_dict, str | bytes | bytearray):
            line_logger.info(event_dict)
        else:
            line_logger.info(**event_dict)

    def result_delivered(self, result: JobResult) -> None:
        pass
