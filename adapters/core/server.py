"""The reference Core's gRPC server: ``CoreService.ReportResult(s)`` into a ``ResultStore``."""

from __future__ import annotations

import signal
import sqlite3
from collections.abc import Callable
from concurrent import futures
from pathlib import Path
from types import FrameType

import grpc
import structlog
from gevent import monkey

from jobworker.adapters.codec import result_from_proto
from jobworker.adapters.core.store import ResultStore
from jobworker.adapters.grpc.runtime import init_grpc_for_gevent
from jobworker.adapters.proto.jobworker.v1 import jobworker_pb2 as pb
from jobworker.adapters.proto.jobworker.v1 import jobworker_pb2_grpc as pb_grpc
from jobworker.domain.errors import JobWorkerError

logger = structlog.get_logger(__name__)

_SERVER_OPTIONS = [
    # A second Core on the same port must fail to start, not share the traffic.
    ("grpc.so_reuseport", 0),
    # Clients may keep idle connections alive with pings every 30 s or more.
    ("grpc.http2.min_ping_interval_without_data_ms", 30_000),
    ("grpc.keepalive_permit_without_calls", 1),
]


class CoreServerError(JobWorkerError):
    """Core cannot serve (for example, its address is taken); the message says why."""


class CoreServicer(pb_grpc.CoreServiceServicer):
    """Validates each reported result and records it; repeated job ids are counted once."""

    def __init__(self, store: ResultStore) -> None:
        self._store = store

    def ReportResult(  # noqa: N802 - the name is the RPC's, fixed by the generated base
        self, request: pb.ReportResultRequest, context: grpc.ServicerContext
    ) -> pb.ReportResultResponse:
        problem = _invalid_request_reason(request)
        if problem is not None:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, problem)
        result = result_from_proto(request.result)
        try:
            first = self._store.record(result)
        except sqlite3.Error as exc:
            # Likely passing (disk full, locked file): the worker retries UNAVAILABLE.
            logger.exception("core.store_failed", job_id=result.job_id)
            context.abort(grpc.StatusCode.UNAVAILABLE, f"result store failed: {exc}")
        if not first:
            logger.info("core.duplicate_report", job_id=result.job_id, status=result.status)
        return pb.ReportResultResponse()

    def ReportResults(  # noqa: N802 - the RPC's name
        self, request: pb.ReportResultsRequest, context: grpc.ServicerContext
    ) -> pb.ReportResultsResponse:
        """All results in one SQLite transaction: every one is stored, or none is."""
        for index, message in enumerate(request.results):
            problem = _invalid_result_reason(message)
            if problem is not None:
                # The whole batch is refused: the worker narrows it down to this one.
                context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"results[{index}]: {problem}")
        results = [result_from_proto(message) for message in request.results]
        try:
            firsts = self._store.record_all(results)
        except sqlite3.Error as exc:
            logger.exception("core.store_failed", results=len(results))
            context.abort(grpc.StatusCode.UNAVAILABLE, f"result store failed: {exc}")
        duplicates = [r.job_id for r, first in zip(results, firsts, strict=True) if not first]
        if duplicates:
            logger.info("core.duplicate_reports", job_ids=duplicates[:20], count=len(duplicates))
        return pb.ReportResultsResponse()


def _invalid_request_reason(request: pb.ReportResultRequest) -> str | None:
    if not request.HasField("result"):
        return "result is required"
    problem = _invalid_result_reason(request.result)
    return None if problem is None else f"result.{problem}"


def _invalid_result_reason(result: pb.JobResult) -> str | None:
    if not result.job_id:
        return "job_id is required"
    if result.status == pb.JobResult.Status.STATUS_UNSPECIFIED:
        return "status is required (STATUS_UNSPECIFIED is not an outcome)"
    return None


class CoreServer:
    """A gRPC server for ``CoreServicer`` on one address. Lifecycle: start, stop, wait."""

    def __init__(
        self,
        address: str,
        store: ResultStore,
        max_workers: int = 16,
        *,
        max_concurrent_rpcs: int | None = None,
    ) -> None:
        """Serve ``store`` on ``address`` (``host:port``; port 0 picks a free one).

        ``max_workers`` handlers run at once. Calls beyond ``max_concurrent_rpcs`` (when
        given) are refused with RESOURCE_EXHAUSTED, which senders retry later.
        """
        if max_workers < 1:
            raise ValueError(f"max_workers must be at least 1, got {max_workers}")
        self._address = address
        self._server = grpc.server(
            futures.ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="core"),
            options=_SERVER_OPTIONS,
            maximum_concurrent_rpcs=max_concurrent_rpcs,
        )
        pb_grpc.add_CoreServiceServicer_to_server(CoreServicer(store), self._server)

    def start(self) -> int:
        """Bind and start serving; returns the bound port. Raises ``CoreServerError``."""
        try:
            port = self._server.add_insecure_port(self._address)
        except RuntimeError as exc:
            raise CoreServerError(f"cannot listen on {self._address}: {exc}") from exc
        if port == 0:
            raise CoreServerError(f"cannot listen on {self._address}: the address is not usable")
        self._server.start()
        return port

    def stop(self, grace_s: float | None = 5.0) -> None:
        """Refuse new calls, let calls in flight finish for ``grace_s``, then end them.

        Blocks until the server is stopped. Idempotent; a later call with a shorter
        grace (None: none) stops sooner.
        """
        self._server.stop(grace_s).wait()

    def begin_stop(self, grace_s: float | None = 5.0) -> None:
        """``stop`` without waiting for it: ``wait`` tells when the server has stopped."""
        self._server.stop(grace_s)

    def wait(self, timeout_s: float | None = None) -> bool:
        """Block until the server stops or ``timeout_s`` passes; True when it stopped."""
        timed_out = self._server.wait_for_termination(timeout_s)
        return not timed_out


def serve_core(
    address: str,
    db_path: str | Path,
    *,
    max_workers: int = 16,
    grace_s: float = 5.0,
    on_started: Callable[[int], None] | None = None,
) -> None:
    """Run the reference Core until SIGTERM or SIGINT, then stop gracefully and return.

    Call from the main thread. In a gevent-patched process it sets gRPC up for gevent
    itself. ``on_started`` gets the bound port once Core is serving. The first signal
    lets calls in flight finish for ``grace_s``; a second one ends them at once.
    Raises ``ResultStoreError`` or ``CoreServerError`` when Core cannot start.
    """
    if monkey.is_module_patched("socket"):
        init_grpc_for_gevent(max_workers)
    with ResultStore(db_path) as store, _StopSignals() as signals:
        server = CoreServer(address, store, max_workers)
        port = server.start()
        logger.info("core.serving", address=address, port=port, db=str(db_path))
        if on_started is not None:
            on_started(port)
        while signals.received == 0:
            server.wait(_SIGNAL_POLL_S)
        logger.info("core.stopping", grace_s=grace_s)
        server.begin_stop(grace_s)
        while not server.wait(_SIGNAL_POLL_S):
            if signals.received > 1:
                server.begin_stop(None)
        logger.info("core.stopped", **store.summary())


# Signal handlers only count; the main loop looks at the count this often. Doing the
# work inside a handler could re-enter a lock the interrupted main thread holds.
_SIGNAL_POLL_S = 0.2


class _StopSignals:
    """Counts SIGTERM and SIGINT while active; restores the previous handlers on exit."""

    def __init__(self) -> None:
        self.received = 0
        self._previous: dict[signal.Signals, object] = {}

    def __enter__(self) -> _StopSignals:
        for sig in (signal.SIGTERM, signal.SIGINT):
            self._previous[sig] = signal.signal(sig, self._count)
        return self

    def __exit__(self, *exc_info: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)  # type: ignore[arg-type]

    def _count(self, signum: int, frame: FrameType | None) -> None:
        self.received += 1
