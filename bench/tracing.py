"""What tracing costs per job, measured as ratios in one run (``python bench/tracing.py``).

Off, the worker adds no observer and no sink wrapper: the only work left per job is
picking trace headers off each Kafka record, timed here on its own. On, each job gets a
span (child of its record's traceparent) and each call to the sink a span; the spans go
through the SDK's batch processor to an exporter that drops them, so the figure is the
worker's side of the cost, not a collector's.
"""

# ruff: noqa: E402 - gevent must patch the standard library before anything else loads
from gevent import monkey

monkey.patch_all()

import sys
import time
from collections.abc import Sequence
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult

from bench.run import best_time, engine_config, run_until_drained
from bench.workloads import ReturnOkExecutor
from jobworker.adapters.memory import InMemoryJobSource, InMemoryResultSink
from jobworker.adapters.observability.job_trace import JobSpans, TracingJobObserver
from jobworker.adapters.tracing.headers import trace_headers
from jobworker.adapters.tracing.sink import TracedResultSink
from jobworker.application.engine import WorkerEngine
from jobworker.application.registry import ExecutorRegistry
from jobworker.domain.model import Job

JOBS = 20_000
POOL = 50
TRACEPARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
HEADER_CALLS = 200_000


class DroppingExporter(SpanExporter):
    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        return SpanExportResult.SUCCESS


def engine_seconds(traced: bool) -> float:
    headers = {"traceparent": TRACEPARENT} if traced else {}
    jobs = [Job(id=f"job-{n}", type="NOOP", trace_headers=headers) for n in range(JOBS)]
    provider = TracerProvider()
    provider.add_span_processor(BatchSpanProcessor(DroppingExporter()))
    tracer = provider.get_tracer("bench")

    def run() -> None:
        inner = InMemoryResultSink()
        spans = JobSpans()
        sink = TracedResultSink(inner, tracer, spans) if traced else inner
        observers = [TracingJobObserver(tracer, spans)] if traced else []
        engine = WorkerEngine(
            InMemoryJobSource(jobs),
            sink,
            ExecutorRegistry({"NOOP": ReturnOkExecutor()}),
            engine_config(POOL),
            observers=observers,
        )
        run_until_drained(engine, JOBS, lambda: len(inner.results))

    try:
        return best_time(run)
    finally:
        provider.shutdown()


def header_us(headers: list[tuple[str, bytes]]) -> float:
    started = time.perf_counter()
    for _ in range(HEADER_CALLS):
        trace_headers(headers)
    return (time.perf_counter() - started) / HEADER_CALLS * 1e6


def main() -> int:
    print(f"Tracing cost: {JOBS:,} no-op jobs, pool {POOL}, in-memory source and sink")
    off = engine_seconds(traced=False)
    on = engine_seconds(traced=True)
    print(f"   tracing off (no observer, no wrapper)   {JOBS / off:>10,.0f} jobs/s")
    print(f"   tracing on, every job with a parent      {JOBS / on:>10,.0f} jobs/s")
    print(
        f"   on takes {on / off:.2f}x the time of off: "
        f"{(on - off) / JOBS * 1e6:.1f} µs per job for two spans"
    )
    print("Trace headers picked per Kafka record (runs with tracing on or off):")
    print(f"   record without headers                   {header_us([]):>8.3f} µs")
    with_headers = [("traceparent", TRACEPARENT.encode()), ("tenant", b"acme")]
    print(f"   record with traceparent and one more     {header_us(with_headers):>8.3f} µs")
    return 0


if __name__ == "__main__":
    sys.exit(main())
