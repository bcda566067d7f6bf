"""Prometheus metrics: a JobObserver for per-job counters, a collector for live gauges.

Counters of events (jobs, retries, results) are pushed by the observer as they
happen; values that are state (queue depths, in-flight jobs, consumer lag, commits,
DLQ records) are read from their owners at scrape time, so nothing can drift.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Callable, Collection, Iterator, Mapping
from dataclasses import dataclass, field

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    disable_created_metrics,
)
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
)
from prometheus_client.gc_collector import GCCollector
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from jobworker import __version__
from jobworker.domain.limits import HOST_PREFIX, TargetLimit
from jobworker.domain.model import Job, JobResult

DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
UNKNOWN_TYPE = "unknown"


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
    """The installed jobworker's version ("unknown" in a never-installed source tree)."""
    return __version__


class PrometheusJobObserver(Collector):
    """Counts jobs by type and status and times them.

    The ``type`` label takes only the types an executor is registered for, and
    ``unknown`` for every other: the type comes from producers (``TYPE_<n>`` from Kafka,
    any string from a file), and a label value per stranger would be a series per
    stranger, unbounded.

    A job's updates are plain dict and int operations; the metric families are built
    from them when Prometheus scrapes (the observer is a collector on the registry).
    prometheus_client's own counters and histogram take a lock per update, three per
    job, which was most of the observer's cost in the no-op profile. The observer is
    called from greenlets of the one worker thread, and a scrape (on the metrics
    server's thread) reads ints that are only ever replaced whole, so no lock is needed:
    a scrape sees each series at some recent value, as it would anyway.
    """

    def __init__(self, registry: CollectorRegistry, job_types: Collection[str]) -> None:
        self._known_types = frozenset(job_types)
        self._consumed: dict[str, int] = {}
        self._retries: dict[str, int] = {}
        self._delivered: dict[str, int] = {}
        self._finished: dict[tuple[str, str], _Durations] = {}
        registry.register(self)

    def job_received(self, job: Job) -> None:
        job_type = job.type if job.type in self._known_types else UNKNOWN_TYPE
        self._consumed[job_type] = self._consumed.get(job_type, 0) + 1

    def job_started(self, job: Job, attempt: int) -> None:
        pass

    def job_retrying(self, job: Job, attempt: int, error: str, delay_s: float) -> None:
        job_type = job.type if job.type in self._known_types else UNKNOWN_TYPE
        self._retries[job_type] = self._retries.get(job_type, 0) + 1

    def job_finished(self, job: Job, result: JobResult) -> None:
        job_type = job.type if job.type in self._known_types else UNKNOWN_TYPE
        key = (job_type, result.status.value)
        durations = self._finished.get(key)
        if durations is None:
            durations = self._finished[key] = _Durations()
        durations.observe(result.duration_ms / 1000)

    def result_delivered(self, result: JobResult) -> None:
        status = result.status.value
        self._delivered[status] = self._delivered.get(status, 0) + 1

    def collect(self) -> Iterator[CounterMetricFamily | HistogramMetricFamily]:
        # Copies first: a job may add a series while this runs.
        consumed = CounterMetricFamily(
            "jobworker_jobs_consumed", "Jobs taken from the source.", labels=["type"]
        )
        for job_type, count in sorted(dict(self._consumed).items()):
            consumed.add_metric([job_type], count)
        yield consumed
        finished_series = sorted(dict(self._finished).items())
        finished = CounterMetricFamily(
            "jobworker_jobs_finished",
            "Jobs that ended, by how they ended.",
            labels=["type", "status"],
        )
        for key, durations in finished_series:
            finished.add_metric(list(key), durations.count)
        yield finished
        retries = CounterMetricFamily(
            "jobworker_job_retries",
            "Job attempts retried after a retryable error.",
            labels=["type"],
        )
        for job_type, count in sorted(dict(self._retries).items()):
            retries.add_metric([job_type], count)
        yield retries
        duration = HistogramMetricFamily(
            "jobworker_job_duration_seconds",
            "Job run time, retries included, from first attempt to result.",
            labels=["type", "status"],
        )
        for key, durations in finished_series:
            buckets, total = durations.snapshot()
            duration.add_metric(list(key), buckets, total)
        yield duration
        delivered = CounterMetricFamily(
            "jobworker_results_delivered", "Results the sink (Core) accepted.", labels=["status"]
        )
        for status, count in sorted(dict(self._delivered).items()):
            delivered.add_metric([status], count)
        yield delivered


_BUCKET_NAMES = [floatToGoString(bound) for bound in DURATION_BUCKETS] + ["+Inf"]  # type: ignore[no-untyped-call]


class _Durations:
    """One histogram series kept as plain numbers: a count per bucket (not cumulative)."""

    __slots__ = ("count", "counts", "sum")

    def __init__(self) -> None:
        self.counts = [0] * (len(DURATION_BUCKETS) + 1)  # the last one is +Inf
        self.count = 0
        self.sum = 0.0

    def observe(self, seconds: float) -> None:
        # Buckets are "less than or equal": the first bound not below the value.
        self.counts[bisect_left(DURATION_BUCKETS, seconds)] += 1
        self.count += 1
        self.sum += seconds

    def snapshot(self) -> tuple[list[tuple[str, float]], float]:
        buckets, running = [], 0
        for name, count in zip(_BUCKET_NAMES, list(self.counts), strict=True):
            running += count
            buckets.append((name, float(running)))
        return buckets, self.sum


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


class AdmissionMetrics:
    """Admission's listener (application/admission.py): waits by limit, and each HTTP
    host's breaker state, transitions and refused calls.

    Labels stay bounded: a limit is one of the configured ones; a host is one of those
    ``limits`` names, or ``other`` for every other host.
    """

    _STATES = ("closed", "open", "half-open")

    def __init__(self, registry: CollectorRegistry, limits: Collection[TargetLimit]) -> None:
        self._hosts = frozenset(limit.key for limit in limits if limit.key.startswith(HOST_PREFIX))
        self._waits = Counter(
            "jobworker_limit_waits",
            "Attempts that waited (holding no slot) for a limit, by limit.",
            ["limit"],
            registry=registry,
        )
        self._refused = Counter(
            "jobworker_breaker_refused_calls",
            "Attempts held back by an open circuit breaker, by host.",
            ["host"],
            registry=registry,
        )
        self._transitions = Counter(
            "jobworker_breaker_transitions",
            "Circuit breaker state changes, by host and the state entered.",
            ["host", "state"],
            registry=registry,
        )
        self._state = Gauge(
            "jobworker_breaker_state",
            "1 for the state each host's breaker is in (closed, open, half-open).",
            ["host", "state"],
            registry=registry,
        )

    def parked(self, gate: str, by_breaker: bool) -> None:
        if by_breaker:
            self._refused.labels(self._host(gate)).inc()
        else:
            self._waits.labels(gate).inc()

    def breaker_changed(self, target: str, state: str) -> None:
        host = self._host(target)
        self._transitions.labels(host, str(state)).inc()
        for each in self._STATES:
            self._state.labels(host, each).set(1 if each == str(state) else 0)

    def _host(self, target: str) -> str:
        return target if target in self._hosts else "other"


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
    backlog: Callable[[], Mapping[tuple[str, int], int]] | None = None


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
        if self._state.backlog is not None:
            backlogs = self._state.backlog()
            backlog = GaugeMetricFamily(
                "jobworker_backlog",
                "Jobs truly not done in each assigned partition: records not taken yet plus"
                " jobs taken and not finished (finished ones past the commit not counted).",
                labels=["topic", "partition"],
            )
            for (topic, partition), value in sorted(backlogs.items()):
                backlog.add_metric([topic, str(partition)], value)
            yield backlog
            yield GaugeMetricFamily(
                "jobworker_backlog_owned",
                "jobworker_backlog summed over this worker's partitions.",
                value=sum(backlogs.values()),
            )
