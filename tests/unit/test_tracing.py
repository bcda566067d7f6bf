"""Tracing without a network: when it turns on, the job span and its parent, the ids on
log lines, the call-to-Core span of a batch, and what a malformed traceparent costs."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Sequence

import gevent
import gevent.event
import pytest
import structlog
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode
from structlog.testing import capture_logs

from jobworker.adapters.observability.job_trace import JobSpans, TracingJobObserver
from jobworker.adapters.tracing.headers import trace_headers
from jobworker.adapters.tracing.setup import tracing_plan
from jobworker.adapters.tracing.sink import TracedResultSink
from jobworker.domain.errors import BatchesUnsupported, ConfigurationError, ResultRefused
from jobworker.domain.model import Job, JobResult, JobStatus

PRODUCER_TRACE = "0af7651916cd43dd8448eb211c80319c"
PRODUCER_SPAN = "b7ad6b7169203331"
TRACEPARENT = f"00-{PRODUCER_TRACE}-{PRODUCER_SPAN}-01"


class Clock:
    def __init__(self) -> None:
        self.now = 1_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def exported() -> InMemorySpanExporter:
    return InMemorySpanExporter()


@pytest.fixture
def tracer(exported: InMemorySpanExporter) -> trace.Tracer:
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exported))
    return provider.get_tracer("test")


def traced_job(job_id: str = "j-1", traceparent: str = TRACEPARENT, **extra: str) -> Job:
    return Job(job_id, "SLEEP", trace_headers={"traceparent": traceparent, **extra})


def result(job: Job, status: JobStatus = JobStatus.SUCCEEDED, error: str = "") -> JobResult:
    return JobResult(job.id, job.type, status, error=error, attempts=1)


def hex_ids(span: ReadableSpan | trace.Span) -> tuple[str, str]:
    ids = span.get_span_context()
    assert ids is not None
    return format(ids.trace_id, "032x"), format(ids.span_id, "016x")


# --- which variables turn tracing on -------------------------------------------------


def test_tracing_is_off_without_otel_variables() -> None:
    assert tracing_plan({}) is None
    assert tracing_plan({"OTEL_SERVICE_NAME": "x", "OTEL_TRACES_SAMPLER": "always_on"}) is None


def test_an_otlp_endpoint_or_an_exporter_turns_tracing_on() -> None:
    endpoint = {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4317"}
    assert tracing_plan(endpoint).exporters == ("otlp_proto_grpc",)  # type: ignore[union-attr]
    traces_endpoint = {"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://collector:4317"}
    assert tracing_plan(traces_endpoint).exporters == ("otlp_proto_grpc",)  # type: ignore[union-attr]
    console = {"OTEL_TRACES_EXPORTER": "console,otlp"}
    assert tracing_plan(console).exporters == ("console", "otlp_proto_grpc")  # type: ignore[union-attr]


def test_sdk_disabled_or_exporter_none_keeps_tracing_off() -> None:
    endpoint = {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4317"}
    assert tracing_plan(endpoint | {"OTEL_SDK_DISABLED": "true"}) is None
    assert tracing_plan(endpoint | {"OTEL_TRACES_EXPORTER": "none"}) is None


@pytest.mark.parametrize(
    ("environ", "variable"),
    [
        ({"OTEL_TRACES_EXPORTER": "jaeger"}, "OTEL_TRACES_EXPORTER"),
        (
            {"OTEL_TRACES_EXPORTER": "otlp", "OTEL_TRACES_SAMPLER": "sometimes"},
            "OTEL_TRACES_SAMPLER",
        ),
        (
            {
                "OTEL_TRACES_EXPORTER": "otlp",
                "OTEL_TRACES_SAMPLER": "parentbased_traceidratio",
                "OTEL_TRACES_SAMPLER_ARG": "1.5",
            },
            "OTEL_TRACES_SAMPLER_ARG",
        ),
        (
            {"OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf"},
            "OTEL_EXPORTER_OTLP_PROTOCOL",
        ),
    ],
)
def test_a_malformed_variable_is_named(environ: dict[str, str], variable: str) -> None:
    with pytest.raises(ConfigurationError) as raised:
        tracing_plan(environ)
    assert raised.value.variable == variable


def test_with_tracing_off_the_worker_never_loads_opentelemetry() -> None:
    code = (
        "import sys\n"
        "from adapters.tracing.setup import start_tracing\n"
        "import entrypoints.container\n"
        "assert start_tracing('w', '1', {}) is None\n"
        "loaded = [m for m in sys.modules if m.startswith('opentelemetry')]\n"
        "assert not loaded, loaded\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


# --- trace headers from Kafka records ------------------------------------------------


def test_trace_headers_are_picked_from_record_headers() -> None:
    assert trace_headers(None) == {}
    assert trace_headers([]) == {}
    headers = [("TraceParent", TRACEPARENT.encode()), ("tracestate", b"a=1"), ("tenant", b"t")]
    assert trace_headers(headers) == {"traceparent": TRACEPARENT, "tracestate": "a=1"}


def test_an_undecodable_or_huge_trace_header_is_kept_mended_for_the_observer_to_refuse() -> None:
    headers = trace_headers([("traceparent", b"\xff" * 20_000)])
    assert 0 < len(headers["traceparent"]) <= 8_192


# --- the job span --------------------------------------------------------------------


def test_the_job_span_continues_the_producers_trace_and_is_current_while_the_job_runs(
    tracer: trace.Tracer, exported: InMemorySpanExporter
) -> None:
    spans = JobSpans()
    observer = TracingJobObserver(tracer, spans)
    job = traced_job(tracestate="vendor=1")
    seen: dict[str, object] = {}

    def run() -> None:
        observer.job_started(job, 1)
        seen["current"] = hex_ids(trace.get_current_span())
        seen["log_fields"] = structlog.contextvars.get_contextvars()
        observer.job_retrying(job, 1, "HTTP 503", 0.1)
        observer.job_started(job, 2)
        observer.job_finished(job, result(job, JobStatus.FAILED, "HTTP 500"))
        seen["after"] = trace.get_current_span().get_span_context().is_valid

    gevent.spawn(run).get()
    [span] = exported.get_finished_spans()
    assert span.kind is SpanKind.CONSUMER
    assert span.name == "job SLEEP"
    assert span.parent is not None
    assert format(span.parent.span_id, "016x") == PRODUCER_SPAN
    assert hex_ids(span)[0] == PRODUCER_TRACE
    assert span.context.trace_state.get("vendor") == "1"
    assert seen["current"] == hex_ids(span)
    assert seen["log_fields"] == {"trace_id": hex_ids(span)[0], "span_id": hex_ids(span)[1]}
    assert seen["after"] is False, "the span is no longer current once the job is done"
    assert span.status.status_code is StatusCode.ERROR
    assert span.attributes is not None
    assert span.attributes["jobworker.job.status"] == "FAILED"
    assert [event.name for event in span.events] == ["attempt failed", "attempt started"]
    assert spans.get("j-1") == span.context


def test_a_job_retried_in_another_greenlet_keeps_one_span_and_leaves_its_slot_clean(
    tracer: trace.Tracer, exported: InMemorySpanExporter
) -> None:
    # A job waiting for its next attempt holds no slot: attempt 1 runs in one slot
    # greenlet, which runs another job meanwhile, and attempt 2 in another greenlet.
    observer = TracingJobObserver(tracer, JobSpans())
    retried, other = traced_job("r"), Job("o", "SLEEP")
    seen: dict[str, object] = {}

    def first_slot() -> None:
        observer.job_started(retried, 1)
        observer.job_retrying(retried, 1, "HTTP 503", 1.0)
        seen["after_leaving"] = trace.get_current_span().get_span_context().is_valid
        observer.job_started(other, 1)
        seen["other_current"] = hex_ids(trace.get_current_span())
        observer.job_finished(other, result(other))

    def second_slot() -> None:
        observer.job_started(retried, 2)
        seen["retried_current"] = hex_ids(trace.get_current_span())
        observer.job_finished(retried, result(retried))

    gevent.spawn(first_slot).get()
    gevent.spawn(second_slot).get()
    by_job = {
        span.attributes["messaging.message.id"]: span for span in exported.get_finished_spans()
    }  # type: ignore[index]
    assert sorted(by_job) == ["o", "r"], "one span per job, each ended"
    assert seen["after_leaving"] is False, "a job waiting for its next attempt is current nowhere"
    assert by_job["o"].parent is None, "the next job in the slot is not a child of the first"
    assert seen["other_current"] == hex_ids(by_job["o"])
    assert seen["retried_current"] == hex_ids(by_job["r"])
    assert [event.name for event in by_job["r"].events] == ["attempt failed", "attempt started"]


def test_concurrent_jobs_each_have_their_own_current_span(
    tracer: trace.Tracer, exported: InMemorySpanExporter
) -> None:
    observer = TracingJobObserver(tracer, JobSpans())
    current: dict[str, tuple[str, str]] = {}
    started: list[str] = []
    both_started = gevent.event.Event()

    def run(job: Job) -> None:
        observer.job_started(job, 1)
        started.append(job.id)
        if len(started) == 2:
            both_started.set()
        assert both_started.wait(5), "the other job never started"
        current[job.id] = hex_ids(trace.get_current_span())
        observer.job_finished(job, result(job))

    jobs = [traced_job("a"), Job("b", "SLEEP")]
    gevent.joinall([gevent.spawn(run, job) for job in jobs], raise_error=True)
    by_job = {
        span.attributes["messaging.message.id"]: span for span in exported.get_finished_spans()
    }  # type: ignore[index]
    assert current == {job_id: hex_ids(span) for job_id, span in by_job.items()}
    assert by_job["b"].parent is None, "a job without trace headers starts a trace"


def test_a_job_refused_before_any_attempt_still_gets_its_span(
    tracer: trace.Tracer, exported: InMemorySpanExporter
) -> None:
    observer = TracingJobObserver(tracer, JobSpans())
    job = traced_job()
    gevent.spawn(observer.job_finished, job, result(job, JobStatus.REJECTED, "unknown")).get()
    [span] = exported.get_finished_spans()
    assert span.parent is not None
    assert format(span.parent.span_id, "016x") == PRODUCER_SPAN


def test_a_malformed_traceparent_costs_the_parent_and_one_warning_a_minute(
    tracer: trace.Tracer, exported: InMemorySpanExporter
) -> None:
    clock = Clock()
    observer = TracingJobObserver(tracer, JobSpans(), clock=clock)

    def run(job: Job) -> None:
        observer.job_started(job, 1)
        observer.job_finished(job, result(job))

    with capture_logs() as logs:
        for n in range(3):
            gevent.spawn(run, traced_job(f"bad-{n}", "00-zzzz-01")).get()
            clock.now += 10
        clock.now += 60
        gevent.spawn(run, traced_job("bad-3", "not even close")).get()
    warnings = [line for line in logs if line["event"].startswith("malformed traceparent")]
    assert [(w["job_id"], w["not_logged_since_last"]) for w in warnings] == [
        ("bad-0", 0),
        ("bad-3", 2),
    ]
    finished = exported.get_finished_spans()
    assert len(finished) == 4
    assert all(span.parent is None for span in finished)


# --- the call to Core ----------------------------------------------------------------


class RecordingSink:
    def __init__(self, fail: Exception | None = None) -> None:
        self.fail = fail
        self.current: list[tuple[str, str]] = []
        self.sent: list[Sequence[JobResult]] = []

    def send(self, result: JobResult) -> None:
        self.send_batch([result])

    def send_batch(self, results: Sequence[JobResult]) -> None:
        self.current.append(hex_ids(trace.get_current_span()))
        if self.fail is not None:
            raise self.fail
        self.sent.append(results)

    def close(self) -> None:
        pass


class OneAtATimeSink:
    def send(self, result: JobResult) -> None:
        pass

    def close(self) -> None:
        pass


def finished_jobs(observer: TracingJobObserver, jobs: Sequence[Job]) -> None:
    for job in jobs:
        gevent.spawn(observer.job_finished, job, result(job)).get()


def test_a_batch_call_is_a_child_of_the_first_jobs_span_and_links_the_others(
    tracer: trace.Tracer, exported: InMemorySpanExporter
) -> None:
    spans = JobSpans()
    observer = TracingJobObserver(tracer, spans)
    jobs = [traced_job(f"j-{n}") for n in range(3)]
    finished_jobs(observer, jobs)
    inner = RecordingSink()
    TracedResultSink(inner, tracer, spans).send_batch([result(job) for job in jobs])

    job_spans = {
        span.attributes["messaging.message.id"]: span
        for span in exported.get_finished_spans()
        if span.name.startswith("job")
    }  # type: ignore[index]
    [call] = [span for span in exported.get_finished_spans() if span.name == "report results"]
    assert call.parent is not None
    assert call.parent.span_id == job_spans["j-0"].context.span_id
    assert [link.context.span_id for link in call.links] == [
        job_spans["j-1"].context.span_id,
        job_spans["j-2"].context.span_id,
    ]
    assert inner.current == [hex_ids(call)], "the call span is current inside the sink"


def test_each_result_carries_its_job_spans_context_in_its_metadata(
    tracer: trace.Tracer, exported: InMemorySpanExporter
) -> None:
    # One call carries one traceparent (the first job's): a Core that continues each
    # job's trace reads it from the result instead.
    spans = JobSpans()
    observer = TracingJobObserver(tracer, spans)
    jobs = [traced_job(f"j-{n}", tracestate="vendor=1") for n in range(3)]
    finished_jobs(observer, jobs)
    untraced = Job("plain", "SLEEP")
    inner = RecordingSink()
    results = [result(job) for job in jobs] + [result(untraced)]
    TracedResultSink(inner, tracer, spans).send_batch(results)

    job_spans = {
        span.attributes["messaging.message.id"]: span
        for span in exported.get_finished_spans()
        if span.name.startswith("job")
    }  # type: ignore[index]
    [sent] = inner.sent
    for job, carried in zip(jobs, sent[:3], strict=True):
        trace_id, span_id = hex_ids(job_spans[job.id])
        assert carried.metadata["traceparent"] == f"00-{trace_id}-{span_id}-01"
        assert carried.metadata["tracestate"] == "vendor=1"
    assert "traceparent" not in sent[3].metadata, "a job without a span gets none"


def test_a_refused_call_ends_its_span_as_an_error_and_raises(
    tracer: trace.Tracer, exported: InMemorySpanExporter
) -> None:
    spans = JobSpans()
    observer = TracingJobObserver(tracer, spans)
    job = traced_job()
    finished_jobs(observer, [job])
    sink = TracedResultSink(
        RecordingSink(ResultRefused("no", "INVALID_ARGUMENT", "no")), tracer, spans
    )
    with pytest.raises(ResultRefused):
        sink.send(result(job))
    [call] = [span for span in exported.get_finished_spans() if span.name == "report result"]
    assert call.status.status_code is StatusCode.ERROR
    assert hex_ids(call)[0] == PRODUCER_TRACE


def test_a_sink_without_batches_says_so_through_the_wrapper(tracer: trace.Tracer) -> None:
    sink = TracedResultSink(OneAtATimeSink(), tracer, JobSpans())
    with pytest.raises(BatchesUnsupported):
        sink.send_batch([result(Job("j", "SLEEP"))])


def test_delivered_results_are_forgotten_and_the_kept_spans_are_bounded(
    tracer: trace.Tracer,
) -> None:
    spans = JobSpans(capacity=2)
    observer = TracingJobObserver(tracer, spans)
    jobs = [Job(f"j-{n}", "SLEEP") for n in range(3)]
    finished_jobs(observer, jobs)
    assert len(spans) == 2
    assert spans.get("j-0") is None, "the oldest went first"
    observer.result_delivered(result(jobs[2]))
    assert spans.get("j-2") is None
