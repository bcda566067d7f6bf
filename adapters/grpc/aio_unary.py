"""``CoreService.ReportResult`` through grpcio's asyncio client on a loop thread of its own."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import grpc

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


class AioReportResult:
    """A ``ReportResult`` callable like grpcio's blocking one, without a thread per call.

    ``self(request, timeout=s)`` returns Core's response or raises ``grpc.RpcError``
    (with ``code()`` and ``details()``), as grpcio's blocking stub does, and
    ``ValueError`` once closed, as grpcio does for a closed channel. Any number of
    greenlets call at once: their calls are in flight together on one asyncio loop
    (``AioLoopThread``), each waiting cooperatively. The channel has the options and TLS
    files it is given (see ``open_aio_channel``).
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
        self._method: Any = None
        self._turns = asyncio.Semaphore(max_in_flight)

        def open_on_loop() -> None:
            with native_aio_threads():
                self._channel = open_aio_channel(
                    target,
                    options,
                    tls_ca_file=tls_ca_file,
                    tls_cert_file=tls_cert_file,
                    tls_key_file=tls_key_file,
                )
            self._method = pb_grpc.CoreServiceStub(self._channel).ReportResult

        self._thread = AioLoopThread(THREAD_NAME)
        self._thread.start(on_start=open_on_loop)

    def __call__(self, request: pb.ReportResultRequest, timeout: float) -> pb.ReportResultResponse:
        method = self._method
        if method is None:
            raise ValueError("ReportResult on a closed channel")
        try:
            response: pb.ReportResultResponse = self._thread.run(
                lambda: self._in_turn(method, request, timeout)
            )
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
        method = self._method
        if method is None:
            raise ValueError("ReportResult on a closed channel")

        async def all_at_once() -> list[object]:
            calls = [self._in_turn(method, request, timeout) for request in requests]
            outcomes: list[object] = await asyncio.gather(*calls, return_exceptions=True)
            return outcomes

        try:
            outcomes = self._thread.run(all_at_once)
        except LoopClosedError as closed:
            raise ValueError(f"ReportResult on a closed channel: {closed}") from None
        errors: list[grpc.RpcError | None] = []
        for outcome in outcomes:
            if isinstance(outcome, grpc.RpcError):
                errors.append(outcome)
            elif isinstance(outcome, asyncio.CancelledError):
                raise ValueError("ReportResult on a closed channel: cancelled")
            elif isinstance(outcome, BaseException):
                raise outcome
            else:
                errors.append(None)
        return errors

    async def _in_turn(
        self, method: Any, request: pb.ReportResultRequest, timeout: float
    ) -> pb.ReportResultResponse:
        async with self._turns:
            response: pb.ReportResultResponse = await method(request, timeout=timeout)
            return response

    def close(self) -> None:
        """Close the channel (calls in flight raise ``ValueError``) and end the thread."""
        self._thread.close(on_close=self._close_on_loop)

    async def _close_on_loop(self) -> None:
        channel, self._channel, self._method = self._channel, None, None
        if channel is not None:
            # Cancels what is in flight. The last reference goes on this thread, so
            # grpcio's shutdown of its poller (when this was the last aio channel)
            # runs here too.
            await channel.close()
