"""Telling several observers about a job, so that none of them can hurt it."""

from __future__ import annotations

import logging
from collections.abc import Sequence

from domain.model import Job, JobResult
from domain.ports import JobObserver

logger = logging.getLogger(__name__)


class ObserverGroup:
    """A JobObserver that tells each of ``observers`` in turn.

    Logs and metrics are observers; a bug or an outage in one of them must cost a log
    line, never a job, a greenlet of the engine, or the other observers' view.
    """

    def __init__(self, observers: Sequence[JobObserver] = ()) -> None:
        self._observers = list(observers)

    def _each(self, method: str, *args: object) -> None:
        for observer in self._observers:
            try:
                getattr(observer, method)(*args)
            except Exception:
                logger.exception("job observer failed", extra={"observer": type(observer).__name__})

    def job_received(self, job: Job) -> None:
        self._each("job_received", job)

    def job_started(self, job: Job, attempt: int) -> None:
        self._each("job_started", job, attempt)

    def job_retrying(self, job: Job, attempt: int, error: str, delay_s: float) -> None:
        self._each("job_retrying", job, attempt, error, delay_s)

    def job_finished(self, job: Job, result: JobResult) -> None:
        self._each("job_finished", job, result)

    def result_delivered(self, result: JobResult) -> None:
        self._each("result_delivered", result)
