"""The composition root: the one place where adapters are chosen and wired.

Adapters with connections or threads are Resources, so ``shutdown_resources()`` closes
them (the Kafka source commits and leaves its group there) once the engine has stopped.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import gevent
import structlog
from dependency_injector import containers, providers
from gevent.threadpool import ThreadPool
from kafka.errors import KafkaError
from prometheus_client import CollectorRegistry

from adapters.executors.http import HttpExecutor
from adapters.executors.image_resize import ImageResizeExecutor
from adapters.executors.safe_http import SafeHttpClient
from adapters.executors.sleep import SleepExecutor
from adapters.file import FileJobSource, FileResultSink
from adapters.file.refused import FileRefusedResultStore
from adapters.grpc.tls_diagnosis import CoreTlsDiagnosis
from adapters.kafka.lag import BrokerOffsetsMonitor, GroupOffsetsProbe
from adapters.kafka.refused_results import KafkaRefusedResultStore
from adapters.kafka.settings import KafkaClientSettings
from adapters.kafka.source import KafkaJobSource
from adapters.observability.metrics import PrometheusJobObserver, ResultSendRetries
from application.engine import EngineConfig, WorkerEngine
from application.job_limits import JobLimits
from application.registry import ExecutorRegistry
from application.result_delivery import RefusalPolicy
from application.retry import RetryPolicy
from domain.errors import ConfigurationError, JobWorkerError
from domain.model import JobType
from domain.ports import Executor
from entrypoints.observers import LoggingJobObserver
from entrypoints.settings import Settings


def _closing(resource: Any) -> Iterator[Any]:
    try:
        yield resource
    finally:
        resource.close()


def kafka_client_settings(settings: Settings) -> KafkaClientSettings:
    return KafkaClientSettings(
        bootstrap_servers=settings.get("KAFKA_BROKERS"),
        client_id=settings.kafka_client_id,
        security_protocol=settings.get("KAFKA_SECURITY_PROTOCOL"),
        sasl_mechanism=settings.get("KAFKA_SASL_MECHANISM"),
        sasl_username=settings.get("KAFKA_SASL_USERNAME"),
        sasl_password=settings.get("KAFKA_SASL_PASSWORD"),
        ssl_cafile=settings.get("KAFKA_SSL_CAFILE"),
        ssl_certfile=settings.get("KAFKA_SSL_CERTFILE"),
        ssl_keyfile=settings.get("KAFKA_SSL_KEYFILE"),
        session_timeout_ms=int(settings.get("KAFKA_SESSION_TIMEOUT") * 1000),
        max_poll_records=settings.get("KAFKA_MAX_POLL_RECORDS"),
        max_poll_interval_ms=int(settings.get("KAFKA_MAX_POLL_INTERVAL") * 1000),
        isolation_level=settings.get("KAFKA_ISOLATION_LEVEL"),
        max_partition_fetch_bytes=settings.get("KAFKA_MAX_PARTITION_FETCH_BYTES"),
        fetch_max_bytes=settings.get("KAFKA_FETCH_MAX_BYTES"),
    )


def kafka_source(settings: Settings) -> Iterator[KafkaJobSource]:
    try:
        source = KafkaJobSource(
            kafka_client_settings(settings),
            topic=settings.get("KAFKA_TOPIC"),
            group_id=settings.get("KAFKA_GROUP_ID"),
            dlq_topic=settings.dlq_topic,
            worker_id=settings.worker_id,
            max_in_flight_per_partition=settings.get("KAFKA_MAX_IN_FLIGHT_PER_PARTITION"),
            commit_interval_s=settings.get("KAFKA_COMMIT_INTERVAL"),
            commit_every=settings.get("KAFKA_COMMIT_EVERY"),
            unreadable_batches=settings.get("KAFKA_UNREADABLE_BATCHES"),
            ordering=settings.get("KAFKA_ORDERING"),
        )
    except KafkaError as error:
        brokers = ",".join(settings.get("KAFKA_BROKERS"))
        raise JobWorkerError(f"cannot reach Kafka at {brokers} (KAFKA_BROKERS): {error}") from None
    yield from _closing(source)


def broker_offsets_monitor(
    settings: Settings, source: KafkaJobSource
) -> Iterator[BrokerOffsetsMonitor]:
    probe = GroupOffsetsProbe(kafka_client_settings(settings), settings.get("KAFKA_GROUP_ID"))
    monitor = BrokerOffsetsMonitor(probe, source.assigned)
    monitor.start()
    try:
        yield monitor
    finally:
        monitor.stop()


def file_source(settings: Settings) -> Iterator[FileJobSource]:
    yield from _closing(FileJobSource(settings.require_file("JOB_FILE")))


def grpc_sink(
    settings: Settings, on_retry: ResultSendRetries, core_tls: CoreTlsDiagnosis
) -> Iterator[Any]:
    from adapters.grpc.sink import (  # noqa: PLC0415 - grpc after gevent setup
        GrpcResultSink,
        RetryNotice,
    )

    address = settings.get("GRPC_SERVER_ADDRESS")
    log = structlog.get_logger("jobworker.core_client")

    def retrying(notice: RetryNotice) -> None:
        on_retry(notice.code, notice.attempt, notice.delay_s)
        core_tls.on_call_failed(notice.code)
        # Every retry of a long outage would flood the log: the first few, then 1 in 50.
        if notice.attempt <= 3 or notice.attempt % 50 == 0:
            log.warning(
                "Core call failed; retrying",
                address=address,
                job_id=notice.job_id,
                code=notice.code,
                details=notice.details,
                attempt=notice.attempt,
                retry_in_s=round(notice.delay_s, 3),
            )

    try:
        sink = GrpcResultSink(
            address,
            on_retry=retrying,
            call_timeout_s=settings.get("GRPC_CALL_TIMEOUT"),
            backoff_cap_s=settings.get("GRPC_RETRY_BACKOFF_MAX"),
            tls_ca_file=settings.get("GRPC_TLS_CA_FILE"),
            tls_cert_file=settings.get("GRPC_TLS_CERT_FILE"),
            tls_key_file=settings.get("GRPC_TLS_KEY_FILE"),
        )
    except ConfigurationError as error:
        # The sink names its arguments; the user knows the settings.
        variable = _TLS_SETTINGS.get(error.variable, error.variable)
        raise ConfigurationError(variable, error.problem) from None
    yield from _closing(sink)


_TLS_SETTINGS = {
    "tls_ca_file": "GRPC_TLS_CA_FILE",
    "tls_cert_file": "GRPC_TLS_CERT_FILE",
    "tls_key_file": "GRPC_TLS_KEY_FILE",
}


def core_tls_diagnosis(settings: Settings) -> Iterator[CoreTlsDiagnosis]:
    diagnosis = CoreTlsDiagnosis(
        settings.get("GRPC_SERVER_ADDRESS"),
        tls_ca_file=settings.get("GRPC_TLS_CA_FILE"),
        tls_cert_file=settings.get("GRPC_TLS_CERT_FILE"),
        tls_key_file=settings.get("GRPC_TLS_KEY_FILE"),
        setting_names=_TLS_SETTINGS,
    )
    watcher = gevent.spawn(diagnosis.recheck_while_failing)
    try:
        yield diagnosis
    finally:
        watcher.kill()


def file_sink(settings: Settings) -> Iterator[FileResultSink]:
    yield from _closing(FileResultSink(settings.require_file("RESULT_FILE")))


def kafka_refused_results(settings: Settings) -> Iterator[KafkaRefusedResultStore]:
    topic = settings.results_dlq_topic
    _check_results_dlq_topic(topic, settings)
    yield from _closing(
        KafkaRefusedResultStore(kafka_client_settings(settings), topic, settings.worker_id)
    )


def _check_results_dlq_topic(topic: str, settings: Settings) -> None:
    if topic in {settings.get("KAFKA_TOPIC"), settings.dlq_topic}:
        raise ConfigurationError(
            "KAFKA_RESULTS_DLQ_TOPIC", f"{topic!r} must differ from KAFKA_TOPIC and KAFKA_DLQ_TOPIC"
        )


def file_refused_results(settings: Settings) -> Iterator[FileRefusedResultStore]:
    yield from _closing(FileRefusedResultStore(settings.results_dlq_file))


def refusal_policy(settings: Settings) -> RefusalPolicy:
    return RefusalPolicy(
        dead_letter=settings.get("RESULT_REFUSED") == "dead-letter",
        attempts=settings.get("RESULT_REFUSED_ATTEMPTS"),
    )


def http_client(settings: Settings) -> Iterator[SafeHttpClient]:
    yield from _closing(
        SafeHttpClient(
            pool_size=settings.get("WORKER_POOL_SIZE"),
            allow_private_networks=settings.get("HTTP_ALLOW_PRIVATE_NETWORKS"),
            max_redirects=settings.get("HTTP_MAX_REDIRECTS"),
        )
    )


def image_threadpool(settings: Settings) -> Iterator[ThreadPool]:
    # Pillow gets threads of its own: the hub's pool is gRPC's (see architecture.md).
    pool = ThreadPool(settings.image_threads)
    try:
        yield pool
    finally:
        pool.kill()


def image_folder(settings: Settings, name: str, access: int) -> Path:
    """The folder a setting names, made if missing; a clear error if it cannot be used.

    Checked at start-up: a wrong folder would otherwise surface as every image job
    REJECTED for a "missing file" the producer did nothing wrong about.
    """
    folder = Path(settings.get(name))
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise ConfigurationError(name, f"cannot create {folder}: {error.strerror}") from None
    if not os.access(folder, access | os.X_OK):
        verb = "written" if access == os.W_OK else "read"
        raise ConfigurationError(name, f"{folder} cannot be {verb} by this process")
    return folder


def build_registry(executors: dict[str, Executor], discover_plugins: bool) -> ExecutorRegistry:
    registry = ExecutorRegistry(executors)
    if discover_plugins:
        registry.discover_plugins()
    return registry


def engine_config(settings: Settings) -> EngineConfig:
    return EngineConfig(
        worker_id=settings.worker_id,
        pool_size=settings.get("WORKER_POOL_SIZE"),
        jobs_queue_size=settings.jobs_queue_size,
        results_queue_size=settings.results_queue_size,
        result_senders=settings.get("RESULT_SENDERS"),
        result_batch_size=settings.get("RESULT_BATCH_SIZE"),
        result_batch_linger_s=settings.get("RESULT_BATCH_LINGER"),
        result_batch_max_bytes=settings.get("RESULT_BATCH_MAX_BYTES"),
        max_job_timeout_s=settings.get("MAX_JOB_TIMEOUT"),
        max_output_bytes=settings.get("MAX_OUTPUT_BYTES"),
        refusals=refusal_policy(settings),
        limits=JobLimits(max_payload_bytes=settings.get("MAX_PAYLOAD_BYTES")),
        retry=RetryPolicy(
            max_attempts=settings.get("RETRY_MAX_ATTEMPTS"),
            backoff_base_s=settings.get("RETRY_BACKOFF_BASE"),
            backoff_max_s=settings.get("RETRY_BACKOFF_MAX"),
        ),
    )


class Container(containers.DeclarativeContainer):
    settings = providers.Dependency(instance_of=Settings)
    discover_plugins = providers.Object(True)

    metrics_registry = providers.Singleton(CollectorRegistry)
    job_metrics = providers.Singleton(PrometheusJobObserver, metrics_registry)
    send_retries = providers.Singleton(ResultSendRetries, metrics_registry)

    job_source = providers.Selector(
        providers.Callable(lambda s: s.get("JOB_SOURCE"), settings),
        kafka=providers.Resource(kafka_source, settings),
        file=providers.Resource(file_source, settings),
    )
    # Only with the Kafka source and a metrics endpoint: it feeds the lag gauge. It
    # depends on the Kafka resource itself, so it is shut down before the source.
    broker_offsets = providers.Resource(broker_offsets_monitor, settings, job_source.kafka)
    # Why TLS to Core fails, if it does: asked on failed calls, by /readyz and at start.
    core_tls = providers.Resource(core_tls_diagnosis, settings)
    result_sink = providers.Selector(
        providers.Callable(lambda s: s.get("RESULT_SINK"), settings),
        grpc=providers.Resource(grpc_sink, settings, send_retries, core_tls),
        file=providers.Resource(file_sink, settings),
    )
    # Where results Core refused for good go: beside the jobs in Kafka, or to a file.
    refused_results = providers.Selector(
        providers.Callable(lambda s: s.get("JOB_SOURCE"), settings),
        kafka=providers.Resource(kafka_refused_results, settings),
        file=providers.Resource(file_refused_results, settings),
    )

    http_client = providers.Resource(http_client, settings)
    image_threadpool = providers.Resource(image_threadpool, settings)
    executors = providers.Dict(
        {
            JobType.SLEEP: providers.Singleton(SleepExecutor),
            JobType.HTTP: providers.Singleton(
                HttpExecutor,
                client=http_client,
                max_response_bytes=providers.Callable(
                    lambda s: s.get("HTTP_MAX_RESPONSE_BYTES"), settings
                ),
                default_timeout_s=providers.Callable(lambda s: s.get("HTTP_MAX_TIMEOUT"), settings),
            ),
            JobType.IMAGE_RESIZE: providers.Singleton(
                ImageResizeExecutor,
                input_root=providers.Callable(image_folder, settings, "IMAGE_INPUT_ROOT", os.R_OK),
                output_root=providers.Callable(
                    image_folder, settings, "IMAGE_OUTPUT_ROOT", os.W_OK
                ),
                threadpool=image_threadpool,
                http_client=http_client,
                max_source_bytes=providers.Callable(
                    lambda s: s.get("IMAGE_MAX_SOURCE_BYTES"), settings
                ),
                max_pixels=providers.Callable(lambda s: s.get("IMAGE_MAX_PIXELS"), settings),
                fetch_timeout_s=providers.Callable(lambda s: s.get("HTTP_MAX_TIMEOUT"), settings),
            ),
        }
    )
    registry = providers.Singleton(build_registry, executors, discover_plugins)

    job_log = providers.Singleton(LoggingJobObserver)
    observers = providers.List(job_log, job_metrics)

    engine = providers.Singleton(
        WorkerEngine,
        source=job_source,
        sink=result_sink,
        registry=registry,
        config=providers.Callable(engine_config, settings),
        observers=observers,
        refused_results=refused_results,
    )
