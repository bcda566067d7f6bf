"""GrpcResultSink's unary path on grpc.aio, against real gRPC servers on loopback.

A Core written against the original single RPC answers ``ReportResults`` UNIMPLEMENTED;
from then on the sink sends one ``ReportResult`` per result through grpcio's asyncio
client on a native loop thread. Each test first makes the sink meet such a Core, then
checks that the unary path keeps what the blocking one promised: retries and backoff,
deadlines, refusals with Core's reason, closing, tracing; and that it is what it is for:
many calls in flight at once, the hub never held, no thread left behind.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent import futures
from pathlib import Path
from typing import Any

import gevent
import grpc
import pytest
from opentelemetry import trace
from opentelemetry.instrumentation.grpc import GrpcAioInstrumentorClient
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind
from structlog.testing import capture_logs

from jobworker.adapters.core.server import CoreServicer
from jobworker.adapters.core.store import ResultStore
from jobworker.adapters.grpc.aio_unary import MAX_IN_FLIGHT
from jobworker.adapters.grpc.sink import GrpcResultSink, RetryNotice
from jobworker.adapters.proto.jobworker.v1 import jobworker_pb2 as pb
from jobworker.adapters.proto.jobworker.v1 import jobworker_pb2_grpc as pb_grpc
from jobworker.domain.errors import (
    BatchesUnsupported,
    ResultNotDelivered,
    ResultRefused,
)
from jobworker.domain.model import JobResult, JobStatus
from tests.support.processes import free_port
from tests.support.waiting import wait_until

pytestmark = pytest.mark.integration

SOURCE_ROOT = Path(__file__).resolve().parents[2]


def a_result(job_id: str, **fields: object) -> JobResult:
    return JobResult(job_id=job_id, type="SLEEP", status=JobStatus.SUCCEEDED, **fields)  # type: ignore[arg-type]


class UnaryOnlyCore(CoreServicer):
    """The original contract: ``ReportResult`` only. Refuses (INVALID_ARGUMENT) the
    job ids in ``refused``, answers UNAVAILABLE to those in ``flaky`` as many times as
    it says, never answers those in ``hang_on`` (until ``release``), holds every call
    ``hold_s``, and keeps count of what it saw."""

    def __init__(self, store: ResultStore) -> None:
        super().__init__(store)
        self.refused: frozenset[str] = frozenset()
        self.flaky: dict[str, int] = {}
        self.hang_on: frozenset[str] = frozenset()
        self.hold_s = 0.0
        self.release = threading.Event()
        self.batch_calls = 0
        self.calls = 0
        self.in_flight = 0
        self.most_in_flight = 0
        self.metadata: dict[str, dict[str, str]] = {}
        self._lock = threading.Lock()

    def ReportResults(  # noqa: N802
        self, request: pb.ReportResultsRequest, context: grpc.ServicerContext
    ) -> pb.ReportResultsResponse:
        with self._lock:
            self.batch_calls += 1
        context.abort(grpc.StatusCode.UNIMPLEMENTED, "Method not implemented!")
        raise AssertionError  # abort raises

    def ReportResult(  # noqa: N802
        self, request: pb.ReportResultRequest, context: grpc.ServicerContext
    ) -> pb.ReportResultResponse:
        job_id = request.result.job_id
        with self._lock:
            self.calls += 1
            self.in_flight += 1
            self.most_in_flight = max(self.most_in_flight, self.in_flight)
            seen = context.invocation_metadata()
            self.metadata[job_id] = {key: str(value) for key, value in seen}
        try:
            if job_id in self.refused:
                context.abort(grpc.StatusCode.INVALID_ARGUMENT, "tenant unknown to Core")
            with self._lock:
                flaky = self.flaky.get(job_id, 0)
                self.flaky[job_id] = flaky - 1
            if flaky > 0:
                context.abort(grpc.StatusCode.UNAVAILABLE, "shedding load")
            if job_id in self.hang_on and self.release.wait(10):
                context.abort(grpc.StatusCode.CANCELLED, "the test is over")
            if self.hold_s:
                time.sleep(self.hold_s)
            return super().ReportResult(request, context)
        finally:
            with self._lock:
                self.in_flight -= 1


class CoreOnPort:
    """A ``UnaryOnlyCore`` served from this process on a fixed port: it can go away
    and come back on the same address."""

    def __init__(self, db_path: Path, **options: int) -> None:
        self.address = f"127.0.0.1:{free_port()}"
        self._options = list(options.items())
        self._store = ResultStore(db_path)
        self.servicer = UnaryOnlyCore(self._store)
        self._server: grpc.Server | None = None

    def start(self) -> None:
        # More handlers than the sink ever has calls out: the sink's limit is what shows.
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=100), options=self._options)
        pb_grpc.add_CoreServiceServicer_to_server(self.servicer, server)
        server.add_insecure_port(self.address)
        server.start()
        self._server = server

    def stop(self) -> None:
        if self._server is not None:
            self.servicer.release.set()
            self._server.stop(grace=None).wait()
            self._server = None
            self.servicer.release.clear()

    def stored(self, job_id: str) -> JobResult | None:
        stored = self._store.get(job_id)
        return None if stored is None else stored.result

    def close(self) -> None:
        self.stop()
        self._store.close()


@pytest.fixture
def core(tmp_path: Path) -> Iterator[CoreOnPort]:
    core = CoreOnPort(tmp_path / "core.db")
    core.start()
    yield core
    core.close()


class RetryLog:
    def __init__(self) -> None:
        self.notices: list[RetryNotice] = []

    def __call__(self, notice: RetryNotice) -> None:
        self.notices.append(notice)

    @property
    def codes(self) -> list[str]:
        return [notice.code for notice in self.notices]


def unary_sink(address: str, **options: Any) -> GrpcResultSink:
    """A sink that has met a Core without ``ReportResults`` (and said so once): its
    first batch went as one ``ReportResult`` per result."""
    sink = GrpcResultSink(address, **options)
    with capture_logs() as logs:
        sink.send_batch([a_result("probe-1"), a_result("probe-2")])
    [switch] = [entry for entry in logs if "does not implement ReportResults" in entry["event"]]
    assert switch["client"] == "grpc.aio"
    return sink


def in_a_thread(call: Callable[[], object]) -> tuple[threading.Thread, list[object]]:
    """``call`` on a thread of its own (its own gevent hub); its return or exception."""
    outcome: list[object] = []

    def run() -> None:
        try:
            outcome.append(call())
        except BaseException as error:  # the test inspects it
            outcome.append(error)

    thread = threading.Thread(target=run)
    thread.start()
    return thread, outcome


def test_after_unimplemented_every_result_is_one_report_result_and_arrives_whole(
    core: CoreOnPort,
) -> None:
    sink = unary_sink(core.address)
    result = JobResult(
        job_id="job-1",
        type="IMAGE_RESIZE",
        status=JobStatus.TIMED_OUT,
        output='{"partial": true}',
        error="job exceeded 30000 ms",
        attempts=3,
        started_at_unix_ms=1_700_000_000_000,
        finished_at_unix_ms=1_700_000_030_000,
        worker_id="worker-7",
        metadata={"tenant": "acme"},
    )

    sink.send(result)
    sink.send_batch([a_result("job-2"), a_result("job-3")])  # for good: no ReportResults
    sink.close()

    assert core.servicer.batch_calls == 1
    assert core.servicer.calls == 2 + 1 + 2  # the first batch's pair, then one each
    assert core.stored("job-1") == result
    assert core.stored("job-2") == a_result("job-2")
    assert core.stored("job-3") == a_result("job-3")


def test_without_aio_unary_a_batch_is_refused_as_unsupported_as_before(core: CoreOnPort) -> None:
    sink = GrpcResultSink(core.address, aio_unary=False)
    with capture_logs() as logs:
        for _ in range(2):
            with pytest.raises(BatchesUnsupported):
                sink.send_batch([a_result("job-1"), a_result("job-2")])
    sink.send(a_result("job-1"))
    sink.close()

    assert core.servicer.batch_calls == 1
    assert core.servicer.calls == 1
    [switch] = [entry for entry in logs if "does not implement ReportResults" in entry["event"]]
    assert switch["client"] == "blocking"


def test_a_batch_is_retried_as_one_and_only_its_results_not_yet_accepted_go_again(
    core: CoreOnPort,
) -> None:
    retries = RetryLog()
    core.servicer.flaky = {"job-2": 2}
    sink = unary_sink(core.address, backoff_base_s=0.01, backoff_cap_s=0.02, on_retry=retries)
    batch = [a_result(f"job-{n}") for n in range(1, 6)]

    sink.send_batch(batch)
    sink.close()

    assert [(n.job_id, n.code, n.attempt) for n in retries.notices] == [
        ("job-1", "UNAVAILABLE", 1),
        ("job-1", "UNAVAILABLE", 2),
    ], "one notice per attempt of the batch, named by its first result"
    assert core.servicer.calls == 2 + 5 + 2  # job-2 alone went twice more
    assert all(core.stored(result.job_id) == result for result in batch)


def test_a_refused_result_refuses_its_batch_and_the_others_are_delivered(
    core: CoreOnPort,
) -> None:
    core.servicer.refused = frozenset({"bad"})
    sink = unary_sink(core.address)

    with pytest.raises(ResultRefused, match="Core refused 3 results") as caught:
        sink.send_batch([a_result("good-1"), a_result("bad"), a_result("good-2")])
    sink.close()

    assert caught.value.code == "INVALID_ARGUMENT"
    assert caught.value.details == "tenant unknown to Core"
    assert core.stored("good-1") is not None
    assert core.stored("good-2") is not None
    assert core.stored("bad") is None


def test_core_away_is_retried_with_backoff_until_it_is_back(core: CoreOnPort) -> None:
    retries = RetryLog()
    sink = unary_sink(core.address, backoff_base_s=0.02, backoff_cap_s=0.2, on_retry=retries)
    core.stop()

    sender, outcome = in_a_thread(lambda: sink.send(a_result("job-1")))
    wait_until(lambda: len(retries.notices) >= 3, 30, "the send never retried")
    assert sender.is_alive()
    core.start()
    sender.join(timeout=30)
    sink.close()

    assert outcome == [None]
    assert set(retries.codes) == {"UNAVAILABLE"}
    assert [notice.attempt for notice in retries.notices] == list(
        range(1, len(retries.notices) + 1)
    )
    assert all(0 <= notice.delay_s <= 0.2 for notice in retries.notices)
    assert core.stored("job-1") is not None


def test_max_attempts_gives_up_with_the_last_error(core: CoreOnPort) -> None:
    sink = unary_sink(core.address, backoff_base_s=0.01, backoff_cap_s=0.02, max_attempts=3)
    core.stop()

    with pytest.raises(ResultNotDelivered, match="after 3 attempts .* UNAVAILABLE"):
        sink.send(a_result("job-1"))
    sink.close()


def test_a_refused_result_is_refused_at_once_with_cores_reason(core: CoreOnPort) -> None:
    retries = RetryLog()
    core.servicer.refused = frozenset({"bad"})
    sink = unary_sink(core.address, on_retry=retries)

    with pytest.raises(ResultRefused, match="Core refused the result of job 'bad'") as caught:
        sink.send(a_result("bad"))
    sink.send(a_result("good"))
    sink.close()

    assert caught.value.code == "INVALID_ARGUMENT"
    assert caught.value.details == "tenant unknown to Core"
    assert retries.notices == []
    assert core.stored("good") is not None


def test_a_result_above_cores_receive_limit_is_refused_at_once(tmp_path: Path) -> None:
    core = CoreOnPort(tmp_path / "core.db", **{"grpc.max_receive_message_length": 1024})
    core.start()
    try:
        sink = unary_sink(core.address)
        with pytest.raises(ResultRefused) as caught:
            sink.send(a_result("big", output="x" * 4000))
        # In a batch too, at once, the others delivered.
        batch = [a_result("small-1"), a_result("big", output="x" * 4000), a_result("small-2")]
        with pytest.raises(ResultRefused) as in_batch:
            sink.send_batch(batch)
        sink.close()
        assert core.stored("small-1") is not None
        assert core.stored("small-2") is not None
    finally:
        core.close()
    assert caught.value.code == "RESOURCE_EXHAUSTED"
    assert in_batch.value.code == "RESOURCE_EXHAUSTED"


def test_a_result_core_never_answers_is_cut_at_the_deadline_then_refused(
    core: CoreOnPort,
) -> None:
    retries = RetryLog()
    core.servicer.hang_on = frozenset({"stuck"})
    sink = unary_sink(
        core.address,
        call_timeout_s=0.3,
        backoff_base_s=0.01,
        backoff_cap_s=0.02,
        on_retry=retries,
    )

    started = time.monotonic()
    with pytest.raises(ResultRefused, match="never answers the result of job 'stuck'") as caught:
        sink.send(a_result("stuck"))
    took = time.monotonic() - started
    sink.send(a_result("fine"))
    sink.close()

    assert caught.value.code == "DEADLINE_EXCEEDED"
    assert retries.codes == ["DEADLINE_EXCEEDED"] * 2
    assert 0.9 <= took < 5, "three attempts, each cut at its 0.3 s deadline"


def test_closing_the_sink_ends_a_waiting_send_and_refuses_later_ones(core: CoreOnPort) -> None:
    core.servicer.hang_on = frozenset({"stuck"})
    sink = unary_sink(core.address, call_timeout_s=30)
    sender, outcome = in_a_thread(lambda: sink.send(a_result("stuck")))
    wait_until(lambda: core.servicer.in_flight == 1, 10, "the call never reached Core")

    sink.close()
    sender.join(timeout=10)

    assert not sender.is_alive()
    [error] = outcome
    assert isinstance(error, ResultNotDelivered)
    assert "closed" in str(error)
    with pytest.raises(ResultNotDelivered, match="the sink is closed"):
        sink.send(a_result("job-2"))


def test_killing_a_waiting_send_stops_it_and_the_others_go_on(core: CoreOnPort) -> None:
    core.servicer.hang_on = frozenset({"stuck"})
    sink = unary_sink(core.address, call_timeout_s=30)
    stuck = gevent.spawn(sink.send_batch, [a_result("stuck"), a_result("also-stuck")])
    wait_until(lambda: core.servicer.in_flight == 1, 10, "the call never reached Core")

    stuck.kill(timeout=2)
    sink.send(a_result("fine"))
    sink.close()

    assert stuck.dead
    assert isinstance(stuck.value, gevent.GreenletExit)
    assert core.stored("fine") is not None
    assert core.stored("also-stuck") is not None, "its call was in flight beside the other"


def test_the_call_is_traced_under_the_callers_span_and_core_gets_its_context(
    core: CoreOnPort,
) -> None:
    exported = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exported))
    instrumentor = GrpcAioInstrumentorClient()  # type: ignore[no-untyped-call]  # untyped upstream
    instrumentor.instrument(tracer_provider=provider)
    try:
        sink = unary_sink(core.address)
        tracer = provider.get_tracer("test")
        with tracer.start_as_current_span("report result") as call_span:
            sink.send(a_result("job-1"))
        with tracer.start_as_current_span("report results") as batch_span:
            sink.send_batch([a_result("job-2"), a_result("job-3")])
        sink.close()
    finally:
        instrumentor.uninstrument()
        provider.shutdown()

    rpcs = {
        span.get_span_context().span_id: span  # type: ignore[union-attr]  # always set once ended
        for span in exported.get_finished_spans()
        if span.kind == SpanKind.CLIENT
    }
    parents = {"job-1": call_span, "job-2": batch_span, "job-3": batch_span}
    for job_id, parent in parents.items():
        # Core got, in each call's metadata, the context of a CLIENT span under the
        # span that was current where the sink was called.
        traceparent = core.servicer.metadata[job_id]["traceparent"]
        rpc = rpcs[int(traceparent.split("-")[2], 16)]
        assert rpc.name == "/jobworker.v1.CoreService/ReportResult"
        assert rpc.parent is not None
        assert rpc.parent.span_id == parent.get_span_context().span_id
    assert len(rpcs) == 2 + 3  # the first batch's pair too
    assert trace.get_current_span() is trace.INVALID_SPAN


# Runs as its own process, patched as the worker is: patching must come first and
# must not leak into pytest.
GEVENT_SENDERS = """
from gevent import monkey
monkey.patch_all()
import json, os, sys, time
from jobworker.adapters.grpc.runtime import init_grpc_for_gevent
init_grpc_for_gevent(concurrent_calls=4)
import gevent
from structlog.testing import capture_logs
from jobworker.adapters.grpc.sink import GrpcResultSink
from jobworker.adapters.observability.hub_watch import HubHeartbeat
from jobworker.domain.model import JobResult, JobStatus

def result(job_id):
    return JobResult(job_id=job_id, type="SLEEP", status=JobStatus.SUCCEEDED)

def threads():
    return len(os.listdir("/proc/self/task"))

latest = 0.0
def tick():
    global latest
    while True:
        before = time.monotonic()
        gevent.sleep(0.005)  # on purpose: how late the hub turns
        latest = max(latest, time.monotonic() - before - 0.005)

with capture_logs() as logs:
    heartbeat = HubHeartbeat(warn_after_s=0.1)
    heartbeat.start()
    gevent.spawn(tick)
    gevent.sleep(0.3)
    sink = GrpcResultSink(sys.argv[1])
    gevent.sleep(0.1)
    before = threads()
    sink.send_batch([result("probe-1"), result("probe-2")])  # Core: UNIMPLEMENTED
    with_loop = threads()
    # As the worker's four result senders do (RESULT_SENDERS), a batch each.
    started = time.monotonic()
    per_sender = int(sys.argv[2]) // 4
    senders = [
        gevent.spawn(sink.send_batch, [result(f"job-{s}-{n}") for n in range(per_sender)])
        for s in range(4)
    ]
    gevent.joinall(senders, timeout=60)
    took = time.monotonic() - started
    sink.close()
    gevent.sleep(0.3)  # heartbeats after the close too
    heartbeat.stop()
print(json.dumps({
    "delivered": sum(g.successful() for g in senders) * per_sender,
    "took_s": took,
    "threads_before": before,
    "threads_with_loop": with_loop,
    "threads_after_close": threads(),
    "hub_late_s": latest,
    "blocked_warnings": [e for e in logs if "event loop was blocked" in e["event"]],
}))
"""


def report_of_child(script: str, *args: str) -> dict[str, Any]:
    """Run ``script`` in a process of its own (it patches itself with gevent first) and
    return the JSON report its last line prints; fails the test if it fails."""
    child = subprocess.run(
        [sys.executable, "-c", script, *args],
        cwd=SOURCE_ROOT,
        env={"PYTHONPATH": str(SOURCE_ROOT), "PATH": os.environ.get("PATH", "/usr/bin:/bin")},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert child.returncode == 0, child.stderr
    report: dict[str, Any] = json.loads(child.stdout.strip().splitlines()[-1])
    return report


def test_many_calls_are_in_flight_at_once_the_hub_is_never_held_and_close_ends_the_threads(
    core: CoreOnPort,
) -> None:
    core.servicer.hold_s = 0.2  # one call at a time would take 40 s
    senders = 200
    report = report_of_child(GEVENT_SENDERS, core.address, str(senders))

    assert report["delivered"] == senders
    assert core.servicer.batch_calls == 1
    assert core.servicer.calls == senders + 2  # the probe's pair, then one each
    # One call per sender at a time would show 4; the sink lets 64 out at once
    # (MAX_IN_FLIGHT), and no more however many results its senders hand it.
    assert 32 <= core.servicer.most_in_flight <= MAX_IN_FLIGHT
    assert report["took_s"] < 10
    # The hub turned every 5 ms throughout (a loaded machine may add some), and the
    # blocked-hub monitor never saw it held: not while the loop thread started, not
    # while 200 calls were out, not while it closed.
    assert report["blocked_warnings"] == []
    assert report["hub_late_s"] < 0.1
    # The loop thread and grpc's poller came with the switch and went with the close.
    assert report["threads_with_loop"] >= report["threads_before"] + 2
    assert report["threads_after_close"] <= report["threads_before"]


# Runs as its own process, patched as the worker is. Blocking calls on the hub while
# batches go over grpc.aio: grpcio takes one lock in every call on either thread.
BLOCKING_BESIDE_AIO = """
from gevent import monkey
monkey.patch_all()
import json, sys, time
from jobworker.adapters.grpc.runtime import init_grpc_for_gevent
init_grpc_for_gevent(concurrent_calls=8)
import gevent, grpc
import grpc._observability
from _thread import RLock
from jobworker.adapters.grpc.sink import GrpcResultSink
from jobworker.adapters.proto.jobworker.v1 import jobworker_pb2 as pb
from jobworker.adapters.proto.jobworker.v1 import jobworker_pb2_grpc as pb_grpc
from jobworker.domain.model import JobResult, JobStatus

def result(job_id):
    return JobResult(job_id=job_id, type="SLEEP", status=JobStatus.SUCCEEDED)

sys.setswitchinterval(1e-4)  # the two threads trade the GIL often: races show
sink = GrpcResultSink(sys.argv[1])
sink.send_batch([result("probe-1"), result("probe-2")])  # Core: UNIMPLEMENTED
blocking = pb_grpc.CoreServiceStub(grpc.insecure_channel(sys.argv[1])).ReportResults
per_sender = int(sys.argv[2]) // 4
sending = True
blocking_calls = 0

def send(sender):
    for start in range(0, per_sender, 50):
        sink.send_batch([result(f"job-{sender}-{n}") for n in range(start, start + 50)])

def call_blocking():
    global blocking_calls
    while sending:
        try:
            blocking(pb.ReportResultsRequest(), timeout=5)
        except grpc.RpcError:
            blocking_calls += 1  # UNIMPLEMENTED: answered
        gevent.sleep(0.001)

callers = [gevent.spawn(call_blocking) for _ in range(2)]
started = time.monotonic()
senders = [gevent.spawn(send, s) for s in range(4)]
gevent.joinall(senders, timeout=60)
sending = False
gevent.joinall(callers, timeout=10)
print(json.dumps({
    "delivered": sum(g.successful() for g in senders) * per_sender,
    "callers_done": sum(g.dead for g in callers),
    "blocking_calls": blocking_calls,
    "native_lock": isinstance(grpc._observability._plugin_lock, type(RLock())),
    "took_s": time.monotonic() - started,
}))
sink.close()
"""


def test_blocking_calls_on_the_hub_go_on_beside_the_loop_threads_calls(
    core: CoreOnPort,
) -> None:
    results = 4000
    report = report_of_child(BLOCKING_BESIDE_AIO, core.address, str(results))

    # grpcio's lock taken in every call, on the hub and on the loop thread, is a real
    # one: as a gevent lock, greenlets waited on it for ever once the loop thread let
    # it go, and every blocking call with them.
    assert report["native_lock"]
    assert report["delivered"] == results
    assert report["callers_done"] == 2
    assert report["blocking_calls"] > 0
