"""``jobworker run``: build the worker, run it until its source ends or a signal comes."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable
from typing import Any, TypeVar, cast

import gevent
import structlog
from gevent.event import Event

from jobworker.adapters.file.source import FileJobSource
from jobworker.adapters.grpc.tls_diagnosis import CoreTlsDiagnosis
from jobworker.adapters.kafka.log_noise import held_back_connection_errors
from jobworker.adapters.observability.http_server import ObservabilityServer
from jobworker.application.engine import WorkerEngine
from jobworker.application.engine_config import StopReport
from jobworker.domain.errors import ConfigurationError, JobWorkerError, SourceFailed
from jobworker.entrypoints.container import Container
from jobworker.entrypoints.exit_codes import (
    EXIT_FAILED,
    EXIT_MALFORMED_INPUT,
    EXIT_OK,
    ServiceUnavailable,
)
from jobworker.entrypoints.fleet_status import TOMBSTONE_TIMEOUT_S, start_status_publisher
from jobworker.entrypoints.gc_tuning import settle_heap
from jobworker.entrypoints.logging_setup import say_after_logs
from jobworker.entrypoints.observability import start_observability_server
from jobworker.entrypoints.settings import Settings
from jobworker.entrypoints.settings.modes import JobSourceKind, ResultSinkKind

log = structlog.get_logger("jobworker.worker")

# A finite source (a file) with results that never reached the sink is a failed run:
# there is no redelivery to make up for them.
EXIT_INCOMPLETE = EXIT_FAILED


class ShutdownSignals:
    """First SIGTERM/SIGINT: graceful stop. Second: exit at once (Kafka redelivers).

    Before the worker has started (connecting to Kafka, waiting for Core) the first
    signal only sets ``requested``: start-up gives up, and ``run_worker`` says so.
    """

    def __init__(self) -> None:
        self.requested = Event()
        self.started = False
        self.first: str | None = None
        self._count = 0

    def install(self) -> None:
        for signum in (signal.SIGTERM, signal.SIGINT):
            gevent.signal_handler(signum, self._received, signum)

    def _received(self, signum: int) -> None:
        self._count += 1
        name = signal.Signals(signum).name
        if self._count == 1:
            self.first = name
            if self.started:
                log.info("shutdown requested; finishing in-flight jobs", signal=name)
            self.requested.set()
        else:
            log.warning(
                "second signal: exiting now; unfinished jobs will be redelivered", signal=name
            )
            os._exit(128 + signum)


def run_worker(settings: Settings) -> int:
    _size_hub_threadpool(settings)
    signals = ShutdownSignals()
    signals.install()
    container = Container(settings=settings)
    try:
        if settings.result_sink is ResultSinkKind.GRPC and settings.core_start_timeout > 0:
            # Before the job source exists: no group joined, nothing taken from Kafka.
            # Tracing first, so that it instruments the channel the sink opens.
            container.tracing()
            if not wait_for_core(settings, container, signals.requested):
                return _stopped_before_starting(settings, container, signals)
        # Connecting to Kafka blocks until the brokers answer or the bootstrap times
        # out: a signal must not wait for either (a rollout during a broker outage).
        parts = _unless_stopped(lambda: _build(container), signals.requested)
        if parts is None:
            return _stopped_before_starting(settings, container, signals)
        engine, source, sink = parts
        metrics_server = _start_metrics(settings, container, engine, source, sink)
    except Exception as error:
        container.shutdown_resources()
        if isinstance(error, JobWorkerError):
            raise
        raise JobWorkerError(f"cannot start the worker: {error}") from error
    signals.started = True
    if signals.requested.is_set():  # came after the last check, before ``started``
        return _stopped_before_starting(settings, container, signals, metrics_server)
    log.info(
        "worker starting",
        worker_id=settings.worker_id,
        # The words, not the modes: a text log would show an enum by its name (KAFKA).
        source=str(settings.job_source),
        sink=str(settings.result_sink),
        pool_size=settings.worker_pool_size,
        job_types=container.registry().job_types(),
    )
    if settings.result_sink is ResultSinkKind.GRPC and settings.core_start_timeout == 0:
        _warn_if_core_unreachable(sink, settings.grpc_server_address, container.core_tls())
    settle_heap()
    engine.start()
    status_publisher = start_status_publisher(settings, container, engine, source)
    _wait_for_end(engine, signals.requested, finite=settings.job_source is JobSourceKind.FILE)
    report = engine.stop(settings.shutdown_timeout)
    if status_publisher is not None:
        status_publisher.stop(TOMBSTONE_TIMEOUT_S)  # the tombstone: this worker is gone
    container.shutdown_resources()
    if metrics_server is not None:
        metrics_server.stop()
    file_source = source if isinstance(source, FileJobSource) else None
    log.info(
        "worker stopped",
        finished=dict(container.job_log().finished_by_status),
        **({"malformed_lines": file_source.malformed} if file_source else {}),
        **_report_fields(report),
    )
    status = _exit_status(engine, report, finite=settings.job_source is JobSourceKind.FILE)
    if status == EXIT_OK and file_source and file_source.malformed:
        # Every job read ran and was reported, but lines held no job: a script must
        # be able to tell (the jobs file still has them, and the dead-letter file).
        say_after_logs(f"jobworker: {_malformed_summary(file_source)}")
        return EXIT_MALFORMED_INPUT
    return status


def _malformed_summary(source: FileJobSource) -> str:
    count, lost = source.malformed, source.dead_letters_lost
    said = f"{count} line(s) of {source.path} held no job"
    if lost == count or source.dead_letter_file is None:
        return f"{said}; see the log (no dead-letter file could be written)"
    kept = f"{count - lost} of them are" if lost else "they are"
    return f"{said}; {kept} in {source.dead_letter_file}"


def _build(container: Container) -> tuple[WorkerEngine, Any, Any]:
    engine = container.engine()  # the job source, the sink and the executors with it
    return engine, container.job_source(), container.result_sink()


_T = TypeVar("_T")
# How long a start-up step given up on may take to unwind before the process goes on.
_ABANDON_WAIT_S = 1.0


def _unless_stopped(step: Callable[[], _T], stop: Event) -> _T | None:
    """``step()``'s value, or None when ``stop`` is set first (the step is abandoned).

    The step runs in a greenlet of its own; its exception is raised here, as if it had
    run on this one (a greenlet's own failure would print a traceback).
    """
    outcome: list[Any] = []

    def attempt() -> None:
        try:
            outcome.append((True, step()))
        except Exception as error:  # raised again below, on our greenlet
            outcome.append((False, error))

    running = gevent.spawn(attempt)
    gevent.wait([running, stop], count=1)
    if not outcome:
        # Killed at the point it waits (a socket, kafka-python's I/O thread): what it
        # opened is dropped with the process, which has taken nothing.
        running.kill(block=True, timeout=_ABANDON_WAIT_S)
        return None
    succeeded, value = outcome[0]
    if not succeeded:
        raise value
    return cast("_T", value)


def _stopped_before_starting(
    settings: Settings,
    container: Container,
    signals: ShutdownSignals,
    metrics_server: ObservabilityServer | None = None,
) -> int:
    """A signal came during start-up: no job was taken, so there is nothing to finish."""
    # An abandoned connection to Kafka goes on trying until the process ends: its
    # per-attempt lines are held back, as they were while it was wanted.
    with held_back_connection_errors():
        if settings.result_sink is ResultSinkKind.GRPC:
            # gRPC's connectivity poller (behind Core pings) leaves within 0.2 s of the
            # last ping; a channel closed before then makes it print a traceback.
            gevent.sleep(_GRPC_POLLER_EXIT_S)
        container.shutdown_resources()
        if metrics_server is not None:
            metrics_server.stop()
    log.info("stopped before starting; no job was taken", signal=signals.first)
    return EXIT_OK


def _exit_status(engine: WorkerEngine, report: StopReport, finite: bool) -> int:
    if isinstance(engine.failure, SourceFailed):
        raise engine.failure  # one line naming the cause, exit 2 (see commands.run_cli)
    if engine.failure is not None:
        say_after_logs(f"jobworker: the worker failed: {engine.failure}")
        return EXIT_FAILED
    if finite and not report.clean:
        return EXIT_INCOMPLETE
    return EXIT_OK


def _size_hub_threadpool(settings: Settings) -> None:
    # The hub's threadpool runs gRPC's blocking waits (one per sender) and the DNS
    # look-ups of HTTP jobs (one per pool greenlet at most): room for all of them.
    concurrent_blocking_calls = settings.result_senders + settings.worker_pool_size
    if settings.result_sink is ResultSinkKind.GRPC:
        from jobworker.adapters.grpc.runtime import init_grpc_for_gevent  # noqa: PLC0415

        init_grpc_for_gevent(concurrent_blocking_calls)
    else:
        hub_pool = gevent.get_hub().threadpool
        hub_pool.maxsize = max(hub_pool.maxsize, concurrent_blocking_calls)


def _start_metrics(
    settings: Settings, container: Container, engine: WorkerEngine, source: Any, sink: Any
) -> ObservabilityServer | None:
    port = settings.metrics_port
    if not port:
        return None
    kafka = settings.job_source is JobSourceKind.KAFKA
    broker_offsets = container.broker_offsets() if kafka else None
    core_tls = container.core_tls() if settings.result_sink is ResultSinkKind.GRPC else None
    try:
        server = start_observability_server(
            settings.metrics_host,
            port,
            container.metrics_registry(),
            engine,
            source,
            sink,
            broker_offsets,
            core_tls,
            readiness_requires_core=settings.readiness_requires_core,
            broker_answer_timeout_s=settings.readiness_broker_timeout,
            max_hub_blocked_s=settings.liveness_max_blocked,
        )
    except OSError as error:
        raise ConfigurationError(
            "METRICS_PORT", f"cannot listen on {port}: {error.strerror}"
        ) from None
    log.info("metrics endpoint listening", port=port, paths=["/metrics", "/healthz", "/readyz"])
    return server


def _wait_for_end(engine: WorkerEngine, stop_requested: Event, finite: bool) -> None:
    waits: list[Any] = [stop_requested, engine.failed]
    if finite:
        waits.append(gevent.spawn(engine.wait_until_drained))
    gevent.wait(waits, count=1)
    for waiting in waits[2:]:
        waiting.kill()


_GRPC_POLLER_EXIT_S = 0.5


def wait_for_core(settings: Settings, container: Container, stop: Event) -> bool:
    """True once Core answers; False if a shutdown signal came first.

    Raises ``ServiceUnavailable`` (exit 69) when Core has not answered within
    CORE_START_TIMEOUT: a worker that started anyway would take jobs it cannot report.
    A Core lost after this point is waited for instead, holding results.
    """
    sink, address = container.core_sink(), settings.grpc_server_address
    timeout_s = settings.core_start_timeout
    deadline = time.monotonic() + timeout_s
    announced = False
    while True:
        remaining_s = deadline - time.monotonic()
        # Short pings, so that a signal is noticed within a second.
        if sink.ping(timeout_s=max(0.0, min(1.0, remaining_s))):
            if announced:
                log.info("Core answered", address=address)
            return True
        if stop.is_set():
            return False  # the caller waits for gRPC's poller before closing the channel
        if remaining_s <= 0:
            # gRPC's connectivity poller (behind ping) leaves within 0.2 s of the last
            # ping; a channel closed before then makes it print a traceback.
            gevent.sleep(_GRPC_POLLER_EXIT_S)
            break
        if not announced:
            log.info(
                "waiting for Core to answer before taking jobs",
                address=address,
                core_start_timeout_s=timeout_s,
            )
            announced = True
    tls_reason = container.core_tls().check()
    raise ServiceUnavailable(
        f"cannot reach Core at {address} (GRPC_SERVER_ADDRESS) within {timeout_s:g} s"
        f" (CORE_START_TIMEOUT; 0 starts without it)" + (f": {tls_reason}" if tls_reason else "")
    )


def _warn_if_core_unreachable(sink: Any, address: str, core_tls: CoreTlsDiagnosis) -> None:
    if sink.ping(timeout_s=2.0):
        return
    # A TLS mistake is logged by the diagnosis itself, with its reason, once per change.
    if core_tls.check() is None:
        log.error(
            "Core is unreachable; results are held and retried until it answers",
            address=address,
        )


def _report_fields(report: StopReport) -> dict[str, int]:
    return {
        "jobs_abandoned_in_flight": report.jobs_abandoned_in_flight,
        "jobs_not_started": report.jobs_not_started,
        "results_not_delivered": report.results_not_delivered,
        "jobs_given_back_waiting": report.jobs_given_back_waiting,
    }
