"""Tracing once it is on: the SDK's provider and exporters, and the instrumentations.

Only ``jobworker.adapters.tracing.setup.start_tracing`` imports this module, and only when the
``OTEL_*`` variables ask for tracing.
"""

from __future__ import annotations

from collections.abc import Sequence
from importlib.metadata import entry_points

import structlog
from opentelemetry import trace
from opentelemetry.instrumentation.grpc import GrpcAioInstrumentorClient, GrpcInstrumentorClient
from opentelemetry.instrumentation.requests import RequestsInstrumentor
from opentelemetry.sdk.resources import (
    SERVICE_INSTANCE_ID,
    SERVICE_NAME,
    OTELResourceDetector,
    Resource,
)
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter

from jobworker.adapters.observability.job_trace import JobSpans, TracingJobObserver
from jobworker.adapters.tracing.sink import TracedResultSink
from jobworker.domain.ports import ResultSink

INSTRUMENTATION_NAME = "jobworker"
Instrumentor = GrpcInstrumentorClient | GrpcAioInstrumentorClient | RequestsInstrumentor

log = structlog.get_logger("jobworker.tracing")


class Tracing:
    """The tracer provider with its exporters, and what the worker wires from it."""

    def __init__(
        self,
        provider: TracerProvider,
        instrumentors: Sequence[Instrumentor] = (),
        version: str = "",
    ) -> None:
        self.provider = provider
        self.tracer = provider.get_tracer(INSTRUMENTATION_NAME, version)
        # The job spans the result sink parents its calls on, by job id.
        self.spans = JobSpans()
        self._instrumentors = list(instrumentors)
        self._closed = False

    @classmethod
    def start(
        cls, exporters: Sequence[str], worker_id: str, version: str, default_service: str
    ) -> Tracing:
        """Set up the SDK from the environment and install it process-wide.

        The exporters are made before the grpc instrumentation is installed, so the
        OTLP exporter's own channel is never traced (its calls are also suppressed by
        the SDK while it exports).
        """
        resource = _resource(worker_id, version, default_service)
        provider = TracerProvider(resource=resource)
        for exporter in _exporters(exporters):
            provider.add_span_processor(BatchSpanProcessor(exporter))
        # Global, because the grpc and requests instrumentations use the global provider.
        trace.set_tracer_provider(provider)
        instrumentors: list[Instrumentor] = [
            GrpcInstrumentorClient(),  # type: ignore[no-untyped-call]  # untyped upstream
            # The unary calls to a Core without ReportResults go through grpc.aio.
            GrpcAioInstrumentorClient(),  # type: ignore[no-untyped-call]  # untyped upstream
            RequestsInstrumentor(),
        ]
        for instrumentor in instrumentors:
            instrumentor.instrument(tracer_provider=provider)
        log.info(
            "tracing on",
            exporters=list(exporters),
            service_name=resource.attributes.get(SERVICE_NAME),
            sampler=provider.sampler.get_description(),
        )
        return cls(provider, instrumentors, version)

    def observer(self) -> TracingJobObserver:
        return TracingJobObserver(self.tracer, self.spans)

    def traced_sink(self, sink: ResultSink) -> TracedResultSink:
        return TracedResultSink(sink, self.tracer, self.spans)

    def close(self) -> None:
        """Export the spans still buffered, then stop. Idempotent."""
        if self._closed:
            return
        self._closed = True
        for instrumentor in self._instrumentors:
            instrumentor.uninstrument()
        self.provider.shutdown()


def _resource(worker_id: str, version: str, default_service: str) -> Resource:
    """``OTEL_SERVICE_NAME`` and ``OTEL_RESOURCE_ATTRIBUTES`` win; ours fill the gaps.

    ``service.instance.id`` is ``WORKER_ID`` unless ``OTEL_RESOURCE_ATTRIBUTES`` names
    one: the SDK's own detector always sets a random one, so "fill what is missing"
    would never put ours in.
    """
    explicit = OTELResourceDetector().detect().attributes
    ours = {"service.version": version, SERVICE_INSTANCE_ID: worker_id}
    # Resource.create's attributes win over every detector: give only those not set
    # explicitly by the operator.
    resource = Resource.create(
        {key: value for key, value in ours.items() if value and key not in explicit}
    )
    if str(resource.attributes.get(SERVICE_NAME, "")).startswith("unknown_service"):
        resource = resource.merge(Resource({SERVICE_NAME: default_service}))
    return resource


def _exporters(names: Sequence[str]) -> list[SpanExporter]:
    points = {point.name: point for point in entry_points(group="opentelemetry_traces_exporter")}
    return [points[name].load()() for name in names]
