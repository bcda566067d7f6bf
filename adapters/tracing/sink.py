"""The result call to Core as a child of the job's span.

The wrapper opens a span for each call to the sink under the job's span and makes it
current in the sender's greenlet. The grpc client instrumentation then makes the RPC's
own CLIENT span under it and sends ``traceparent`` to Core in the call's metadata; each
retry of the call is one more CLIENT span.

A batch is one call carrying many jobs, and a span has one parent: the call's span is
a child of the first job's span and links to the spans of the others. So that a Core
can continue each job's trace all the same, each result carries its job span's context
in its ``metadata`` (``traceparent``, and ``tracestate`` when there is one), as the
wire contract's metadata is meant to carry trace ids.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import structlog
from opentelemetry import context, trace
from opentelemetry.trace import Link, SpanKind
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from jobworker.adapters.observability.job_trace import JobSpans
from jobworker.domain.errors import BatchesUnsupported
from jobworker.domain.model import JobResult
from jobworker.domain.ports import ResultSink


class TracedResultSink:
    """A ResultSink that traces each call to ``sink``; everything else is ``sink``'s."""

    def __init__(self, sink: ResultSink, tracer: trace.Tracer, spans: JobSpans) -> None:
        self._sink = sink
        self._tracer = tracer
        self._spans = spans
        self._propagator = TraceContextTextMapPropagator()

    def send(self, result: JobResult) -> None:
        with self._call_span("report result", (result,)):
            self._sink.send(self._with_trace(result))

    def send_batch(self, results: Sequence[JobResult]) -> None:
        send_batch = getattr(self._sink, "send_batch", None)
        if not callable(send_batch):
            raise BatchesUnsupported(f"{type(self._sink).__name__} takes one result at a time")
        with self._call_span("report results", results):
            send_batch([self._with_trace(result) for result in results])

    def _with_trace(self, result: JobResult) -> JobResult:
        """``result`` with its job span's W3C context in its metadata (it wins over a
        ``traceparent`` the producer put in the job's metadata: the job span is that
        trace's child)."""
        span_context = self._spans.get(result.job_id)
        if span_context is None:
            return result
        carrier: dict[str, str] = {}
        self._propagator.inject(
            carrier, trace.set_span_in_context(trace.NonRecordingSpan(span_context))
        )
        return result._replace(metadata={**result.metadata, **carrier})

    def close(self) -> None:
        self._sink.close()

    def __getattr__(self, name: str) -> object:
        # The rest of the wrapped sink's surface (a gRPC sink's ping) is its own.
        if name.startswith("_"):
            raise AttributeError(name)
        return getattr(self._sink, name)

    @contextmanager
    def _call_span(self, name: str, results: Sequence[JobResult]) -> Iterator[None]:
        parents = [self._spans.get(result.job_id) for result in results]
        known = [span_context for span_context in parents if span_context is not None]
        parent = (
            trace.set_span_in_context(trace.NonRecordingSpan(known[0]), context.Context())
            if known
            else context.Context()
        )
        links = [Link(span_context) for span_context in known[1:]]
        attributes: dict[str, str | int] = {"jobworker.results": len(results)}
        if len(results) == 1:
            attributes["messaging.message.id"] = results[0].job_id
        span = self._tracer.start_span(
            name, context=parent, kind=SpanKind.INTERNAL, links=links, attributes=attributes
        )
        ids = span.get_span_context()
        with (
            trace.use_span(span, end_on_exit=True),
            structlog.contextvars.bound_contextvars(
                trace_id=format(ids.trace_id, "032x"), span_id=format(ids.span_id, "016x")
            ),
        ):
            yield
