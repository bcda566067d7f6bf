"""Reports results to Core with ``ReportResults`` or unary ``ReportResult`` calls,
retrying what is transient."""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypedDict

import gevent
import grpc
import structlog
from google.protobuf.message import Message

from jobworker.adapters.codec import result_to_proto, results_request
from jobworker.adapters.grpc.aio_unary import AioReportResult
from jobworker.adapters.grpc.channel import client_channel_options, open_channel
from jobworker.adapters.proto.jobworker.v1 import jobworker_pb2 as pb
from jobworker.adapters.proto.jobworker.v1 import jobworker_pb2_grpc as pb_grpc
from jobworker.application.retry import full_jitter_delay
from jobworker.domain.errors import (
    BatchesUnsupported,
    ResultNotDelivered,
    ResultRefused,
    ResultTooLarge,
)
from jobworker.domain.model import JobResult

log = structlog.get_logger(__name__)


@dataclass(frozen=True, slots=True)
class RetryNotice:
    """What a retry listener hears before each pause: which result, why, how long."""

    job_id: str
    code: str  # the gRPC status code name
    details: str  # Core's details, or gRPC's for a transport error
    attempt: int  # the failed attempt, from 1
    delay_s: float


RetryListener = Callable[[RetryNotice], None]


class _TlsFiles(TypedDict):
    tls_ca_file: str | Path | None
    tls_cert_file: str | Path | None
    tls_key_file: str | Path | None


# Codes after which the same request may succeed later. DEADLINE_EXCEEDED and ABORTED
# may mean Core stored the result and the answer was lost: the retry is then a duplicate,
# which Core de-duplicates by job_id. RESOURCE_EXHAUSTED is Core shedding load, but also
# what a server answers a message above its size limit, for ever: see
# ``RESOURCE_EXHAUSTED_REFUSAL_AFTER``.
RETRYABLE_CODES = frozenset(
    {
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        grpc.StatusCode.ABORTED,
    }
)

# gRPC servers receive at most 4 MiB per message unless configured otherwise.
DEFAULT_MAX_MESSAGE_BYTES = 4 * 1024 * 1024
# RESOURCE_EXHAUSTED this many times in a row for one result is Core refusing that
# result (a receive limit below ours), not load: it becomes a ResultRefused. gRPC's own
# answer to an oversized message says so, and is a refusal at once.
RESOURCE_EXHAUSTED_REFUSAL_AFTER = 3
_OVERSIZED_MESSAGE = "larger than max"
# DEADLINE_EXCEEDED this many times in a row for one request makes the sink ask Core an
# empty ReportResults: when that is answered at once, Core hangs on this request only
# (a result it chokes on), which is a refusal, not an outage.
DEADLINE_EXCEEDED_PROBE_AFTER = 3
_NO_ANSWER = frozenset({grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.UNAVAILABLE})


class GrpcResultSink:
    """The ``ResultSink`` port over gRPC: ``CoreService.ReportResult``, one call per result.

    ``send`` retries UNAVAILABLE, DEADLINE_EXCEEDED, RESOURCE_EXHAUSTED and ABORTED with
    exponential backoff and full jitter, without limit by default (a Core that is down
    for a while must lose nothing; the caller's bounded queues apply the backpressure).
    Every other status is final. Sleeps between attempts are ``gevent.sleep``, so a
    waiting ``send`` yields to other greenlets and a ``kill()`` of its greenlet
    interrupts it with ``GreenletExit``. Works in unpatched processes and threads too.
    Safe to share between greenlets and threads.

    Once Core has answered ``ReportResults`` UNIMPLEMENTED (a Core with only the
    original RPC), every result is one ``ReportResult``. With ``aio_unary`` (the
    default) those calls then go through grpcio's asyncio client on one native thread
    (``AioReportResult``), started at that moment, and a batch's calls are all in
    flight at once: in a gevent process grpcio's blocking stub hands each call to a
    thread of the hub's threadpool and back, which costs more than the call, and one
    call per sender at a time leaves Core's round trips to set the pace. Until then,
    and for every ``ReportResults`` call, the blocking stub.
    """

    def __init__(
        self,
        target: str,
        *,
        call_timeout_s: float = 5.0,
        backoff_base_s: float = 0.1,
        backoff_cap_s: float = 10.0,
        max_attempts: int = 0,
        on_retry: RetryListener | None = None,
        tls_ca_file: str | Path | None = None,
        tls_cert_file: str | Path | None = None,
        tls_key_file: str | Path | None = None,
        keepalive_time_s: float = 60.0,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
        aio_unary: bool = True,
    ) -> None:
        """Open a channel to Core at ``target`` (``host:port``); no connection is made yet.

        ``call_timeout_s`` is the deadline of each attempt. ``max_attempts`` of 0 retries
        for ever. ``on_retry`` must not raise. TLS is used when any ``tls_*`` file is
        given (see ``jobworker.adapters.grpc.channel.open_channel``). A result whose request is
        larger than ``max_message_bytes`` is refused without a call. ``aio_unary``: see
        the class. Raises ``ValueError`` for impossible numbers and
        ``ConfigurationError`` for bad TLS files.
        """
        _require(call_timeout_s > 0, f"call_timeout_s must be positive, got {call_timeout_s}")
        _require(backoff_base_s > 0, f"backoff_base_s must be positive, got {backoff_base_s}")
        _require(
            backoff_cap_s >= backoff_base_s,
            f"backoff_cap_s ({backoff_cap_s}) must be at least backoff_base_s ({backoff_base_s})",
        )
        _require(
            max_attempts >= 0, f"max_attempts must be 0 (unlimited) or more, got {max_attempts}"
        )
        _require(keepalive_time_s > 0, f"keepalive_time_s must be positive, got {keepalive_time_s}")
        _require(
            max_message_bytes > 0, f"max_message_bytes must be positive, got {max_message_bytes}"
        )
        self._target = target
        self._call_timeout_s = call_timeout_s
        self._backoff_base_s = backoff_base_s
        self._backoff_cap_s = backoff_cap_s
        self._max_attempts = max_attempts
        self._on_retry = on_retry
        self._max_message_bytes = max_message_bytes
        self._options = client_channel_options(
            keepalive_time_s, max_reconnect_backoff_s=backoff_cap_s
        )
        self._tls_files = _TlsFiles(
            tls_ca_file=tls_ca_file, tls_cert_file=tls_cert_file, tls_key_file=tls_key_file
        )
        self._channel = open_channel(target, self._options, **self._tls_files)
        stub = pb_grpc.CoreServiceStub(self._channel)
        self._report_result: Callable[..., Any] = stub.ReportResult
        self._report_results = stub.ReportResults
        self._batches_supported = True
        self._aio_unary = aio_unary
        self._aio_report_result: AioReportResult | None = None
        self._switch_lock = threading.Lock()
        self._closed = False

    def send(self, result: JobResult) -> None:
        """Deliver ``result`` to Core, blocking cooperatively until Core accepted it.

        Raises ``ResultRefused`` when Core answers with a final status, or with
        RESOURCE_EXHAUSTED for this result again and again (its code and details are on
        the error); ``ResultTooLarge`` when the request is above the message limit (no
        call is made); ``ResultNotDelivered`` when ``max_attempts`` attempts all failed
        or the sink is (or gets) closed. ``GreenletExit`` from a kill propagates.
        """
        request = self._unary_request(result)
        self._call(
            self._report_result, request, result.job_id, f"the result of job {result.job_id!r}"
        )

    def _unary_request(self, result: JobResult) -> pb.ReportResultRequest:
        """``result``'s request; ``ResultTooLarge`` when it is above the message limit."""
        request = pb.ReportResultRequest(result=result_to_proto(result))
        size = request.ByteSize()
        if size > self._max_message_bytes:
            raise ResultTooLarge(
                f"result of job {result.job_id!r} is {size} bytes on the wire, above the "
                f"{self._max_message_bytes}-byte message limit for Core",
                size,
                self._max_message_bytes,
            )
        return request

    def send_batch(self, results: Sequence[JobResult]) -> None:
        """Deliver ``results`` with ``ReportResults`` calls, all or nothing per call.

        A request above the message limit is split in halves (and so on) before it is
        sent; each part is retried whole like ``send`` retries one result. Raises what
        ``send`` raises, for the part that failed (parts sent before it stay
        delivered: Core is idempotent by job id, so sending them again is safe).

        Once Core has answered UNIMPLEMENTED, for good: with ``aio_unary``, one
        ``ReportResult`` per result, all in flight at once and retried as one batch
        (see ``_send_each_at_once``); without it (or when grpc.aio could not start),
        ``BatchesUnsupported``, from then on without a call.
        """
        if not results:
            return
        if not self._batches_supported:
            if self._aio_report_result is None:
                raise BatchesUnsupported("Core does not implement ReportResults")
            self._send_each_at_once(results)
            return
        if len(results) == 1:
            self.send(results[0])
            return
        request = results_request(results)
        if request.ByteSize() > self._max_message_bytes:
            middle = len(results) // 2
            self.send_batch(results[:middle])
            self.send_batch(results[middle:])
            return
        first = results[0].job_id
        what = f"a batch of {len(results)} results (the first of job {first!r})"
        try:
            self._call(self._report_results, request, first, what)
        except ResultRefused as refusal:
            if refusal.code != grpc.StatusCode.UNIMPLEMENTED.name:
                raise
            self._unary_from_now_on()
            if self._aio_report_result is None:
                raise BatchesUnsupported("Core does not implement ReportResults") from refusal
            self._send_each_at_once(results)

    def _send_each_at_once(self, results: Sequence[JobResult]) -> None:
        """``results`` as one ``ReportResult`` each, all in flight at once, retried as one.

        For a Core without ``ReportResults``, over ``AioReportResult``: the batch keeps
        the batched path's promises (all or nothing, one retry sequence with its
        backoff, notices and refusal rules) while its calls travel to the loop thread
        and back together. Each attempt re-sends only the results not yet accepted.
        """
        aio = self._aio_report_result
        assert aio is not None
        pending: list[pb.ReportResultRequest] = []
        for result in results:
            pending.append(self._unary_request(result))
        first = results[0].job_id
        what = f"{len(results)} results, one ReportResult each (the first of job {first!r})"

        def attempt_all() -> grpc.RpcError | None:
            if self._closed:
                raise ResultNotDelivered(f"{what} not sent: the sink is closed")
            try:
                errors = aio.call_many(pending, self._call_timeout_s)
            except ValueError as error:
                raise ResultNotDelivered(f"{what} not delivered: the sink is closed") from error
            failed = [
                (request, error)
                for request, error in zip(pending, errors, strict=True)
                if error is not None
            ]
            pending[:] = [request for request, _ in failed]
            # A final answer for one result is the batch's; else the first transient one.
            final = [error for _, error in failed if _is_final(error)]
            return final[0] if final else (failed[0][1] if failed else None)

        self._retry(attempt_all, first, what)

    def _unary_from_now_on(self) -> None:
        with self._switch_lock:
            if not self._batches_supported or self._closed:
                return  # another sender switched first
            if self._aio_unary:
                # The loop thread only now: a Core with both RPCs never needs it.
                try:
                    self._aio_report_result = AioReportResult(
                        self._target, self._options, **self._tls_files
                    )
                except Exception:
                    # Slower, not wrong: the blocking stub still delivers every result.
                    log.exception(
                        "cannot start grpc.aio for ReportResult; using the blocking client"
                    )
                else:
                    self._report_result = self._aio_report_result
            self._batches_supported = False
        log.warning(
            "Core does not implement ReportResults: sending one ReportResult per result"
            " from now on",
            address=self._target,
            client="blocking" if self._aio_report_result is None else "grpc.aio",
        )

    def _call(self, method: Callable[..., Any], request: Message, job_id: str, what: str) -> None:
        """Call until Core accepts ``request``; see ``send`` for what is retried."""
        self._retry(lambda: self._attempt(method, request, what), job_id, what)

    def _retry(
        self, attempt_once: Callable[[], grpc.RpcError | None], job_id: str, what: str
    ) -> None:
        """``attempt_once`` until it returns None; see ``send`` for what is retried."""
        attempt = 0
        exhausted = 0
        timeouts = 0
        while True:
            attempt += 1
            error = attempt_once()
            if error is None:
                if attempt > 1:
                    # Retries are logged sparsely in an outage; say when it is over.
                    log.info(
                        "Core accepted a result after retrying",
                        address=self._target,
                        job_id=job_id,
                        attempts=attempt,
                    )
                return
            code = error.code()
            details = error.details() or ""
            exhausted = exhausted + 1 if code == grpc.StatusCode.RESOURCE_EXHAUSTED else 0
            timeouts = timeouts + 1 if code == grpc.StatusCode.DEADLINE_EXCEEDED else 0
            if (
                code not in RETRYABLE_CODES
                or exhausted >= RESOURCE_EXHAUSTED_REFUSAL_AFTER
                or (exhausted and _OVERSIZED_MESSAGE in details)
            ):
                raise ResultRefused(f"Core refused {what}: {_describe(error)}", code.name, details)
            if timeouts and timeouts % DEADLINE_EXCEEDED_PROBE_AFTER == 0 and self._core_answers():
                details = (
                    f"no answer within {self._call_timeout_s:g}s (GRPC_CALL_TIMEOUT), {timeouts}"
                    " times in a row, while Core answers other calls at once"
                )
                raise ResultRefused(f"Core never answers {what}: {details}", code.name, details)
            if self._max_attempts and attempt >= self._max_attempts:
                raise ResultNotDelivered(
                    f"gave up on {what} after {attempt} "
                    f"attempt{'s' if attempt > 1 else ''} to reach Core at {self._target}: "
                    f"{_describe(error)}"
                )
            delay_s = full_jitter_delay(attempt, self._backoff_base_s, self._backoff_cap_s)
            if self._on_retry is not None:
                self._on_retry(RetryNotice(job_id, code.name, details, attempt, delay_s))
            gevent.sleep(delay_s)

    def _core_answers(self) -> bool:
        """Whether Core answers an empty ``ReportResults`` in time, whatever it says.

        Tells a Core that never answers one request (it hangs on that result) from a
        Core that is slow or away: only the first is a refusal.
        """
        error = self._attempt(self._report_results, pb.ReportResultsRequest(), "a probe")
        return error is None or error.code() not in _NO_ANSWER

    def ping(self, timeout_s: float = 1.0) -> bool:
        """True when the channel to Core is connected (or connects within ``timeout_s``).

        For readiness probes: it proves Core's address accepts gRPC connections (and the
        TLS handshake, when used), not that Core would accept a result. False once closed.
        """
        if self._closed:
            return False
        ready = grpc.channel_ready_future(self._channel)
        try:
            ready.result(timeout=timeout_s)
        except grpc.FutureTimeoutError:
            return False
        finally:
            ready.cancel()
        return True

    def close(self) -> None:
        """Close the channel; calls in flight end with ResultNotDelivered. Idempotent."""
        with self._switch_lock:
            if self._closed:
                return
            self._closed = True
        self._channel.close()
        if self._aio_report_result is not None:
            self._aio_report_result.close()

    def _attempt(
        self, method: Callable[..., Any], request: Message, what: str
    ) -> grpc.RpcError | None:
        """One call; None when Core accepted the request, else the call's error."""
        if self._closed:
            raise ResultNotDelivered(f"{what} not sent: the sink is closed")
        try:
            method(request, timeout=self._call_timeout_s)
        except grpc.RpcError as error:
            if self._closed:
                raise ResultNotDelivered(
                    f"{what} not delivered: the sink was closed during the call"
                ) from error
            return error
        except ValueError as error:
            # grpcio raises ValueError for a call on a channel closed under our feet.
            raise ResultNotDelivered(f"{what} not sent: the sink is closed") from error
        return None


def _is_final(error: grpc.RpcError) -> bool:
    """Whether ``error`` refuses its request at once, whatever came before it."""
    return error.code() not in RETRYABLE_CODES or _OVERSIZED_MESSAGE in (error.details() or "")


def _describe(error: grpc.RpcError) -> str:
    details = error.details() or "no details"
    return f"{error.code().name}: {details}"


def _require(condition: bool, problem: str) -> None:
    if not condition:
        raise ValueError(problem)
