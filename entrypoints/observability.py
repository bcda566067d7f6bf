"""Wires the metrics endpoint to the running engine, source and sink."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import gevent
from prometheus_client import CollectorRegistry

from adapters.grpc.tls_diagnosis import CoreTlsDiagnosis
from adapters.kafka.lag import BrokerOffsetsMonitor
from adapters.kafka.source import KafkaJobSource
from adapters.observability.http_server import NotReady, ObservabilityServer
from adapters.observability.metrics import LiveState, LiveStateCollector, Reading
from application.engine import WorkerEngine

# A readiness probe must answer fast; a Core that takes longer to accept a connection
# counts as unreachable for that probe.
_CORE_PING_TIMEOUT_S = 0.5


def start_observability_server(
    host: str,
    port: int,
    registry: CollectorRegistry,
    engine: WorkerEngine,
    source: Any,
    sink: Any,
    broker_offsets: BrokerOffsetsMonitor | None = None,
    core_tls: CoreTlsDiagnosis | None = None,
) -> ObservabilityServer:
    kafka = source if isinstance(source, KafkaJobSource) else None
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
            "jobworker_results_queue_depth": (
                "Results waiting to be sent to Core.",
                lambda: engine.results_queue_depth,
            ),
            "jobworker_results_waiting_to_retry": (
                "Results Core refused or could not take, waiting to be offered again.",
                lambda: engine.results_waiting_to_retry,
            ),
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
        consumer_lag=_lag_reader(kafka, broker_offsets) if kafka else None,
    )
    registry.register(LiveStateCollector(state))
    server = ObservabilityServer(
        host,
        port,
        registry,
        _readiness(engine, kafka, sink, core_tls),
        liveness=lambda: not engine.failed.is_set(),
    )
    server.start()
    return server


def _kafka_counters(source: KafkaJobSource) -> dict[str, Reading]:
    return {
        "jobworker_offset_commits": (
            "Offset commits made to Kafka.",
            lambda: source.counters["offset_commits"],
        ),
        "jobworker_dlq_records": (
            "Records written to the dead-letter topic: poison messages and unreadable batches.",
            lambda: source.counters["dlq_records"],
        ),
        "jobworker_unreadable_batches": (
            "Record batches the consumer could not decode (dead-lettered and skipped,"
            " or the reason the worker stopped).",
            lambda: source.counters["unreadable_batches"],
        ),
        "jobworker_finished_skipped": (
            "Records skipped because the last commit's metadata records them as done.",
            lambda: source.counters["finished_skipped"],
        ),
        "jobworker_commit_metadata_fallbacks": (
            "Commits made without their finished offsets (over the metadata size limit).",
            lambda: source.counters["commit_metadata_fallbacks"],
        ),
    }


def _lag_reader(
    source: KafkaJobSource, broker_offsets: BrokerOffsetsMonitor | None
) -> Callable[[], Mapping[tuple[str, int], int]]:
    def read() -> Mapping[tuple[str, int], int]:
        broker = broker_offsets.latest() if broker_offsets is not None else None
        return {(tp.topic, tp.partition): lag for tp, lag in source.lag(broker).items()}

    return read


def _readiness(
    engine: WorkerEngine,
    kafka: KafkaJobSource | None,
    sink: Any,
    core_tls: CoreTlsDiagnosis | None = None,
) -> Callable[[], Mapping[str, bool | NotReady]]:
    ping = getattr(sink, "ping", None)

    def checks() -> Mapping[str, bool | NotReady]:
        # False from a shutdown's first moment: the worker is leaving, whatever else holds.
        result: dict[str, bool | NotReady] = {"taking_jobs": engine.taking_jobs}
        if kafka is not None:
            # Joined, not "owns partitions": replicas beyond the partition count are
            # healthy standbys, and must not hold up a rollout by never being ready.
            result["joined_group"] = kafka.joined_group()
        if ping is not None:
            result["core_reachable"] = _core_reachable(
                bool(ping(timeout_s=_CORE_PING_TIMEOUT_S)), core_tls
            )
        return result

    return checks


def _core_reachable(reachable: bool, core_tls: CoreTlsDiagnosis | None) -> bool | NotReady:
    if core_tls is None:
        return reachable
    if reachable:
        core_tls.connected()
        return True
    # An idle worker makes no calls that would find a TLS mistake: the probe looks for
    # one, off the probe's own greenlet (a handshake may outlast the probe's timeout),
    # so its reason shows from the next probe on.
    gevent.spawn(core_tls.recheck)
    return NotReady(core_tls.reason) if core_tls.reason else False
