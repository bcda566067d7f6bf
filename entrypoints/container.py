"""The composition root: the one place where adapters are chosen and wired.

Adapters with connections or threads are Resources, so ``shutdown_resources()`` closes
them (the Kafka source commits and leaves its group there) once the engine has stopped.
It is a little over 400 lines on purpose: every adapter's wiring is here, so that
choosing or replacing one is read and changed in one file, not several.
"""

from __future__ import annotations

import importlib.metadata
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import gevent
import structlog
from dependency_injector import containers, providers
from gevent.threadpool import ThreadPool
from kafka.errors import KafkaError

from jobworker.adapters.executors.sleep import SleepExecutor
from jobworker.adapters.file import FileJobSource, FileResultSink
from jobworker.adapters.file.dead_letters import JobLineDeadLetters, dead_letter_path
from jobworker.adapters.file.refused import FileRefusedResultStore
from jobworker.adapters.file.source import JobFileError
from jobworker.adapters.grpc.tls_diagnosis import CoreTlsDiagnosis
from jobworker.adapters.kafka.lag import BrokerOffsetsMonitor, GroupOffsetsProbe
from jobworker.adapters.kafka.letter_reader import KafkaDeadLetterReader
from jobworker.adapters.kafka.log_noise import first_error, held_back_connection_errors
from jobworker.adapters.kafka.refused_results import KafkaRefusedResultStore
from jobworker.adapters.kafka.replay_checkpoint import KafkaReplayCheckpoint
from jobworker.adapters.kafka.republisher import KafkaRecordRepublisher
from jobworker.adapters.kafka.settings import KafkaClientSettings
from jobworker.adapters.kafka.source import KafkaJobSource
from jobworker.adapters.kafka.wiring import SourceOptions
from jobworker.adapters.observability.job_log import LoggingJobObserver
from jobworker.adapters.observability.metrics import (
    AdmissionMetrics,
    PrometheusJobObserver,
    ResultSendRetries,
    new_registry,
)
from jobworker.adapters.tracing.setup import start_tracing
from jobworker.application.dead_letter_service import DeadLetterService
from jobworker.application.engine import WorkerEngine
from jobworker.application.engine_config import EngineConfig
from jobworker.application.job_limits import JobLimits
from jobworker.application.registry import ExecutorRegistry
from jobworker.application.result_delivery import RefusalPolicy
from jobworker.application.retry import RetryPolicy
from jobworker.domain.errors import ConfigurationError
from jobworker.domain.limits import HOST_PREFIX, BreakerPolicy, TargetLimit
from jobworker.domain.model import JobType
from jobworker.domain.ports import Executor, JobObserver, ResultSink
from jobworker.entrypoints import on_first_job
from jobworker.entrypoints.exit_codes import ServiceUnavailable
from jobworker.entrypoints.settings import Settings
from jobworker.entrypoints.settings.modes import RefusedResults

_T = TypeVar("_T")

kafka_log = structlog.get_logger("jobworker.kafka")


def _closing(resource: Any) -> Iterator[Any]:
    try:
        yield resource
    finally:
        resource.close()


def kafka_client_settings(settings: Settings) -> KafkaClientSettings:
    return KafkaClientSettings(
        bootstrap_servers=settings.kafka_brokers,
        client_id=settings.kafka_client_id,
        security_protocol=settings.kafka_security_protocol,
        sasl_mechanism=settings.kafka_sasl_mechanism,
        sasl_username=settings.kafka_sasl_username,
        sasl_password=settings.kafka_sasl_password,
        ssl_cafile=settings.kafka_ssl_cafile,
        ssl_certfile=settings.kafka_ssl_certfile,
        ssl_keyfile=settings.kafka_ssl_keyfile,
        session_timeout_ms=int(settings.kafka_session_timeout * 1000),
        max_poll_records=settings.kafka_max_poll_records,
        max_poll_interval_ms=int(settings.kafka_max_poll_interval * 1000),
        isolation_level=settings.kafka_isolation_level,
        max_partition_fetch_bytes=settings.kafka_max_partition_fetch_bytes,
        fetch_max_bytes=settings.kafka_fetch_max_bytes,
        fetch_max_wait_ms=int(settings.kafka_fetch_max_wait * 1000),
    )


@contextmanager
def connecting_to_kafka(settings: Settings) -> Iterator[None]:
    """Around making a Kafka client: one line saying where, kafka-python's lines about
    each failed attempt held back meanwhile, and a broker that never answered reported
    as ``ServiceUnavailable`` (exit 69) with the first failure's cause. A refusal
    (``AccessRefused``, exit 2) goes through as it is."""
    brokers = ",".join(settings.kafka_brokers)
    kafka_log.info("connecting to Kafka", brokers=brokers)
    with held_back_connection_errors() as held:
        try:
            yield
        except KafkaError as error:
            cause = first_error(held)
            raise ServiceUnavailable(
                f"cannot reach Kafka at {brokers} (KAFKA_BROKERS): {error}"
                + (f" ({cause})" if cause else "")
            ) from None
    if held:
        kafka_log.warning(
            "Kafka answered after failed attempts", brokers=brokers, first=first_error(held)
        )


def kafka_source(settings: Settings) -> Iterator[KafkaJobSource]:
    with connecting_to_kafka(settings):
        source = KafkaJobSource(
            kafka_client_settings(settings),
            topic=settings.kafka_topic,
            group_id=settings.kafka_group_id,
            options=SourceOptions(
                dlq_topic=settings.kafka_dlq_topic,
                worker_id=settings.worker_id,
                max_in_flight_per_partition=settings.kafka_max_in_flight_per_partition,
                commit_interval_s=settings.kafka_commit_interval,
                commit_every=settings.kafka_commit_every,
                unreadable_batches=settings.kafka_unreadable_batches,
                ordering=settings.kafka_ordering,
                client=settings.kafka_client,
            ),
        )
    yield from _closing(source)


def broker_offsets_monitor(
    settings: Settings, source: KafkaJobSource
) -> Iterator[BrokerOffsetsMonitor]:
    probe = GroupOffsetsProbe(kafka_client_settings(settings), settings.kafka_group_id)
    monitor = BrokerOffsetsMonitor(probe, source.assigned)
    monitor.start()
    try:
        yield monitor
    finally:
        monitor.stop()


def file_source(settings: Settings) -> Iterator[FileJobSource]:
    # Malformed lines go beside the jobs file, as poison records go to KAFKA_DLQ_TOPIC.
    dead_letters = JobLineDeadLetters(dead_letter_path(settings.job_file), settings.worker_id)
    try:
        source = FileJobSource(settings.job_file, dead_letters)
    except JobFileError as error:
        raise ConfigurationError(settings.name_of(Settings.job_file), str(error)) from None
    yield from _closing(source)


def grpc_sink(
    settings: Settings,
    on_retry: ResultSendRetries,
    core_tls: CoreTlsDiagnosis,
    max_attempts: int = 0,
) -> Iterator[Any]:
    from jobworker.adapters.grpc.sink import (  # noqa: PLC0415 - grpc after gevent setup
        GrpcResultSink,
        RetryNotice,
    )

    address = settings.grpc_server_address
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
            call_timeout_s=settings.grpc_call_timeout,
            backoff_cap_s=settings.grpc_retry_backoff_max,
            max_attempts=max_attempts,
            tls_ca_file=settings.grpc_tls_ca_file,
            tls_cert_file=settings.grpc_tls_cert_file,
            tls_key_file=settings.grpc_tls_key_file,
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
        settings.grpc_server_address,
        tls_ca_file=settings.grpc_tls_ca_file,
        tls_cert_file=settings.grpc_tls_cert_file,
        tls_key_file=settings.grpc_tls_key_file,
        setting_names=_TLS_SETTINGS,
    )
    watcher = gevent.spawn(diagnosis.recheck_while_failing)
    try:
        yield diagnosis
    finally:
        watcher.kill()


def file_sink(settings: Settings) -> Iterator[FileResultSink]:
    path = settings.result_file
    if path != "-":
        # Now, not at the first result: a results file that cannot be written is the
        # user's input to fix, not an outage to retry until the shutdown deadline.
        try:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            Path(path).open("a", encoding="utf-8").close()
        except OSError as error:
            raise ConfigurationError(
                settings.name_of(Settings.result_file),
                f"cannot write results file {path}: {error.strerror}",
            ) from None
    yield from _closing(FileResultSink(path))


def kafka_refused_results(settings: Settings) -> Iterator[KafkaRefusedResultStore]:
    # Checked to differ from the jobs and dead-letter topics in validate_for_run.
    topic = settings.kafka_results_dlq_topic
    yield from _closing(
        KafkaRefusedResultStore(kafka_client_settings(settings), topic, settings.worker_id)
    )


def file_refused_results(settings: Settings) -> Iterator[FileRefusedResultStore]:
    yield from _closing(FileRefusedResultStore(settings.results_dlq_file))


def refusal_policy(settings: Settings) -> RefusalPolicy:
    return RefusalPolicy(
        dead_letter=settings.result_refused is RefusedResults.DEAD_LETTER,
        attempts=settings.result_refused_attempts,
    )


def http_client(settings: Settings) -> Iterator[Any]:
    # Only made when an HTTP or IMAGE_RESIZE executor is: it imports requests.
    yield from _closing(
        on_first_job.http_client(
            pool_size=settings.worker_pool_size,
            allow_private_networks=settings.http_allow_private_networks,
            max_redirects=settings.http_max_redirects,
        )
    )


def image_threadpool(settings: Settings) -> Iterator[ThreadPool]:
    # Pillow gets threads of its own: the hub's pool is gRPC's (see architecture.md).
    pool = ThreadPool(settings.image_threads)
    try:
        yield pool
    finally:
        pool.kill()


def image_folder(path: str, name: str, access: int) -> Path:
    """The folder a setting names, checked but not made: an IMAGE_RESIZE job makes the
    output folder when it first writes one, so a SLEEP-only worker leaves no folders.

    A folder that exists must be usable, and a missing output folder must be one this
    process can make: a wrong folder would otherwise surface as every image job failing
    for a reason the producer did nothing wrong about. A missing input folder fails
    only the image jobs that read a file, with a reason naming it.
    """
    folder = Path(path)
    if not folder.exists():
        above = next(p for p in folder.absolute().parents if p.exists())  # at least "/"
        if access == os.W_OK and not (above.is_dir() and os.access(above, os.W_OK | os.X_OK)):
            raise ConfigurationError(
                name, f"cannot create {folder}: {above} is not a folder this process can write"
            )
        return folder
    if not folder.is_dir():
        raise ConfigurationError(name, f"{folder} is not a folder")
    if not os.access(folder, access | os.X_OK):
        verb = "written" if access == os.W_OK else "read"
        raise ConfigurationError(name, f"{folder} cannot be {verb} by this process")
    return folder


def tracing_resource(settings: Settings) -> Iterator[Any]:
    """Tracing as the OTEL_* variables ask (None: off); flushed and stopped at shutdown."""
    started = start_tracing(settings.worker_id, _version())
    try:
        yield started
    finally:
        if started is not None:
            started.close()


def _version() -> str:
    try:
        return importlib.metadata.version("jobworker")
    except importlib.metadata.PackageNotFoundError:
        return ""


def traced_sink(tracing: Any, sink: ResultSink) -> ResultSink:
    return sink if tracing is None else tracing.traced_sink(sink)


def job_observers(tracing: Any, *observers: JobObserver) -> list[JobObserver]:
    # The tracing observer first: ids bound at a job's start are on every other line.
    return list(observers) if tracing is None else [tracing.observer(), *observers]


def build_registry(executors: dict[str, Executor], discover_plugins: bool) -> ExecutorRegistry:
    registry = ExecutorRegistry(executors)
    if discover_plugins:
        registry.discover_plugins()
    return registry


def engine_config(settings: Settings, registry: ExecutorRegistry) -> EngineConfig:
    return EngineConfig(
        worker_id=settings.worker_id,
        pool_size=settings.worker_pool_size,
        jobs_queue_size=settings.jobs_queue_size,
        results_queue_size=settings.results_queue_size,
        result_senders=settings.result_senders,
        result_batch_size=settings.result_batch_size,
        result_batch_linger_s=settings.result_batch_linger,
        result_batch_max_bytes=settings.result_batch_max_bytes,
        max_job_timeout_s=settings.max_job_timeout,
        max_output_bytes=settings.max_output_bytes,
        refusals=refusal_policy(settings),
        limits=JobLimits(max_payload_bytes=settings.max_payload_bytes),
        retry=RetryPolicy(
            max_attempts=settings.retry_max_attempts,
            backoff_base_s=settings.retry_backoff_base,
            backoff_max_s=settings.retry_backoff_max,
        ),
        target_limits=known_types_only(settings.limits, registry),
        breaker=BreakerPolicy(settings.http_breaker_failures, settings.http_breaker_cooldown),
    )


def known_types_only(
    limits: tuple[TargetLimit, ...], registry: ExecutorRegistry
) -> tuple[TargetLimit, ...]:
    """``limits``, if each job type they name has an executor (plugins included)."""
    known = registry.job_types()
    for limit in limits:
        if not limit.key.startswith(HOST_PREFIX) and limit.key not in known:
            raise ConfigurationError(
                "LIMITS", f"no executor runs job type {limit.key!r} (known: {', '.join(known)})"
            )
    return limits


def dead_letter_service(
    settings: Settings, topic: str, variable: str, sink: Callable[[], ResultSink]
) -> DeadLetterService:
    """The dead-letter service of ``topic`` (chosen by ``variable``): its reader opened
    now, the rest when replay first needs it; ``sink`` opens Core."""
    client = kafka_client_settings(settings)

    def opened(make: Callable[[], _T]) -> Callable[[], _T]:
        def open_it() -> _T:
            with connecting_to_kafka(settings):
                return make()

        return open_it

    return DeadLetterService(
        opened(lambda: KafkaDeadLetterReader(client, topic, variable))(),
        # Read only by replay: listing needs no KAFKA_GROUP_ID.
        checkpoint=opened(
            lambda: KafkaReplayCheckpoint(client, topic, f"{settings.kafka_group_id}.dlq-replay")
        ),
        republisher=opened(lambda: KafkaRecordRepublisher(client)),
        sink=sink,
        sleep=gevent.sleep,
    )


class Container(containers.DeclarativeContainer):
    settings = providers.Dependency(instance_of=Settings)
    discover_plugins = providers.Object(True)

    metrics_registry = providers.Singleton(new_registry)
    send_retries = providers.Singleton(ResultSendRetries, metrics_registry)

    job_source = providers.Selector(
        settings.provided.job_source,
        kafka=providers.Resource(kafka_source, settings),
        file=providers.Resource(file_source, settings),
    )
    # Only with the Kafka source and a metrics endpoint: it feeds the lag gauge. It
    # depends on the Kafka resource itself, so it is shut down before the source.
    broker_offsets = providers.Resource(broker_offsets_monitor, settings, job_source.kafka)
    # Why TLS to Core fails, if it does: asked on failed calls, by /readyz and at start.
    core_tls = providers.Resource(core_tls_diagnosis, settings)
    # Tries of one call to Core before giving up: 0, for ever, for the worker (a result
    # waits for Core); a finite number for a command that must end (``dlq replay``).
    core_max_attempts = providers.Object(0)
    core_sink = providers.Resource(grpc_sink, settings, send_retries, core_tls, core_max_attempts)
    result_sink = providers.Selector(
        settings.provided.result_sink,
        grpc=core_sink,
        file=providers.Resource(file_sink, settings),
    )
    # Where results Core refused for good go: beside the jobs in Kafka, or to a file.
    refused_results = providers.Selector(
        settings.provided.job_source,
        kafka=providers.Resource(kafka_refused_results, settings),
        file=providers.Resource(file_refused_results, settings),
    )

    http_client = providers.Resource(http_client, settings)
    image_threadpool = providers.Resource(image_threadpool, settings)
    # HTTP and IMAGE_RESIZE are built at their first job (requests and Pillow are ~7 MB a
    # process: see on_first_job.py); the folders they need are checked at start-up.
    http_executor = providers.Singleton(
        on_first_job.http_executor,
        client=http_client,
        max_response_bytes=settings.provided.http_max_response_bytes,
        default_timeout_s=settings.provided.http_max_timeout,
        idempotency_header=settings.provided.http_idempotency_header,
    )
    image_input_root = providers.Singleton(
        image_folder, settings.provided.image_input_root, "IMAGE_INPUT_ROOT", os.R_OK
    )
    image_output_root = providers.Singleton(
        image_folder, settings.provided.image_output_root, "IMAGE_OUTPUT_ROOT", os.W_OK
    )
    image_resize_executor = providers.Singleton(
        on_first_job.image_resize_executor,
        input_root=image_input_root,
        output_root=image_output_root,
        threadpool=image_threadpool,
        http_client=http_client,
        max_source_bytes=settings.provided.image_max_source_bytes,
        max_pixels=settings.provided.image_max_pixels,
        fetch_timeout_s=settings.provided.http_max_timeout,
    )
    executors = providers.Dict(
        {
            JobType.SLEEP: providers.Singleton(SleepExecutor),
            JobType.HTTP: providers.Singleton(on_first_job.on_first_job, http_executor.provider),
            JobType.IMAGE_RESIZE: providers.Singleton(
                on_first_job.on_first_job,
                image_resize_executor.provider,
                image_input_root,
                image_output_root,
            ),
        }
    )
    registry = providers.Singleton(build_registry, executors, discover_plugins)

    # Told the registered types: any other type is counted as ``unknown`` (bounded labels).
    job_metrics = providers.Singleton(
        PrometheusJobObserver,
        metrics_registry,
        job_types=providers.Callable(ExecutorRegistry.job_types, registry),
    )
    job_log = providers.Singleton(LoggingJobObserver)
    # Started before the sink it wraps, so that the gRPC channel to Core is traced.
    tracing = providers.Resource(tracing_resource, settings)
    observers = providers.Callable(job_observers, tracing, job_log, job_metrics)

    # ``dead_letters(topic=…, variable=…, sink=…)``: the operations on one dead-letter topic.
    dead_letters = providers.Factory(dead_letter_service, settings)

    engine = providers.Singleton(
        WorkerEngine,
        source=job_source,
        sink=providers.Callable(traced_sink, tracing, result_sink),
        registry=registry,
        config=providers.Callable(engine_config, settings, registry),
        observers=observers,
        refused_results=refused_results,
        admission_listener=providers.Singleton(
            AdmissionMetrics, metrics_registry, settings.provided.limits
        ),
    )
