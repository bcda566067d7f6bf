"""Wires the worker's status record (docs/operations.md, "Fleet status on Kafka") to the
running engine and Kafka source, and starts its publisher."""

from __future__ import annotations

import os
import socket

from jobworker.adapters.kafka.lag import BrokerOffsetsMonitor
from jobworker.adapters.kafka.source import KafkaJobSource
from jobworker.adapters.kafka.status import KafkaStatusPublisher
from jobworker.adapters.observability.job_log import LoggingJobObserver
from jobworker.adapters.observability.metrics import installed_version
from jobworker.adapters.observability.status_record import (
    PartitionStatus,
    StatusReadings,
    StatusRecords,
    WorkerIdentity,
)
from jobworker.application.engine import WorkerEngine
from jobworker.entrypoints.container import Container, kafka_client_settings
from jobworker.entrypoints.settings import Settings

# A stopping worker waits this long at most for its tombstone to be written.
TOMBSTONE_TIMEOUT_S = 2.0


def start_status_publisher(
    settings: Settings, container: Container, engine: WorkerEngine, source: object
) -> KafkaStatusPublisher | None:
    """The started publisher, or None: STATUS_INTERVAL=0, or jobs from a file."""
    if not settings.status_interval or not isinstance(source, KafkaJobSource):
        return None
    # The broker's offsets fill in partitions not read yet (an idle worker at the end of
    # its partitions knows their end only from the broker): one admin request every 5 s,
    # shared with the metrics endpoint's gauges when that is on.
    broker_offsets = container.broker_offsets()
    records = StatusRecords(
        WorkerIdentity(settings.worker_id, installed_version(), socket.gethostname(), os.getpid()),
        status_readings(engine, source, container.job_log(), broker_offsets),
        settings.status_interval,
    )
    publisher = KafkaStatusPublisher(
        kafka_client_settings(settings),
        settings.kafka_status_topic,
        settings.worker_id,
        records.next,
        settings.status_interval,
    )
    publisher.start()
    return publisher


def status_readings(
    engine: WorkerEngine,
    source: KafkaJobSource,
    job_log: LoggingJobObserver,
    broker_offsets: BrokerOffsetsMonitor | None,
) -> StatusReadings:
    def partitions() -> list[PartitionStatus]:
        broker = broker_offsets.latest() if broker_offsets is not None else None
        lag, backlog = source.lag(broker), source.backlog(broker)
        return [
            PartitionStatus(
                topic=tp.topic, partition=tp.partition, backlog=backlog.get(tp), lag=lag.get(tp)
            )
            for tp in source.assigned()
        ]

    def errors() -> dict[str, int]:
        stats = source.stats()
        return {
            "dlq_records": stats.dlq_records,
            "unreadable_batches": stats.unreadable_batches,
            "results_refused": engine.results_refused,
            "results_dead_lettered": engine.results_dead_lettered,
        }

    return StatusReadings(
        jobs_in_flight=lambda: engine.jobs_in_flight,
        jobs_waiting=lambda: engine.jobs_queue_depth,
        jobs_waiting_to_retry=lambda: engine.jobs_waiting_to_retry,
        results_waiting=lambda: engine.results_queue_depth + engine.results_waiting_to_retry,
        finished=lambda: job_log.finished_by_status,
        errors=errors,
        partitions=partitions,
        breakers=lambda: engine.breaker_states,
        limits=lambda: engine.limit_states,
        last_poll_at_ms=lambda: source.stats().last_poll_at_ms,
        last_commit_at_ms=lambda: source.stats().last_commit_at_ms,
    )
