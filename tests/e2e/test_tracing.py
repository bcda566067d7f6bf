"""Tracing end to end: a producer's span on each Kafka record, the worker CLI exporting
to a real OTLP TraceService on loopback, a real Core that records each call's metadata,
and an HTTP job target that records the headers it gets.

The chain that must hold for every traced job: producer span -> job span (CONSUMER) ->
the call-to-Core span -> the grpc CLIENT span, whose context Core receives as
``traceparent``. With batched results one call carries several jobs: the call span is
a child of the first job's span and links to the others'.
"""

from __future__ import annotations

import json
import threading
from collections import defaultdict
from collections.abc import Iterator
from concurrent import futures
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import grpc
from kafka import KafkaProducer
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from opentelemetry.proto.trace.v1 import trace_pb2
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.trace import SpanKind
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from jobworker.adapters.codec import task_from_job
from jobworker.adapters.core.server import CoreServicer
from jobworker.adapters.core.store import ResultStore
from jobworker.adapters.proto.jobworker.v1 import jobworker_pb2 as pb
from jobworker.domain.model import Job
from tests.support.e2e import core_in_this_process, tally, worker_settings
from tests.support.fixtures import StartWorker
from tests.support.kafka import create_topic, unique_name
from tests.support.processes import events_named, log_events, wait_while_running

RESULTS_TIMEOUT_S = 90


@dataclass(frozen=True)
class ReceivedSpan:
    name: str
    kind: int
    trace_id: str
    span_id: str
    parent_span_id: str
    links: tuple[str, ...]
    service: str


class TraceReceiver(trace_service_pb2_grpc.TraceServiceServicer):
    """An OTLP/gRPC trace endpoint that keeps every span it is sent."""

    def __init__(self) -> None:
        self.spans: list[ReceivedSpan] = []
        self._lock = threading.Lock()

    def Export(  # noqa: N802 - the RPC's name
        self, request: trace_service_pb2.ExportTraceServiceRequest, context: grpc.ServicerContext
    ) -> trace_service_pb2.ExportTraceServiceResponse:
        received = []
        for resource_spans in request.resource_spans:
            attributes = {a.key: a.value.string_value for a in resource_spans.resource.attributes}
            for scope_spans in resource_spans.scope_spans:
                received += [
                    ReceivedSpan(
                        name=span.name,
                        kind=span.kind,
                        trace_id=span.trace_id.hex(),
                        span_id=span.span_id.hex(),
                        parent_span_id=span.parent_span_id.hex(),
                        links=tuple(link.span_id.hex() for link in span.links),
                        service=attributes.get("service.name", ""),
                    )
                    for span in scope_spans.spans
                ]
        with self._lock:
            self.spans += received
        return trace_service_pb2.ExportTraceServiceResponse()


@contextmanager
def otlp_receiver() -> Iterator[tuple[str, TraceReceiver]]:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    receiver = TraceReceiver()
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(receiver, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield f"http://127.0.0.1:{port}", receiver
    finally:
        server.stop(grace=None).wait()


class MetadataRecordingCore(CoreServicer):
    """The reference Core, which also keeps each call's metadata by the job ids it carried."""

    def __init__(self, store: ResultStore) -> None:
        super().__init__(store)
        self.metadata: dict[str, list[dict[str, str]]] = defaultdict(list)
        # Each result's own metadata, by job id.
        self.result_metadata: dict[str, dict[str, str]] = {}

    def _record(self, results: list[pb.JobResult], context: grpc.ServicerContext) -> None:
        metadata = {item.key: str(item.value) for item in context.invocation_metadata()}
        for result in results:
            self.metadata[result.job_id].append(metadata)
            self.result_metadata[result.job_id] = dict(result.metadata)

    def ReportResult(  # noqa: N802
        self, request: pb.ReportResultRequest, context: grpc.ServicerContext
    ) -> pb.ReportResultResponse:
        self._record([request.result], context)
        return super().ReportResult(request, context)

    def ReportResults(  # noqa: N802
        self, request: pb.ReportResultsRequest, context: grpc.ServicerContext
    ) -> pb.ReportResultsResponse:
        self._record(list(request.results), context)
        return super().ReportResults(request, context)


class HeaderRecordingServer(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _RecordingHandler)
        self.headers_seen: list[dict[str, str]] = []


class _RecordingHandler(BaseHTTPRequestHandler):
    server: HeaderRecordingServer

    def do_GET(self) -> None:
        self.server.headers_seen.append({k.lower(): v for k, v in self.headers.items()})
        body = b'{"ok": true}'
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        pass


@contextmanager
def http_target() -> Iterator[HeaderRecordingServer]:
    server = HeaderRecordingServer()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


def produce_traced(
    servers: str, topic: str, endpoint: str, jobs: list[Job], malformed: set[str]
) -> dict[str, tuple[str, str]]:
    """Publish ``jobs``, each under a producer span of its own exported to ``endpoint``
    (a job in ``malformed`` gets a broken traceparent instead). Returns each traced
    job's producer (trace id, span id)."""
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(OTLPSpanExporter(endpoint=endpoint)))
    tracer = provider.get_tracer("test-producer")
    producer = KafkaProducer(bootstrap_servers=servers, acks="all")
    producers: dict[str, tuple[str, str]] = {}
    try:
        for job in jobs:
            value = task_from_job(job).SerializeToString()
            if job.id in malformed:
                headers = [("traceparent", b"00-not-a-trace-id-01"), ("tracestate", b"a=b")]
                producer.send(topic, key=job.id.encode(), value=value, headers=headers)
                continue
            with tracer.start_as_current_span("publish job", kind=SpanKind.PRODUCER) as span:
                carrier: dict[str, str] = {}
                TraceContextTextMapPropagator().inject(carrier)
                headers = [(name, text.encode()) for name, text in carrier.items()]
                producer.send(topic, key=job.id.encode(), value=value, headers=headers)
                ids = span.get_span_context()
                producers[job.id] = (format(ids.trace_id, "032x"), format(ids.span_id, "016x"))
        producer.flush(timeout=60)
    finally:
        producer.close()
        provider.shutdown()
    return producers


def test_a_trace_runs_from_the_producer_through_the_job_to_core_and_the_http_target(
    kafka_servers: str, start_worker: StartWorker, tmp_path: Path
) -> None:
    with otlp_receiver() as (endpoint, receiver), http_target() as target:
        url = f"http://127.0.0.1:{target.server_address[1]}/hook"
        jobs = [
            *(Job(f"sleep-{n}", "SLEEP", json.dumps({"ms": 5})) for n in range(6)),
            Job("http-1", "HTTP", json.dumps({"method": "GET", "url": url})),
            Job("unknown-1", "TYPE_99"),  # rejected before any attempt: still traced
            Job("malformed-1", "SLEEP", json.dumps({"ms": 5})),
            Job("malformed-2", "SLEEP", json.dumps({"ms": 5})),
        ]
        malformed = {"malformed-1", "malformed-2"}
        topic = create_topic(kafka_servers, partitions=2)
        producers = produce_traced(kafka_servers, topic, endpoint, jobs, malformed)
        job_ids = [job.id for job in jobs]

        with core_in_this_process(tmp_path / "core.db", MetadataRecordingCore) as (address, core):
            settings = worker_settings(
                kafka_servers,
                topic,
                unique_name("group"),
                address,
                HTTP_ALLOW_PRIVATE_NETWORKS="true",
                OTEL_EXPORTER_OTLP_ENDPOINT=endpoint,
                OTEL_SERVICE_NAME="jobworker-e2e",
                OTEL_BSP_SCHEDULE_DELAY="100",
            )
            worker = start_worker("worker-1", settings)
            assert wait_while_running(
                lambda: len(tally(tmp_path / "core.db", job_ids).received) == len(jobs),
                RESULTS_TIMEOUT_S,
                worker,
            ), f"in Core: {sorted(tally(tmp_path / 'core.db', job_ids).received)}"
            # The spans still buffered are exported at shutdown.
            assert worker.stop(60) == 0

    spans = receiver.spans
    by_id = {span.span_id: span for span in spans}
    job_spans = {
        span.span_id: span
        for span in spans
        if span.name.startswith("job ") and span.service == "jobworker-e2e"
    }
    assert {span.kind for span in job_spans.values()} == {trace_pb2.Span.SPAN_KIND_CONSUMER}

    for job_id, (trace_id, producer_span) in producers.items():
        # The producer's span reached the receiver too: one trace, three services' view.
        assert by_id[producer_span].name == "publish job"
        [job_span] = [s for s in job_spans.values() if s.parent_span_id == producer_span]
        assert job_span.trace_id == trace_id, job_id
        # The call to Core: a child of this job's span, or linked to it in a batch.
        [call] = [
            s
            for s in spans
            if s.name.startswith("report result")
            and (s.parent_span_id == job_span.span_id or job_span.span_id in s.links)
        ]
        [rpc] = [s for s in spans if s.parent_span_id == call.span_id]
        assert rpc.name.startswith("/jobworker.v1.CoreService/ReportResult")
        assert rpc.kind == trace_pb2.Span.SPAN_KIND_CLIENT
        assert rpc.trace_id == call.trace_id
        # Core got the RPC span's context in the call's metadata.
        # (Its flags say sampled, and may say the trace id is random: W3C level 2.)
        contexts = [m["traceparent"].split("-")[1:3] for m in core.metadata[job_id]]
        assert [rpc.trace_id, rpc.span_id] in contexts, job_id
        # And the job's own span context in its result, whichever job the call was for.
        carried = core.result_metadata[job_id]["traceparent"].split("-")[1:3]
        assert carried == [job_span.trace_id, job_span.span_id], job_id

    # Every call's span is a child of its (first) job's span, in that job's trace.
    calls = [s for s in spans if s.name.startswith("report result")]
    for call in calls:
        parent = job_spans[call.parent_span_id]
        assert parent.trace_id == call.trace_id
        if parent.parent_span_id:  # not a job with a malformed traceparent
            assert by_id[parent.parent_span_id].trace_id == call.trace_id

    # The HTTP job's request carried its job span's trace, through a CLIENT span under it.
    [seen] = target.headers_seen
    http_trace, http_producer = producers["http-1"]
    _, trace_id, http_client_span, _ = seen["traceparent"].split("-")
    assert trace_id == http_trace
    http_job_span = next(s for s in job_spans.values() if s.parent_span_id == http_producer)
    assert by_id[http_client_span].parent_span_id == http_job_span.span_id
    assert by_id[http_client_span].kind == trace_pb2.Span.SPAN_KIND_CLIENT

    # A malformed traceparent: the job ran as the root of a trace of its own; one warning.
    producer_traces = {trace_id for trace_id, _ in producers.values()}
    roots = [s for s in job_spans.values() if not s.parent_span_id]
    assert len(roots) == 2
    assert not {s.trace_id for s in roots} & producer_traces
    warnings = events_named(worker, "malformed traceparent")
    assert len(warnings) == 1, warnings

    # Every line the worker logged about a traced job carries that job's span ids.
    job_of_span = {(s.trace_id, s.span_id): s for s in job_spans.values() if s.parent_span_id}
    finished = [e for e in log_events(worker) if e.get("event") == "job finished"]
    assert len(finished) == len(jobs)
    for event in finished:
        assert (event["trace_id"], event["span_id"]) in job_of_span or event["job_id"] in malformed
