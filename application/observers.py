"""Telling several observers about a job, so that none of them can hurt it."""

from __future__ import annotations

import logging
from collections.abc import Sequence

from jobworker.domain.model import Job, JobResult
from jobworker.domain.ports import JobObserver

logger = logging.getLogger(__name__)


class ObserverGroup:
    """A JobObserver that tells each of ``observers`` in turn.

    Logs and metrics are observers; a bug or an outage in one of them must cost a log
    line, never a job, a greenlet of the engine, or the other observers' view.
    """

    def __init__(self, observers: Sequence[JobObserver] = ()) -> None:
        self._observers = list(observers)
        # Told of every job several times: the bound methods are looked up once, here.
        self._received = [(observer, observer.job_received) for observer in self._observers]
        self._started = [(observer, observer.job_started) for observer in self._observers]
        self._retrying = [(observer, observer.job_retrying) for observer in self._observers]
        self._finished = [(observer, observer.job_finished) for observer in self._observers]
        self._delivered = [(observer, observer.result_delivered) for observer in self._observers]

    def job_received(self, job: Job) -> None:
        for observer, method in self._received:
            try:
                method(job)
            except Exception:
                _failed(observer)

    def job_started(self, job: Job, attempt: int) -> None:
        for observer, method in self._started:
            try:
                method(job, attempt)
            except Exception:
                _failed(observer)

    def job_retrying(self, job: Job, attempt: int, error: str, delay_s: float) -> None:
        for observer, method in self._retrying:
            try:
                method(job, attempt, error, delay_s)
            except Exception:
                _failed(observer)

    def job_finished(self, job: Job, result: JobResult) -> None:
        for observer, method in self._finished:
            try:
                method(job, result)
            except Exception:
                _failed(observer)

    def result_delivered(self, result: JobResult) -> None:
        for observer, method in self._delivered:
            try:
                method(result)
            except Exception:
                _failed(observer)


def _failed(observer: JobObserver) -> None:
    logger.exception("job observer failed", extra={"observer": type(observer).__name__})
