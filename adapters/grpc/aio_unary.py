"""``CoreService.ReportResult`` through grpcio's asyncio client on a loop thread of its own."""

from __future__ import annotations

import asyncio
import importlib
import time
from collections import deque
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import grpc
from gevent import monkey
from grpc.aio import _call as aio_call  # _create_rpc_error: the error grpc.aio raises

from jobworker.adapters.grpc.aio_loop import AioLoopThread, LoopClosedError
from jobworker.adapters.grpc.channel import ChannelOptions, open_aio_channel
from jobworker.adapters.grpc.runtime import native_aio_threads
from jobworker.adapters.proto.jobworker.v1 import jobworker_pb2 as pb
from jobworker.adapters.proto.jobworker.v1 import jobworker_pb2_grpc as pb_grpc

THREAD_NAME = "jobworker-grpc-aio"
# Calls out at once. The original Go worker had 16; a batch of 100 results from each of
# several senders must not land on a Core sized for that all at once. 64 keeps the loop
# thread, not Core's round trip, the limit on loopback (docs/benchmarks.md).
MAX_IN_FLIGHT = 64
_NO_METADATA: tuple[tuple[str, str], ...] = ()
_NativeRLock: Any = monkey.get_original("_thread", "RLock")
_CANCELLED = "Locally cancelled by application!"  # grpc.aio's own words


class AioReportResult:
    """A ``ReportResult`` callable like grpcio's blocking one, without a thread per call.

    ``self(request, timeout=s)`` returns Core's response or raises ``grpc.RpcError``
    (with ``code()`` and ``details()``), as grpcio's blocking stub does, and
    ``ValueError`` once closed, as grpcio does for a closed channel. Any number of
    greenlets call at once: their calls are in flight together on one asyncio loop
    (``AioLoopThread``), each waiting cooperatively. The channel has the options and TLS
    files it is given (see ``open_aio_channel``).

    A call goes straight to grpc.aio's Cython call object (``_RawCalls``), not through
    its Python ``UnaryUnaryCall``: that layer (a task, done callbacks, metadata objects,
    a lock per call) cost more of the loop thread's time than the call itself (issue
    21). With client interceptors on the channel (tracing), the public multicallable.
    """

    def __init__(
        self,
        target: str,
        options: ChannelOptions,
        *,
        tls_ca_file: str | Path | None = None,
        tls_cert_file: str | Path | None = None,
        tls_key_file: str | Path | None = None,
        max_in_flight: int = MAX_IN_FLIGHT,
    ) -> None:
        """Start the loop thread and open the channel on it (no connection yet).

        At most ``max_in_flight`` calls are out at once; the others wait their turn
        (their deadline starts with their call). Holds the calling thread for the few
        milliseconds the start takes: grpcio's poller thread must be started while
        nothing else makes a gRPC thread (see ``native_aio_threads``). Raises
        ``ConfigurationError`` for bad TLS files.
        """
        if max_in_flight < 1:
            raise ValueError(f"max_in_flight must be at least 1, got {max_in_flight}")
        self._channel: Any = None
        self._calls: _RawCalls | _PublicCalls | None = None
        self._max_in_flight = max_in_flight

        def open_on_loop() -> None:
            with native_aio_threads():
                self._channel = open_aio_channel(
                    target,
                    options,
                    tls_ca_file=tls_ca_file,
                    tls_cert_file=tls_cert_file,
                    tls_key_file=tls_key_file,
                )
            method = pb_grpc.CoreServiceStub(self._channel).ReportResult
            turns = _Turns(max_in_flight)
            self._calls = (
                _RawCalls(method, turns) if _RawCalls.fits(method) else _PublicCalls(method, turns)
            )

        _native_observability_lock()
        self._thread = AioLoopThread(THREAD_NAME)
        self._thread.start(on_start=open_on_loop)

    def __call__(self, request: pb.ReportResultRequest, timeout: float) -> pb.ReportResultResponse:
        calls = self._calls
        if calls is None:
            raise ValueError("ReportResult on a closed channel")

        async def one() -> pb.ReportResultResponse:
            response, error = await calls.one(request, timeout)
            if error is not None:
                raise error
            return response

        try:
            response: pb.ReportResultResponse = self._thread.run(one)
        except LoopClosedError as closed:
            raise ValueError(f"ReportResult on a closed channel: {closed}") from None
        return response

    def call_many(
        self, requests: Sequence[pb.ReportResultRequest], timeout: float
    ) -> list[grpc.RpcError | None]:
        """One call per request, all in flight at once; each one's error, or None.

        One trip to the loop thread and back for them all. Raises ``ValueError`` once
        closed (or when closed meanwhile), as ``self(...)`` does.
        """
        calls = self._calls
        if calls is None:
            raise ValueError("ReportResult on a closed channel")
        try:
            errors: list[grpc.RpcError | None] = self._thread.run(
                lambda: calls.many(requests, timeout)
            )
        except LoopClosedError as closed:
            raise ValueError(f"ReportResult on a closed channel: {closed}") from None
        return errors

    def close(self) -> None:
        """Close the channel (calls in flight raise ``ValueError``) and end the thread."""
        self._thread.close(on_close=self._close_on_loop)

    async def _close_on_loop(self) -> None:
        channel, self._channel = self._channel, None
        calls, self._calls = self._calls, None
        if calls is not None:
            calls.cancel_all()
        if channel is not None:
            # Cancels what is in flight. The last reference goes on this thread, so
            # grpcio's shutdown of its poller (when this was the last aio channel)
            # runs here too.
            await channel.close()


def _native_observability_lock() -> None:
    """Make grpcio's observability lock a real one: it is shared with the loop thread.

    grpcio takes ``grpc._observability._plugin_lock`` in every call it makes: blocking
    calls on the hub's greenlets, and every grpc.aio call on the loop thread. Created
    at grpc's import, after ``patch_all``, it is a gevent lock, whose wake-ups across
    threads get lost: greenlets were seen waiting on it for ever while the loop thread
    had let it go, stalling every blocking call (tests/integration/
    test_grpc_aio_unary.py). Holders only read a global under it and never wait, so a
    native lock makes the hub wait at most until the loop thread next holds the GIL.
    """
    if not monkey.is_module_patched("threading"):
        return  # a real lock already
    observability: Any = importlib.import_module("grpc._observability")
    lock = getattr(observability, "_plugin_lock", None)
    if lock is not None and not isinstance(lock, _NativeRLock):
        observability._plugin_lock = _NativeRLock()


class _Turns:
    """At most ``limit`` calls out at once, turns given in order of asking (loop thread)."""

    def __init__(self, limit: int) -> None:
        self.free = limit
        self._waiting: deque[asyncio.Future[None]] = deque()

    async def wait(self) -> None:
        """Wait for a turn when none is free (the caller checks ``free`` first)."""
        turn: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiting.append(turn)
        try:
            await turn
        except asyncio.CancelledError:
            if turn.done() and not turn.cancelled():
                self.give_back()  # handed over just as the waiter went away
            raise

    def take(self) -> bool:
        """A turn at once, when one is free and nobody waits before."""
        if self.free > 0 and not self._waiting:
            self.free -= 1
            return True
        return False

    def give_back(self, *_: object) -> None:
        while self._waiting:
            turn = self._waiting.popleft()
            if not turn.done():
                turn.set_result(None)  # the turn goes to the next waiter as it is
                return
        self.free += 1


class _RawCalls:
    """Calls through grpc.aio's Cython call object: one task each, nothing else.

    The same C-core batch as ``UnaryUnaryCall`` makes, and the same error on failure
    (``AioRpcError``, built by grpc.aio's own function from the call's status). The
    response is not decoded for ``many``: Core's answer to ``ReportResult`` is empty.
    """

    def __init__(self, method: Any, turns: _Turns) -> None:
        self._channel = method._channel  # cygrpc.AioChannel
        self._path: bytes = method._method
        self._handle: int = method._registered_call_handle
        self._turns = turns
        self._out: set[Any] = set()  # calls in flight, for close to cancel

    @staticmethod
    def fits(method: Any) -> bool:
        """Whether ``method`` (the stub's multicallable) can be bypassed: no
        interceptors, and the grpcio internals this class uses are there."""
        return (
            not getattr(method, "_interceptors", True)
            and hasattr(method, "_channel")
            and hasattr(method, "_method")
            and hasattr(method, "_registered_call_handle")
            and hasattr(aio_call, "_create_rpc_error")
        )

    async def one(
        self, request: pb.ReportResultRequest, timeout: float
    ) -> tuple[pb.ReportResultResponse, grpc.RpcError | None]:
        if not self._turns.take():
            await self._turns.wait()
        call, task = self._start(request.SerializeToString(), timeout)
        answer = await self._outcome(call, task)
        if isinstance(answer, grpc.RpcError):
            return pb.ReportResultResponse(), answer
        return pb.ReportResultResponse.FromString(answer), None

    async def many(
        self, requests: Sequence[pb.ReportResultRequest], timeout: float
    ) -> list[grpc.RpcError | None]:
        started: list[tuple[Any, asyncio.Task[bytes | None]]] = []
        try:
            for request in requests:
                if not self._turns.take():
                    await self._turns.wait()
                started.append(self._start(request.SerializeToString(), timeout))
            errors: list[grpc.RpcError | None] = []
            for call, task in started:
                answer = await self._outcome(call, task)
                errors.append(answer if isinstance(answer, grpc.RpcError) else None)
        except asyncio.CancelledError:
            for call, _ in started:
                if not call.done():
                    call.cancel(_CANCELLED)  # its task then ends, and gives its turn back
            raise
        return errors

    def _start(self, request: bytes, timeout: float) -> tuple[Any, asyncio.Task[bytes | None]]:
        """Make the call (its deadline from now) and its task; the turn is the call's."""
        try:
            call = self._channel.call(self._path, time.time() + timeout, None, None, self._handle)
        except BaseException:
            self._turns.give_back()
            raise
        task = asyncio.get_running_loop().create_task(call.unary_unary(request, _NO_METADATA))
        self._out.add(call)

        def finished(_: object) -> None:
            self._out.discard(call)
            self._turns.give_back()

        task.add_done_callback(finished)
        return call, task

    async def _outcome(self, call: Any, task: asyncio.Task[bytes | None]) -> bytes | grpc.RpcError:
        """The call's response bytes, or its error as grpc.aio raises it."""
        try:
            answer = await task
        except asyncio.CancelledError:
            if not call.done():
                call.cancel(_CANCELLED)  # in Core too, as UnaryUnaryCall does
            raise
        if call.is_ok():
            return answer or b""
        if call.is_locally_cancelled():
            raise asyncio.CancelledError()  # closed under it: not Core's answer
        return aio_call._create_rpc_error(await call.initial_metadata(), await call.status())

    def cancel_all(self) -> None:
        for call in list(self._out):
            if not call.done():
                call.cancel(_CANCELLED)


class _PublicCalls:
    """Calls through the stub's multicallable, for a channel with interceptors."""

    def __init__(self, method: Any, turns: _Turns) -> None:
        self._method = method
        self._turns = turns

    async def one(
        self, request: pb.ReportResultRequest, timeout: float
    ) -> tuple[pb.ReportResultResponse, grpc.RpcError | None]:
        try:
            return await self._in_turn(request, timeout), None
        except grpc.RpcError as error:
            return pb.ReportResultResponse(), error

    async def many(
        self, requests: Sequence[pb.ReportResultRequest], timeout: float
    ) -> list[grpc.RpcError | None]:
        calls = [self._in_turn(request, timeout) for request in requests]
        outcomes: list[object] = await asyncio.gather(*calls, return_exceptions=True)
        errors: list[grpc.RpcError | None] = []
        for outcome in outcomes:
            if isinstance(outcome, grpc.RpcError):
                errors.append(outcome)
            elif isinstance(outcome, BaseException):
                raise outcome  # CancelledError (closed) too: the caller says closed
            else:
                errors.append(None)
        return errors

    async def _in_turn(
        self, request: pb.ReportResultRequest, timeout: float
    ) -> pb.ReportResultResponse:
        if not self._turns.take():
            await self._turns.wait()
        try:
            response: pb.ReportResultResponse = await self._method(request, timeout=timeout)
        finally:
            self._turns.give_back()
        return response

    def cancel_all(self) -> None:
        """Nothing to do: the channel's close cancels the calls it made."""
