"""Prometheus metrics: a JobObserver for per-job counters, a collector for live gauges.

Counters of events (jobs, retries, results) are pushed by the observer as they
happen; values that are state (queue depths, in-flight jobs, consumer lag, commits,
DLQ records) are read from their owners at scrape time, so nothing can drift.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterator, Mapping
from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError, version

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.gc_collector import GCCollector
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector

from domain.model import Job, JobResult

# What ``labels()`` returns: the metric itself, bound to one set of label values.
CounterChild = Counter
HistogramChild = Histogram

DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
UNKNOWN_TYPE = "unknown"
DISTRIBUTION = "jobworker"


def new_registry() -> CollectorRegistry:
    """The worker's registry: its own metrics, the process/platform/GC collectors, build info.

    Also turns off the ``*_created`` series (one per counter and histogram child, which
    doubled the series count and which no dashboard reads). prometheus_client's switch
    is process-wide and read when a scrape renders samples; it is flipped here, when the
    registry is built (before any metric exists or is scraped), not at import.
    """
    disable_created_metrics()  # type: ignore[no-untyped-call]
    registry = CollectorRegistry()
    # New instances of the collectors prometheus_client puts on its global registry,
    # which is not the one served: process_* (RSS, CPU, fds), python_info, python_gc_*.
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    GCCollector(registry=registry)
    Gauge(
        "jobworker_build_info",
        "Always 1; the installed jobworker version is its label.",
        ["version"],
        registry=registry,
    ).labels(installed_version()).set(1)
    return registry


def installed_version() -> str:
    try:
        return version(DISTRIBUTION)
    except PackageNotFoundError:  # run from a source tree that was never installed
        return "unknown"


class PrometheusJobObserver:
    """Counts jobs by type and status and times them.

    The ``type`` label takes only the types an executor is registered for, and
    ``unknown`` for every other: the type comes from producers (``TYPE_<n>`` from Kafka,
    any string from a file), and a label value per stranger would be a series per
    stranger, unbounded.
    """

    def __init__(self, registry: CollectorRegistry, job_types: Collection[str]) -> None:
        self._known_types = frozenset(job_types)
        self.consumed = Counter(
            "jobworker_jobs_consumed", "Jobs taken from the source.", ["type"], registry=registry
        )
        self.finished = Counter(
            "jobworker_jobs_finished",
            "Jobs that ended, by how they ended.",
            ["type", "status"],
            registry=registry,
        )
        self.retries = Counter(
            "jobworker_job_retries",
            "Job attempts retried after a retryable error.",
            ["type"],
            registry=registry,
        )
        self.duration = Histogram(
            "jobworker_job_duration_seconds",
            "Job run time, retries included, from first attempt to result.",
            ["type", "status"],
            buckets=DURATION_BUCKETS,
            registry=registry,
        )
        self.delivered = Counter(
            "jobworker_results_delivered",
            "Results the sink (Core) accepted.",
            ["status"],
            registry=registry,
        )

        # ``labels()`` costs more than the update itself (it validates and looks up the
        # label values under a lock): each child is looked up once, then kept here.
        self._consumed: dict[str, CounterChild] = {}
        self._retries: dict[str, CounterChild] = {}
        self._finished: dict[tuple[str, str], tuple[CounterChild, HistogramChild]] = {}
        self._delivered: dict[str, CounterChild] = {}

    def job_received(self, job: Job) -> None:
        job_type = self._label(job.type)
        child = self._consumed.get(job_type)
        if child is None:
            child = self._consumed[job_type] = self.consumed.labels(job_type)
        child.inc()

    def job_started(self, job: Job, attempt: int) -> None:
        pass

    def job_retrying(self, job: Job, attempt: int, error: str, delay_s: float) -> None:
        job_type = self._label(job.type)
        child = self._retries.get(job_type)
        if child is None:
            child = self._retries[job_type] = self.retries.labels(job_type)
        child.inc()

    def job_finished(self, job: Job, result: JobResult) -> None:
        key = (self._label(job.type), result.status.value)
        children = self._finished.get(key)
        if children is None:
            children = self._finished[key] = (
                self.finished.labels(*key),
                self.duration.labels(*key),
            )
        finished, duration = children
        finished.inc()
        duration.observe(result.duration_ms / 1000)

    def result_delivered(self, result: JobResult) -> None:
        status = result.status.value
        child = self._delivered.get(status)
        if child is None:
            child = self._delivered[status] = self.delivered.labels(status)
        child.inc()

    def _label(self, job_type: str) -> str:
        return job_type if job_type in self._known_types else UNKNOWN_TYPE


class ResultSendRetries:
    """``on_retry`` callback for the gRPC sink: counts retried ReportResult calls."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self._counter = Counter(
            "jobworker_result_send_retries",
            "ReportResult calls retried, by gRPC status code.",
            ["code"],
            registry=registry,
        )

    def __call__(self, code: str, attempt: int, delay_s: float) -> None:
        self._counter.labels(code).inc()


Reading = tuple[str, Callable[[], float]]  # (help text, read the value now)


@dataclass
class LiveState:
    """Where the collector reads state at scrape time; each reader is optional.

    ``counters`` are totals their owners keep (the Kafka source's commits and dead
    letters, the engine's refused results); ``gauges`` are levels.
    """

    gauges: Mapping[str, Reading] = field(default_factory=dict)
    counters: Mapping[str, Reading] = field(default_factory=dict)
    consumer_lag: Callable[[], Mapping[tuple[str, int], int]] | None = None


class LiveStateCollector(Collector):
    """Exposes engine and consumer state, read when Prometheus scrapes."""

    def __init__(self, state: LiveState) -> None:
        self._state = state

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        for name, (doc, read) in self._state.gauges.items():
            yield GaugeMetricFamily(name, doc, value=read())
        for name, (doc, read) in self._state.counters.items():
            yield CounterMetricFamily(name, doc, value=read())
        if self._state.consumer_lag is not None:
            lag = GaugeMetricFamily(
                "jobworker_consumer_lag",
                "Records between the committed offset and the end of each assigned partition.",
                labels=["topic", "partition"],
            )
            for (topic, partition), value in sorted(self._state.consumer_lag().items()):
                lag.add_metric([topic, str(partition)], value)
            yield lag
