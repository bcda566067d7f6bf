"""GrpcResultSink against real gRPC servers on loopback: the reference Core as a child
process (so it can go down and come back on the same port and database) and, for slow
answers, a Core in this process whose handler waits."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path

import gevent
import grpc
import pytest
from structlog.testing import capture_logs

from jobworker.adapters.core.process import CoreProcess
from jobworker.adapters.core.server import CoreServicer
from jobworker.adapters.core.store import ResultStore
from jobworker.adapters.grpc.sink import GrpcResultSink, RetryNotice
from jobworker.adapters.proto.jobworker.v1 import jobworker_pb2 as pb
from jobworker.adapters.proto.jobworker.v1 import jobworker_pb2_grpc as pb_grpc
from jobworker.application.retry import full_jitter_delay
from jobworker.domain.errors import (
    BatchesUnsupported,
    ConfigurationError,
    ResultNotDelivered,
    ResultRefused,
    ResultTooLarge,
)
from jobworker.domain.model import JobResult, JobStatus
from tests.support.e2e import core_in_this_process
from tests.support.processes import free_port
from tests.support.waiting import wait_until

pytestmark = pytest.mark.integration

SOURCE_ROOT = Path(__file__).resolve().parents[2]


def a_result(job_id: str, **fields: object) -> JobResult:
    return JobResult(job_id=job_id, type="SLEEP", status=JobStatus.SUCCEEDED, **fields)  # type: ignore[arg-type]


class RetryLog:
    """An ``on_retry`` listener that keeps what it heard."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, int, float]] = []
        self.notices: list[RetryNotice] = []
        self._lock = threading.Lock()

    def __call__(self, notice: RetryNotice) -> None:
        with self._lock:
            self.calls.append((notice.code, notice.attempt, notice.delay_s))
            self.notices.append(notice)

    @property
    def codes(self) -> set[str]:
        return {code for code, _, _ in self.calls}


@pytest.fixture
def core(tmp_path: Path) -> Iterator[CoreProcess]:
    core = CoreProcess(free_port(), tmp_path / "core.db")
    yield core
    core.kill()


@pytest.fixture
def retries() -> RetryLog:
    return RetryLog()


@pytest.fixture
def sink(core: CoreProcess, retries: RetryLog) -> Iterator[GrpcResultSink]:
    sink = GrpcResultSink(
        core.address,
        call_timeout_s=2.0,
        backoff_base_s=0.02,
        backoff_cap_s=0.2,
        on_retry=retries,
    )
    yield sink
    sink.close()


def stored_results(core: CoreProcess) -> ResultStore:
    return ResultStore(core.db_path, create=False)


def test_a_result_reaches_core_with_every_field(core: CoreProcess, sink: GrpcResultSink) -> None:
    core.start()
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
        metadata={"trace_id": "abc", "tenant": "acme"},
    )

    sink.send(result)

    with stored_results(core) as store:
        stored = store.get("job-1")
    assert stored is not None
    assert stored.result == result
    assert stored.reports == 1


def test_results_sent_while_core_is_down_arrive_once_each_when_it_is_back(
    core: CoreProcess, sink: GrpcResultSink, retries: RetryLog
) -> None:
    def send_from_threads(prefix: str, threads: int, per_thread: int) -> list[threading.Thread]:
        def send_batch(thread_index: int) -> None:
            for index in range(per_thread):
                sink.send(a_result(f"{prefix}-{thread_index}-{index}"))

        senders = [threading.Thread(target=send_batch, args=(n,)) for n in range(threads)]
        for sender in senders:
            sender.start()
        return senders

    def retried(prefix: str) -> set[str]:
        return {n.job_id.rsplit("-", 1)[0] for n in retries.notices if n.job_id.startswith(prefix)}

    # Core has never been up: every send waits, retrying.
    senders = send_from_threads("before-start", threads=10, per_thread=5)
    wait_until(lambda: len(retried("before-start")) == 10, 30, "not every sender retried")
    assert all(sender.is_alive() for sender in senders)
    assert retries.codes == {"UNAVAILABLE"}
    core.start()
    for sender in senders:
        sender.join(timeout=15)
    assert not any(sender.is_alive() for sender in senders)

    # Core crashes and comes back on the same port and database.
    core.kill()
    senders = send_from_threads("after-crash", threads=5, per_thread=4)
    wait_until(lambda: len(retried("after-crash")) == 5, 30, "not every sender retried")
    assert all(sender.is_alive() for sender in senders)
    core.start()
    for sender in senders:
        sender.join(timeout=15)
    assert not any(sender.is_alive() for sender in senders)

    expected = {f"before-start-{t}-{i}" for t in range(10) for i in range(5)}
    expected |= {f"after-crash-{t}-{i}" for t in range(5) for i in range(4)}
    with stored_results(core) as store:
        assert set(store.job_ids()) == expected
        summary = store.summary()
    assert (summary["jobs"], summary["reports"], summary["duplicates"]) == (70, 70, 0)


def test_a_refused_result_fails_at_once_with_core_s_reason(
    core: CoreProcess, sink: GrpcResultSink, retries: RetryLog
) -> None:
    core.start()

    with pytest.raises(ResultRefused, match=r"INVALID_ARGUMENT: result\.job_id is required") as e:
        sink.send(a_result(""))

    assert retries.calls == [], "at once: not a single retry"
    assert (e.value.code, e.value.details) == ("INVALID_ARGUMENT", "result.job_id is required")


def test_after_max_attempts_the_sink_gives_up_with_the_last_error(
    core: CoreProcess, retries: RetryLog
) -> None:
    sink = GrpcResultSink(
        core.address, backoff_base_s=0.01, backoff_cap_s=0.02, max_attempts=3, on_retry=retries
    )

    with pytest.raises(ResultNotDelivered, match=r"after 3 attempts .* UNAVAILABLE"):
        sink.send(a_result("job-1"))

    assert [(code, attempt) for code, attempt, _ in retries.calls] == [
        ("UNAVAILABLE", 1),
        ("UNAVAILABLE", 2),
    ]
    assert all(0 <= delay <= 0.02 for _, _, delay in retries.calls)
    sink.close()


class LateCoreServicer(CoreServicer):
    """Answers its first call only once ``release`` is set, long past the caller's
    deadline."""

    def __init__(self, store: ResultStore) -> None:
        super().__init__(store)
        self._calls = 0
        self._lock = threading.Lock()
        self.release = threading.Event()
        self.late_call_done = threading.Event()

    def ReportResult(  # noqa: N802
        self, request: pb.ReportResultRequest, context: grpc.ServicerContext
    ) -> pb.ReportResultResponse:
        with self._lock:
            self._calls += 1
            late = self._calls == 1
        if not late:
            return super().ReportResult(request, context)
        self.release.wait(30)
        try:
            return super().ReportResult(request, context)
        finally:
            self.late_call_done.set()


def test_a_late_answer_is_cut_at_the_deadline_and_its_retry_deduplicated_by_core(
    tmp_path: Path, retries: RetryLog
) -> None:
    with ResultStore(tmp_path / "core.db") as store:
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        servicer = LateCoreServicer(store)
        pb_grpc.add_CoreServiceServicer_to_server(servicer, server)
        port = server.add_insecure_port("127.0.0.1:0")
        server.start()
        sink = GrpcResultSink(
            f"127.0.0.1:{port}",
            call_timeout_s=1.0,
            backoff_base_s=0.01,
            backoff_cap_s=0.02,
            on_retry=retries,
        )

        started = time.monotonic()
        sink.send(a_result("job-1"))
        elapsed = time.monotonic() - started
        answered_late = servicer.late_call_done.is_set()

        sink.close()
        # The server forgets the first call at its deadline; its handler goes on.
        servicer.release.set()
        assert servicer.late_call_done.wait(timeout=30)
        server.stop(grace=None).wait()
        stored = store.get("job-1")

    assert elapsed >= 1.0, "the first call waited out its deadline"
    assert not answered_late, "and the send did not wait for its answer"
    assert [(code, attempt) for code, attempt, _ in retries.calls] == [("DEADLINE_EXCEEDED", 1)]
    assert stored is not None
    assert stored.reports == 2


class SheddingCoreServicer(CoreServicer):
    """Answers RESOURCE_EXHAUSTED to its first ``shed`` calls, then stores as usual."""

    def __init__(self, store: ResultStore, shed: int) -> None:
        super().__init__(store)
        self.shed = shed
        self.calls = 0

    def ReportResult(  # noqa: N802
        self, request: pb.ReportResultRequest, context: grpc.ServicerContext
    ) -> pb.ReportResultResponse:
        self.calls += 1
        if self.calls <= self.shed:
            context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, "too busy, try later")
        return super().ReportResult(request, context)


def test_resource_exhausted_now_and_then_is_load_and_retried(
    tmp_path: Path, retries: RetryLog
) -> None:
    with core_in_this_process(
        tmp_path / "core.db", lambda store: SheddingCoreServicer(store, shed=2)
    ) as (
        address,
        servicer,
    ):
        sink = GrpcResultSink(address, backoff_base_s=0.01, backoff_cap_s=0.02, on_retry=retries)
        sink.send(a_result("job-1"))
        sink.close()
    assert servicer.calls == 3
    assert [(n.job_id, n.code, n.details) for n in retries.notices] == [
        ("job-1", "RESOURCE_EXHAUSTED", "too busy, try later")
    ] * 2


def test_resource_exhausted_again_and_again_for_one_result_is_a_refusal(
    tmp_path: Path, retries: RetryLog
) -> None:
    with core_in_this_process(
        tmp_path / "core.db", lambda store: SheddingCoreServicer(store, shed=100)
    ) as (
        address,
        servicer,
    ):
        sink = GrpcResultSink(address, backoff_base_s=0.01, backoff_cap_s=0.02, on_retry=retries)
        with pytest.raises(ResultRefused, match="RESOURCE_EXHAUSTED: too busy") as caught:
            sink.send(a_result("job-1"))
        sink.close()
    assert servicer.calls == 3
    assert (caught.value.code, caught.value.details) == (
        "RESOURCE_EXHAUSTED",
        "too busy, try later",
    )


def test_a_result_above_cores_own_receive_limit_is_refused_at_once(
    tmp_path: Path, retries: RetryLog
) -> None:
    with core_in_this_process(
        tmp_path / "core.db", **{"grpc.max_receive_message_length": 256 * 1024}
    ) as (
        address,
        _,
    ):
        sink = GrpcResultSink(address, backoff_base_s=0.01, backoff_cap_s=0.02, on_retry=retries)
        with pytest.raises(ResultRefused, match="RESOURCE_EXHAUSTED") as caught:
            sink.send(a_result("job-1", output="x" * 300_000))
        sink.send(a_result("job-2", output="x" * 1000))
        sink.close()
    assert "larger than max" in caught.value.details
    assert retries.calls == []


def test_killing_a_waiting_send_stops_it(sink: GrpcResultSink, retries: RetryLog) -> None:
    sender = gevent.spawn(sink.send, a_result("job-1"))
    wait_until(lambda: retries.calls, 30, "the send never retried")
    assert not sender.dead

    sender.kill(timeout=2)

    assert sender.dead
    assert isinstance(sender.value, gevent.GreenletExit)
    assert retries.codes == {"UNAVAILABLE"}


def test_closing_the_sink_ends_a_waiting_send(sink: GrpcResultSink, retries: RetryLog) -> None:
    outcome: list[BaseException] = []

    def send() -> None:
        try:
            sink.send(a_result("job-1"))
        except ResultNotDelivered as error:
            outcome.append(error)

    sender = threading.Thread(target=send)
    sender.start()
    wait_until(lambda: retries.calls, 30, "the send never retried")

    sink.close()
    sender.join(timeout=30)

    assert not sender.is_alive()
    assert len(outcome) == 1
    assert "closed" in str(outcome[0])
    with pytest.raises(ResultNotDelivered, match="the sink is closed"):
        sink.send(a_result("job-2"))


def test_a_result_above_the_message_limit_is_refused_without_a_call(
    core: CoreProcess, retries: RetryLog
) -> None:
    sink = GrpcResultSink(core.address, max_message_bytes=1024, on_retry=retries)

    with pytest.raises(ResultTooLarge, match=r"job 'job-1' is \d+ bytes .* 1024-byte") as caught:
        sink.send(a_result("job-1", output="x" * 2000))

    assert caught.value.size > 2000
    assert caught.value.limit == 1024

    assert retries.calls == []
    sink.close()


def test_ping_tells_whether_core_accepts_connections(
    core: CoreProcess, sink: GrpcResultSink
) -> None:
    assert sink.ping(timeout_s=0.2) is False

    core.start()
    assert sink.ping(timeout_s=5) is True

    sink.close()
    assert sink.ping() is False


# Runs as its own process: gevent patching must come first and must not leak into pytest.
GEVENT_SENDER = """
from gevent import monkey
monkey.patch_all()
import json, socket, sys
from jobworker.adapters.grpc.runtime import init_grpc_for_gevent
init_grpc_for_gevent(concurrent_calls=100)
import gevent, gevent.event
from jobworker.adapters.grpc.sink import GrpcResultSink, RetryNotice
from jobworker.domain.errors import ResultNotDelivered
from jobworker.domain.model import JobResult, JobStatus

def result(job_id):
    return JobResult(job_id=job_id, type="SLEEP", status=JobStatus.SUCCEEDED)

ticks = 0
def tick():
    global ticks
    while True:
        gevent.sleep(0.01)  # on purpose: counts the hub's turns while calls wait
        ticks += 1
gevent.spawn(tick)

# A listener that never answers: calls wait out their deadline, the hub must not.
silent = socket.socket()
silent.bind(("127.0.0.1", 0))
silent.listen(64)
stuck = GrpcResultSink(f"127.0.0.1:{silent.getsockname()[1]}", call_timeout_s=0.5, max_attempts=1)
def send_stuck(index):
    try:
        stuck.send(result(f"stuck-{index}"))
    except ResultNotDelivered as error:
        return str(error)
waiting = [gevent.spawn(send_stuck, index) for index in range(20)]
gevent.joinall(waiting)
ticks_while_waiting = ticks
print("sending", flush=True)  # the test starts Core only now: the first calls must fail

retried = gevent.event.Event()
sink = GrpcResultSink(
    sys.argv[1], backoff_base_s=0.02, backoff_cap_s=0.2, on_retry=lambda notice: retried.set()
)
senders = [gevent.spawn(sink.send, result(f"job-{index}")) for index in range(100)]
retried.wait()
print("retrying", flush=True)  # the test starts Core now
gevent.joinall(senders, timeout=60)
print(json.dumps({
    "ticks_while_waiting": ticks_while_waiting,
    "stuck_errors": sorted({"DEADLINE_EXCEEDED" in g.value for g in waiting}),
    "delivered": sum(g.successful() for g in senders),
}))
"""


def test_in_a_gevent_process_greenlets_wait_cooperatively_and_deliver_everything(
    core: CoreProcess,
) -> None:
    sender = subprocess.Popen(
        [sys.executable, "-c", GEVENT_SENDER, core.address],
        cwd=SOURCE_ROOT,
        env={"PYTHONPATH": str(SOURCE_ROOT), "PATH": "/usr/bin:/bin"},
        stdout=subprocess.PIPE,
        text=True,
    )
    # Core starts once the silent phase is over and the results are being sent and
    # retried, however long the subprocess took to get there.
    assert sender.stdout is not None
    assert sender.stdout.readline().strip() == "sending"
    while (line := sender.stdout.readline()) and line.strip() != "retrying":
        pass
    core.start()
    output, _ = sender.communicate(timeout=90)

    assert sender.returncode == 0
    # The report is the last line; the sink's log lines (unconfigured structlog) come first.
    report = json.loads(output.strip().splitlines()[-1])
    assert "Core accepted a result after retrying" in output
    # ~50 if the hub ran freely for the calls' 0.5 s; 0 or 1 had they held it. A loaded
    # machine may cost many turns, never most of them.
    assert report["ticks_while_waiting"] >= 10
    assert report["stuck_errors"] == [True]
    assert report["delivered"] == 100
    with stored_results(core) as store:
        assert store.summary()["jobs"] == 100


def test_mutual_tls_needs_both_certificate_and_key(tmp_path: Path) -> None:
    certificate = tmp_path / "client.pem"
    certificate.write_text("-----BEGIN CERTIFICATE-----\n-----END CERTIFICATE-----\n")

    with pytest.raises(ConfigurationError, match="tls_key_file: mutual TLS needs it"):
        GrpcResultSink("127.0.0.1:1", tls_cert_file=certificate)


def test_an_unreadable_tls_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match=r"tls_ca_file: cannot read .*ca\.pem"):
        GrpcResultSink("127.0.0.1:1", tls_ca_file=tmp_path / "ca.pem")


def test_backoff_grows_exponentially_up_to_the_cap_and_never_overflows() -> None:
    def upper_bound(low: float, high: float) -> float:
        return high

    windows = [full_jitter_delay(n, 0.1, 1.0, upper_bound) for n in (1, 2, 3, 4, 5, 10_000)]

    assert windows == pytest.approx([0.1, 0.2, 0.4, 0.8, 1.0, 1.0])
    assert full_jitter_delay(3, 0.1, 1.0, lambda low, _high: low) == 0.0


def test_a_batch_reaches_core_in_one_call_and_is_stored_whole(
    core: CoreProcess, sink: GrpcResultSink
) -> None:
    core.start()
    sink.send_batch([a_result(f"job-{i}", output=f'{{"n": {i}}}') for i in range(50)])
    with stored_results(core) as store:
        assert store.summary()["jobs"] == 50
        stored = store.get("job-7")
    assert stored is not None
    assert stored.result.output == '{"n": 7}'


def test_a_batch_above_the_message_limit_is_split_and_sent_in_parts(core: CoreProcess) -> None:
    core.start()
    sink = GrpcResultSink(core.address, max_message_bytes=5_000)
    sink.send_batch([a_result(f"job-{i}", output="x" * 1000) for i in range(20)])
    sink.close()
    with stored_results(core) as store:
        assert store.summary()["jobs"] == 20


def test_a_batch_core_refuses_is_refused_whole_with_cores_reason(
    core: CoreProcess, sink: GrpcResultSink
) -> None:
    core.start()
    with pytest.raises(ResultRefused, match=r"results\[1\]: job_id is required") as caught:
        sink.send_batch([a_result("job-1"), a_result(""), a_result("job-3")])
    assert caught.value.code == "INVALID_ARGUMENT"
    with stored_results(core) as store:
        assert store.summary()["jobs"] == 0, "none of a refused batch is stored"


class UnaryOnlyCoreServicer(CoreServicer):
    """A Core written against the single RPC: ReportResults answers UNIMPLEMENTED."""

    ReportResults = pb_grpc.CoreServiceServicer.ReportResults

    def __init__(self, store: ResultStore) -> None:
        super().__init__(store)
        self.calls = 0

    def ReportResult(  # noqa: N802
        self, request: pb.ReportResultRequest, context: grpc.ServicerContext
    ) -> pb.ReportResultResponse:
        self.calls += 1
        return super().ReportResult(request, context)


def test_a_core_without_report_results_is_asked_once_then_sent_one_result_at_a_time(
    tmp_path: Path,
) -> None:
    with core_in_this_process(tmp_path / "core.db", UnaryOnlyCoreServicer) as (address, core):
        # The blocking unary client; grpc.aio's: tests/integration/test_grpc_aio_unary.py.
        sink = GrpcResultSink(address, aio_unary=False)
        with capture_logs() as logs:
            with pytest.raises(BatchesUnsupported):
                sink.send_batch([a_result("job-1"), a_result("job-2")])
            with pytest.raises(BatchesUnsupported):
                sink.send_batch([a_result("job-1"), a_result("job-2")])
        sink.send(a_result("job-1"))
        sink.close()
    assert core.calls == 1
    said = [entry for entry in logs if "does not implement ReportResults" in entry["event"]]
    assert len(said) == 1, "said once in the log"


class HangingCoreServicer(CoreServicer):
    """Never answers in time for results of ``hang_on`` (or for anything, with
    ``hang_all``); answers everything else at once."""

    def __init__(self, store: ResultStore, hang_on: frozenset[str], hang_all: bool = False) -> None:
        super().__init__(store)
        self.hang_on = hang_on
        self.hang_all = hang_all
        self.release = threading.Event()

    def _hang_if(self, job_ids: list[str], context: grpc.ServicerContext) -> None:
        if (self.hang_all or self.hang_on & set(job_ids)) and self.release.wait(5):
            context.abort(grpc.StatusCode.CANCELLED, "the test is over")

    def ReportResult(  # noqa: N802
        self, request: pb.ReportResultRequest, context: grpc.ServicerContext
    ) -> pb.ReportResultResponse:
        self._hang_if([request.result.job_id], context)
        return super().ReportResult(request, context)

    def ReportResults(  # noqa: N802
        self, request: pb.ReportResultsRequest, context: grpc.ServicerContext
    ) -> pb.ReportResultsResponse:
        self._hang_if([result.job_id for result in request.results], context)
        return super().ReportResults(request, context)


def test_a_result_core_never_answers_while_it_answers_others_is_a_refusal(
    tmp_path: Path, retries: RetryLog
) -> None:
    def hanging(store: ResultStore) -> HangingCoreServicer:
        return HangingCoreServicer(store, frozenset({"stuck"}))

    with core_in_this_process(tmp_path / "core.db", hanging) as (address, core):
        sink = GrpcResultSink(
            address, call_timeout_s=0.3, backoff_base_s=0.01, backoff_cap_s=0.02, on_retry=retries
        )
        with pytest.raises(ResultRefused, match="never answers the result of job 'stuck'") as e:
            sink.send(a_result("stuck"))
        sink.send(a_result("fine"))
        sink.close()
        core.release.set()
    assert e.value.code == "DEADLINE_EXCEEDED"
    assert "GRPC_CALL_TIMEOUT" in e.value.details
    assert [code for code, _, _ in retries.calls] == ["DEADLINE_EXCEEDED"] * 2


def test_a_core_that_answers_nothing_in_time_is_slow_not_refusing(
    tmp_path: Path, retries: RetryLog
) -> None:
    def hanging(store: ResultStore) -> HangingCoreServicer:
        return HangingCoreServicer(store, frozenset(), hang_all=True)

    with core_in_this_process(tmp_path / "core.db", hanging) as (address, core):
        sink = GrpcResultSink(
            address,
            call_timeout_s=0.2,
            backoff_base_s=0.01,
            backoff_cap_s=0.02,
            max_attempts=4,
            on_retry=retries,
        )
        with pytest.raises(ResultNotDelivered, match="gave up .* after 4 attempts") as caught:
            sink.send(a_result("job-1"))
        sink.close()
        core.release.set()
    assert not isinstance(caught.value, ResultRefused)
