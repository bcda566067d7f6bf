"""Wires the metrics endpoint to the running engine, source and sink."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import gevent
from prometheus_client import CollectorRegistry

from jobworker.adapters.grpc.tls_diagnosis import CoreTlsDiagnosis
from jobworker.adapters.kafka.consumer import TopicPartition
from jobworker.adapters.kafka.lag import BrokerOffsetsMonitor, PartitionOffsets
from jobworker.adapters.kafka.source import KafkaJobSource
from jobworker.adapters.observability.http_server import (
    NotReady,
    ObservabilityServer,
    readiness_passed,
)
from jobworker.adapters.observability.metrics import LiveState, LiveStateCollector, Reading
from jobworker.adapters.observability.sampled import Sampled
from jobworker.application.engine import WorkerEngine

# Core is pinged off the probes (``Sampled``), every second; a Core that takes longer
# than this to accept a connection counts as unreachable until the next ping.
_CORE_PING_TIMEOUT_S = 0.5
_CORE_PING_INTERVAL_S = 1.0


def start_observability_server(
    host: str,
    port: int,
    registry: CollectorRegistry,
    engine: WorkerEngine,
    source: Any,
    sink: Any,
    broker_offsets: BrokerOffsetsMonitor | None = None,
    core_tls: CoreTlsDiagnosis | None = None,
    *,
    readiness_requires_core: bool = False,
    broker_answer_timeout_s: float = 15.0,
    max_hub_blocked_s: float | None = 10.0,
) -> ObservabilityServer:
    kafka = source if isinstance(source, KafkaJobSource) else None
    ping = getattr(sink, "ping", None)
    # Probes and scrapes read the last ping: none of them waits on Core.
    core = _core_sampler(ping, core_tls) if ping is not None else None
    state = LiveState(
        gauges={
            "jobworker_jobs_in_flight": (
                "Jobs running in the pool.",
                lambda: engine.jobs_in_flight,
            ),
            "jobworker_jobs_queue_depth": (
                "Jobs waiting for a pool slot.",
                lambda: engine.jobs_queue_depth,
            ),
            "jobworker_jobs_waiting_to_retry": (
                "Jobs waiting for their next attempt, holding no slot.",
                lambda: engine.jobs_waiting_to_retry,
            ),
            "jobworker_results_queue_depth": (
                "Results waiting to be sent to Core.",
                lambda: engine.results_queue_depth,
            ),
            "jobworker_results_waiting_to_retry": (
                "Results Core refused or could not take, waiting to be offered again.",
                lambda: engine.results_waiting_to_retry,
            ),
            **(_core_gauge(core) if core is not None else {}),
        },
        counters={
            "jobworker_results_refused": (
                "Final refusals from Core (each offer of a result counted).",
                lambda: engine.results_refused,
            ),
            "jobworker_results_dead_lettered": (
                "Results Core refused for good, written to the results dead-letter topic"
                " (or file) and their jobs acked.",
                lambda: engine.results_dead_lettered,
            ),
            **(_kafka_counters(kafka) if kafka else {}),
        },
        consumer_lag=_per_partition(kafka.lag, broker_offsets) if kafka else None,
        backlog=_per_partition(kafka.backlog, broker_offsets) if kafka else None,
    )
    registry.register(LiveStateCollector(state))
    core_check = core.latest if core is not None else None
    server = ObservabilityServer(
        host,
        port,
        registry,
        _readiness(
            engine,
            kafka,
            broker_offsets if kafka else None,
            broker_answer_timeout_s,
            core_check if readiness_requires_core else None,
        ),
        liveness=lambda: not engine.failed.is_set(),
        advisories=_advisories(None if readiness_requires_core else core_check),
        max_hub_blocked_s=max_hub_blocked_s,
        background=[core] if core is not None else [],
    )
    server.start()
    return server


def _kafka_counters(source: KafkaJobSource) -> dict[str, Reading]:
    return {
        "jobworker_offset_commits": (
            "Offset commits made to Kafka.",
            lambda: source.stats().offset_commits,
        ),
        "jobworker_dlq_records": (
            "Records written to the dead-letter topic: poison messages and unreadable batches.",
            lambda: source.stats().dlq_records,
        ),
        "jobworker_unreadable_batches": (
            "Record batches the consumer could not decode (dead-lettered and skipped,"
            " or the reason the worker stopped).",
            lambda: source.stats().unreadable_batches,
        ),
        "jobworker_finished_skipped": (
            "Records skipped because the last commit's metadata records them as done.",
            lambda: source.stats().finished_skipped,
        ),
        "jobworker_commit_metadata_fallbacks": (
            "Commits whose finished offsets did not all fit the metadata size limit"
            " (the leading ones were kept).",
            lambda: source.stats().commit_metadata_fallbacks,
        ),
    }


def _per_partition(
    measure: Callable[[Mapping[TopicPartition, PartitionOffsets] | None], Mapping[Any, int]],
    broker_offsets: BrokerOffsetsMonitor | None,
) -> Callable[[], Mapping[tuple[str, int], int]]:
    """A gauge reader of ``measure`` (the source's lag or backlog), given the broker's
    last offsets."""

    def read() -> Mapping[tuple[str, int], int]:
        broker = broker_offsets.latest() if broker_offsets is not None else None
        return {(tp.topic, tp.partition): n for tp, n in measure(broker).items()}

    return read


def _core_gauge(core: Sampled[bool | NotReady]) -> dict[str, Reading]:
    return {
        "jobworker_core_reachable": (
            "1 when the channel to Core is connected (or connected within 0.5 s),"
            " checked every second, else 0.",
            lambda: float(readiness_passed(core.latest())),
        )
    }


Check = Callable[[], bool | NotReady]


def _core_sampler(
    ping: Callable[..., Any], core_tls: CoreTlsDiagnosis | None
) -> Sampled[bool | NotReady]:
    return Sampled(
        lambda: _core_reachable(bool(ping(timeout_s=_CORE_PING_TIMEOUT_S)), core_tls),
        initial=False,  # until the first ping, moments after start
        interval_s=_CORE_PING_INTERVAL_S,
    )


def _broker_check(monitor: BrokerOffsetsMonitor, timeout_s: float) -> Check:
    def check() -> bool | NotReady:
        silent_s = monitor.seconds_since_answer()
        if silent_s is None:
            return NotReady("the broker has not answered yet")
        if silent_s > timeout_s:
            return NotReady(
                f"the broker has not answered for {silent_s:.0f} s"
                f" (READINESS_BROKER_TIMEOUT is {timeout_s:g} s)"
            )
        return True

    return check


def _readiness(
    engine: WorkerEngine,
    kafka: KafkaJobSource | None,
    broker_offsets: BrokerOffsetsMonitor | None,
    broker_answer_timeout_s: float,
    core: Check | None,
) -> Callable[[], Mapping[str, bool | NotReady]]:
    broker = _broker_check(broker_offsets, broker_answer_timeout_s) if broker_offsets else None

    def checks() -> Mapping[str, bool | NotReady]:
        # False from a shutdown's first moment: the worker is leaving, whatever else holds.
        result: dict[str, bool | NotReady] = {"taking_jobs": engine.taking_jobs}
        if kafka is not None:
            # Joined, not "owns partitions": replicas beyond the partition count are
            # healthy standbys, and must not hold up a rollout by never being ready.
            result["joined_group"] = kafka.joined_group()
        if broker is not None:
            # Joined stays True while the broker is frozen or gone: only an answer, recent
            # enough, shows the worker can still get jobs and commit.
            result["broker_answered"] = broker()
        if core is not None:  # READINESS_REQUIRES_CORE=true
            result["core_reachable"] = core()
        return result

    return checks


def _advisories(core: Check | None) -> Callable[[], Mapping[str, bool | NotReady]]:
    # Core down is shown, not held against readiness: every replica would go unready at
    # once, stalling rollouts and drains, while each is doing the right thing (holding
    # results, pausing intake). See docs/operations.md.
    return (lambda: {"core_reachable": core()}) if core is not None else dict


def _core_reachable(reachable: bool, core_tls: CoreTlsDiagnosis | None) -> bool | NotReady:
    if core_tls is None:
        return reachable
    if reachable:
        core_tls.connected()
        return True
    # An idle worker makes no calls that would find a TLS mistake: the sampler looks for
    # one, on a greenlet of its own (a handshake may outlast the ping's timeout), so its
    # reason shows from the next ping on.
    gevent.spawn(core_tls.recheck)
    return NotReady(core_tls.reason) if core_tls.reason else False
