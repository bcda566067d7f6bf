"""A span per job, continuing the producer's trace, current while the job runs.

The engine calls ``job_started`` and ``job_finished`` in the greenlet that runs the job,
and greenlets carry their own context variables: the span made current there is the
parent of whatever the executor does (the requests instrumentation sends it on to an
HTTP target) and its ids are bound to every line the job logs. A job waiting for its
next attempt leaves its slot (``job_retrying``): its span stays open, current nowhere,
and is made current again in the greenlet that runs its next attempt.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from contextvars import ContextVar, Token
from dataclasses import dataclass

import structlog
from opentelemetry import context, trace
from opentelemetry.trace import Span, SpanContext, SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from jobworker.adapters.sparse_warnings import SparseWarning
from jobworker.domain.model import Job, JobResult, JobStatus

log = structlog.get_logger("jobworker.tracing")

# Span-context ids of finished jobs kept for their result's call to Core. A result
# that never reaches the sink (the worker stopped) must not keep its entry for ever.
DEFAULT_KEPT_SPANS = 65_536
MALFORMED_WARNING_EVERY_S = 60.0
_MAX_STATUS_CHARS = 512
_MAX_LOGGED_HEADER_CHARS = 128


class JobSpans:
    """The span context of each finished job, by job id, until its result is delivered.

    Filled in the jobs' greenlets, read by the senders': one thread, no lock.
    """

    def __init__(self, capacity: int = DEFAULT_KEPT_SPANS) -> None:
        self._capacity = capacity
        self._by_job: dict[str, SpanContext] = {}

    def put(self, job_id: str, span_context: SpanContext) -> None:
        if len(self._by_job) >= self._capacity and job_id not in self._by_job:
            # Dicts keep insertion order: the oldest entry goes first.
            del self._by_job[next(iter(self._by_job))]
        self._by_job[job_id] = span_context

    def get(self, job_id: str) -> SpanContext | None:
        return self._by_job.get(job_id)

    def forget(self, job_id: str) -> None:
        self._by_job.pop(job_id, None)

    def __len__(self) -> int:
        return len(self._by_job)


@dataclass(slots=True)
class _OpenSpan:
    job: Job
    span: Span
    token: Token[context.Context] | None


# The job span of the job this greenlet runs.
_open_span: ContextVar[_OpenSpan | None] = ContextVar("jobworker_job_span", default=None)


class TracingJobObserver:
    """A JobObserver that gives each job a CONSUMER span, child of the record's context.

    The span starts with the job's first attempt (or, for a job refused before any
    attempt, when its result is known) and ends when its result is known. A malformed
    ``traceparent`` costs the job its parent, never the job: it is logged at most once
    per ``warn_every_s``, with how many were not logged.
    """

    def __init__(
        self,
        tracer: trace.Tracer,
        spans: JobSpans,
        warn_every_s: float = MALFORMED_WARNING_EVERY_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._tracer = tracer
        self._spans = spans
        self._propagator = TraceContextTextMapPropagator()
        self._malformed_warning = SparseWarning(warn_every_s, clock)
        # Spans of jobs waiting for their next attempt, current in no greenlet, by job.
        self._between_attempts: dict[int, _OpenSpan] = {}

    def job_received(self, job: Job) -> None:
        pass

    def job_started(self, job: Job, attempt: int) -> None:
        current = _open_span.get()
        if current is None or current.job is not job:
            waiting = self._between_attempts.pop(id(job), None)
            if waiting is None:
                self._open(job)
                return
            current = self._make_current(waiting)
        current.span.add_event("attempt started", {"jobworker.attempt": attempt})

    def job_retrying(self, job: Job, attempt: int, error: str, delay_s: float) -> None:
        current = _open_span.get()
        if current is not None and current.job is job:
            current.span.add_event(
                "attempt failed",
                {
                    "jobworker.attempt": attempt,
                    "jobworker.error": error[:_MAX_STATUS_CHARS],
                    "jobworker.retry_in_s": delay_s,
                },
            )
            # The job leaves this greenlet (slot) until its next attempt.
            self._leave(current)
            self._between_attempts[id(job)] = current

    def job_finished(self, job: Job, result: JobResult) -> None:
        current = _open_span.get()
        if current is None or current.job is not job:
            waiting = self._between_attempts.pop(id(job), None)
            current = self._open(job) if waiting is None else self._make_current(waiting)
        span = current.span
        span.set_attribute("jobworker.job.status", result.status.value)
        span.set_attribute("jobworker.job.attempts", result.attempts)
        if result.status is not JobStatus.SUCCEEDED:
            description = f"{result.status.value}: {result.error}"[:_MAX_STATUS_CHARS]
            span.set_status(Status(StatusCode.ERROR, description))
        span.end()
        self._leave(current)
        # The log fields stay bound: the job's last lines (its summary) come after this.
        self._spans.put(job.id, span.get_span_context())

    def result_delivered(self, result: JobResult) -> None:
        self._spans.forget(result.job_id)

    def _open(self, job: Job) -> _OpenSpan:
        parent = self._parent(job)
        span = self._tracer.start_span(
            f"job {job.type}",
            context=parent,
            kind=SpanKind.CONSUMER,
            attributes={
                "messaging.operation.type": "process",
                "messaging.message.id": job.id,
                "jobworker.job.type": job.type,
            },
        )
        return self._make_current(_OpenSpan(job, span, None), parent)

    @staticmethod
    def _make_current(opened: _OpenSpan, parent: context.Context | None = None) -> _OpenSpan:
        """``opened``'s span, current in this greenlet and bound to its log lines."""
        opened.token = context.attach(trace.set_span_in_context(opened.span, parent))
        ids = opened.span.get_span_context()
        structlog.contextvars.bind_contextvars(
            trace_id=format(ids.trace_id, "032x"), span_id=format(ids.span_id, "016x")
        )
        _open_span.set(opened)
        return opened

    @staticmethod
    def _leave(opened: _OpenSpan) -> None:
        if opened.token is not None:
            context.detach(opened.token)
            opened.token = None
        _open_span.set(None)

    def _parent(self, job: Job) -> context.Context:
        """The producer's context from the job's W3C headers; an empty one without."""
        headers = job.trace_headers
        if not headers:
            return context.Context()
        parent = self._propagator.extract(headers, context.Context())
        traceparent = headers.get("traceparent")
        found = trace.get_current_span(parent).get_span_context()
        if traceparent is not None and not found.is_valid:
            self._malformed(job, traceparent)
        return parent

    def _malformed(self, job: Job, traceparent: str) -> None:
        held_back = self._malformed_warning.due()
        if held_back is None:
            return
        log.warning(
            "malformed traceparent header; the job runs without a parent span",
            job_id=job.id,
            traceparent=traceparent[:_MAX_LOGGED_HEADER_CHARS],
            not_logged_since_last=held_back,
        )
