"""The engine on in-memory adapters: no network, no patching, milliseconds per test."""

from __future__ import annotations

import time

import gevent
import gevent.event
import pytest

from jobworker.adapters.memory import (
    InMemoryJobSource,
    InMemoryRefusedResultStore,
    InMemoryResultSink,
)
from jobworker.application.admission import BreakerState
from jobworker.application.engine import WorkerEngine
from jobworker.application.engine_config import EngineConfig
from jobworker.application.registry import ExecutorRegistry
from jobworker.application.result_delivery import RefusalPolicy
from jobworker.application.retry import RetryPolicy
from jobworker.domain.errors import (
    InvalidPayload,
    JobFailed,
    ResultRefused,
    RetryableJobError,
    SourceFailed,
)
from jobworker.domain.limits import BreakerPolicy, TargetLimit
from jobworker.domain.model import Job, JobResult, JobStatus
from tests.support.waiting import wait_until


class SleepFor:
    """Sleeps ``job.payload`` seconds (cooperatively) and echoes the payload."""

    def __init__(self) -> None:
        self.started: list[str] = []
        self.finished: list[str] = []

    def execute(self, job: Job) -> str:
        self.started.append(job.id)
        gevent.sleep(float(job.payload or 0))  # the job's work, not a wait of the test's
        self.finished.append(job.id)
        return f"slept {job.payload}"


class FlakyThenOk:
    """Fails retryably ``failures`` times per job, then succeeds."""

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.calls: dict[str, int] = {}

    def execute(self, job: Job) -> str:
        self.calls[job.id] = self.calls.get(job.id, 0) + 1
        if self.calls[job.id] <= self.failures:
            raise RetryableJobError(f"flaky call {self.calls[job.id]}")
        return "ok"


class Raises:
    def __init__(self, error: Exception) -> None:
        self.error = error

    def execute(self, job: Job) -> str:
        raise self.error


class Echo:
    def execute(self, job: Job) -> str:
        return job.payload


class RecordingObserver:
    def __init__(self) -> None:
        self.events: list[tuple[str, str]] = []

    def job_received(self, job: Job) -> None:
        self.events.append(("received", job.id))

    def job_started(self, job: Job, attempt: int) -> None:
        self.events.append(("started", f"{job.id}#{attempt}"))

    def job_retrying(self, job: Job, attempt: int, error: str, delay_s: float) -> None:
        self.events.append(("retrying", f"{job.id}#{attempt}"))

    def job_finished(self, job: Job, result: JobResult) -> None:
        self.events.append(("finished", f"{job.id}:{result.status}"))

    def result_delivered(self, result: JobResult) -> None:
        self.events.append(("delivered", result.job_id))


FAST_RETRY = RetryPolicy(max_attempts=3, backoff_base_s=0.001, backoff_max_s=0.002)


def config(**overrides: object) -> EngineConfig:
    values: dict[str, object] = {
        "worker_id": "w-test",
        "pool_size": 4,
        "jobs_queue_size": 4,
        "results_queue_size": 4,
        "result_senders": 2,
        "max_job_timeout_s": 5.0,
        "fetch_timeout_s": 0.005,
        "retry": FAST_RETRY,
    }
    values.update(overrides)
    return EngineConfig(**values)  # type: ignore[arg-type]


def sleep_jobs(count: int, seconds: float = 0.0, prefix: str = "j") -> list[Job]:
    return [Job(id=f"{prefix}{i}", type="SLEEP", payload=str(seconds)) for i in range(count)]


def run_to_end(
    jobs: list[Job],
    registry: ExecutorRegistry,
    sink: InMemoryResultSink | None = None,
    store: InMemoryRefusedResultStore | None = None,
    **cfg: object,
) -> tuple[InMemoryJobSource, InMemoryResultSink, WorkerEngine]:
    source = InMemoryJobSource(jobs)
    sink = sink or InMemoryResultSink()
    cfg.setdefault("refusals", fast_refusals())
    engine = WorkerEngine(source, sink, registry, config(**cfg), (), store)
    engine.start()
    assert engine.wait_until_drained(timeout=5), "engine did not drain"
    engine.stop(timeout=1)
    return source, sink, engine


def test_every_job_is_reported_and_acked_once() -> None:
    registry = ExecutorRegistry({"SLEEP": SleepFor()})
    source, sink, _ = run_to_end(sleep_jobs(50, 0.001), registry)
    assert sorted(r.job_id for r in sink.results) == sorted(f"j{i}" for i in range(50))
    assert sorted(source.acked_ids) == sorted(f"j{i}" for i in range(50))
    result = sink.by_id()["j7"]
    assert result.status is JobStatus.SUCCEEDED
    assert result.output == "slept 0.001"
    assert result.attempts == 1
    assert result.worker_id == "w-test"
    assert result.finished_at_unix_ms >= result.started_at_unix_ms > 0


def test_metadata_is_echoed_into_the_result() -> None:
    job = Job(id="m", type="SLEEP", payload="0", metadata={"trace": "t-1", "tenant": "acme"})
    _, sink, _ = run_to_end([job], ExecutorRegistry({"SLEEP": SleepFor()}))
    assert sink.results[0].metadata == {"trace": "t-1", "tenant": "acme"}


def test_job_timeout_interrupts_the_job() -> None:
    executor = SleepFor()
    job = Job(id="slow", type="SLEEP", payload="30", timeout_ms=20)
    _, sink, _ = run_to_end([job], ExecutorRegistry({"SLEEP": executor}))
    result = sink.results[0]
    assert result.status is JobStatus.TIMED_OUT
    assert "timed out after 0.02s" in result.error
    assert executor.finished == []  # really interrupted, not waited for
    assert result.duration_ms < 1000


def test_max_job_timeout_caps_a_longer_job_timeout() -> None:
    job = Job(id="slow", type="SLEEP", payload="30", timeout_ms=60_000)
    _, sink, _ = run_to_end([job], ExecutorRegistry({"SLEEP": SleepFor()}), max_job_timeout_s=0.03)
    assert sink.results[0].status is JobStatus.TIMED_OUT
    assert "timed out after 0.03s" in sink.results[0].error


def test_retryable_errors_are_retried_until_success() -> None:
    executor = FlakyThenOk(failures=2)
    observer = RecordingObserver()
    source = InMemoryJobSource([Job(id="f", type="FLAKY")])
    sink = InMemoryResultSink()
    engine = WorkerEngine(
        source, sink, ExecutorRegistry({"FLAKY": executor}), config(), observers=[observer]
    )
    engine.start()
    assert engine.wait_until_drained(5)
    result = sink.results[0]
    assert (result.status, result.attempts, executor.calls["f"]) == (JobStatus.SUCCEEDED, 3, 3)
    assert [e for e in observer.events if e[0] == "retrying"] == [
        ("retrying", "f#1"),
        ("retrying", "f#2"),
    ]
    assert observer.events[0] == ("received", "f")
    assert observer.events[-2:] == [("finished", "f:SUCCEEDED"), ("delivered", "f")]


def test_retries_stop_at_the_attempt_limit() -> None:
    executor = FlakyThenOk(failures=10)
    _, sink, _ = run_to_end([Job(id="f", type="FLAKY")], ExecutorRegistry({"FLAKY": executor}))
    result = sink.results[0]
    assert result.status is JobStatus.FAILED
    assert result.attempts == 3
    assert result.error == "gave up after 3 attempts: flaky call 3"
    assert executor.calls["f"] == 3


def test_backoff_grows_and_is_capped() -> None:
    policy = RetryPolicy(max_attempts=10, backoff_base_s=1.0, backoff_max_s=4.0)

    class Top:
        def uniform(self, low: float, high: float) -> float:
            return high

    assert [policy.delay_s(n, Top()) for n in range(1, 6)] == [1.0, 2.0, 4.0, 4.0, 4.0]  # type: ignore[arg-type]


def test_unknown_type_is_rejected_and_still_acked() -> None:
    source, sink, _ = run_to_end([Job(id="u", type="TYPE_42")], ExecutorRegistry())
    result = sink.results[0]
    assert result.status is JobStatus.REJECTED
    assert "unknown job type 'TYPE_42'" in result.error
    assert source.acked_ids == ["u"]


@pytest.mark.parametrize(
    ("error", "status", "message"),
    [
        (
            InvalidPayload("'ms' must be a non-negative integer"),
            JobStatus.REJECTED,
            "invalid payload: 'ms' must be a non-negative integer",
        ),
        (JobFailed("HTTP 404 from upstream"), JobStatus.FAILED, "HTTP 404 from upstream"),
        (
            ZeroDivisionError("division by zero"),
            JobStatus.FAILED,
            "ZeroDivisionError: division by zero",
        ),
    ],
)
def test_executor_errors_become_results(error: Exception, status: JobStatus, message: str) -> None:
    _, sink, _ = run_to_end([Job(id="e", type="X")], ExecutorRegistry({"X": Raises(error)}))
    assert (sink.results[0].status, sink.results[0].error) == (status, message)
    assert sink.results[0].attempts == 1


def test_nothing_is_acked_before_the_sink_accepted_it() -> None:
    sink = InMemoryResultSink()
    sink.block()
    source = InMemoryJobSource(sleep_jobs(3))
    executor = SleepFor()
    engine = WorkerEngine(source, sink, ExecutorRegistry({"SLEEP": executor}), config())
    engine.start()
    wait_until(
        lambda: len(executor.finished) == 3 and engine.results_queue_depth == 0,
        message="the senders never took the results to the blocked sink",
    )
    assert source.acked == []
    assert engine.results_queue_depth + len(sink.results) <= 3
    sink.unblock()
    assert source.wait_for_acks(3)
    assert engine.wait_until_drained(1)
    assert sorted(source.acked_ids) == ["j0", "j1", "j2"]


def fast_refusals(**overrides: object) -> RefusalPolicy:
    values: dict[str, object] = {"attempts": 3, "retry_base_s": 0.005, "retry_max_s": 0.01}
    values.update(overrides)
    return RefusalPolicy(**values)  # type: ignore[arg-type]


def test_a_result_refused_for_good_is_dead_lettered_and_its_job_acked() -> None:
    sink = InMemoryResultSink(refuse=frozenset({"j1"}))
    store = InMemoryRefusedResultStore()
    source, _, engine = run_to_end(
        sleep_jobs(3), ExecutorRegistry({"SLEEP": SleepFor()}), sink, store=store
    )
    assert sorted(source.acked_ids) == ["j0", "j1", "j2"]
    assert sink.offers["j1"] == 3, "offered RefusalPolicy.attempts times, then dead-lettered"
    [(job, result, refusal)] = store.stored
    assert (job.id, result.job_id, result.status) == ("j1", "j1", JobStatus.SUCCEEDED)
    assert (refusal.code, refusal.details) == ("REFUSED", "test refusal")
    assert engine.results_refused == 3
    assert engine.results_dead_lettered == 1
    assert [r.job_id for r in sink.results] == ["j0", "j2"]


def test_refused_results_never_hold_a_sender_from_the_others() -> None:
    # One sender, five results refused with long pauses between offers: every other
    # result still goes through while they wait.
    refused = frozenset(f"j{i}" for i in range(5))
    sink = InMemoryResultSink(refuse=refused)
    store = InMemoryRefusedResultStore()
    source = InMemoryJobSource(sleep_jobs(60))
    policy = fast_refusals(retry_base_s=10, retry_max_s=10)
    # Room for the five to wait: at most results_queue_size results are parked at once.
    cfg = config(result_senders=1, results_queue_size=8, refusals=policy)
    engine = WorkerEngine(source, sink, ExecutorRegistry({"SLEEP": SleepFor()}), cfg, (), store)
    engine.start()
    assert source.wait_for_acks(55, timeout_s=3), f"only {len(source.acked)} acked"
    assert {r.job_id for r in sink.results} == {f"j{i}" for i in range(5, 60)}
    assert engine.results_waiting_to_retry == 5
    assert store.stored == [], "still waiting for their next offer"
    report = engine.stop(timeout=2)
    # Stopping stores them at once rather than waiting out their pauses.
    assert sorted(store.job_ids) == sorted(refused)
    assert sorted(source.acked_ids) == sorted(f"j{i}" for i in range(60))
    assert report.clean


def test_the_hold_policy_offers_a_refused_result_until_it_is_accepted() -> None:
    sink = InMemoryResultSink(refuse=frozenset({"j1"}))
    store = InMemoryRefusedResultStore()
    source = InMemoryJobSource(sleep_jobs(3))
    cfg = config(result_senders=1, refusals=fast_refusals(dead_letter=False))
    engine = WorkerEngine(source, sink, ExecutorRegistry({"SLEEP": SleepFor()}), cfg, (), store)
    engine.start()
    assert source.wait_for_acks(2)
    wait_until(lambda: engine.results_refused >= 5, message="the refused result was not re-offered")
    assert sorted(source.acked_ids) == ["j0", "j2"], "j1 is not acked while refused"
    sink.refuse = frozenset()
    assert engine.wait_until_drained(2)
    assert sorted(source.acked_ids) == ["j0", "j1", "j2"]
    assert store.stored == []
    assert engine.stop(1).clean


def test_a_held_result_is_abandoned_at_stop_and_its_job_not_acked() -> None:
    sink = InMemoryResultSink(refuse=frozenset({"j1"}))
    source = InMemoryJobSource(sleep_jobs(3), finite=False)
    cfg = config(refusals=fast_refusals(dead_letter=False, retry_base_s=30, retry_max_s=30))
    engine = WorkerEngine(source, sink, ExecutorRegistry({"SLEEP": SleepFor()}), cfg)
    engine.start()
    assert source.wait_for_acks(2)
    started = time.monotonic()
    report = engine.stop(timeout=5)
    assert time.monotonic() - started < 2, "stop does not wait out a 30 s pause"
    assert sorted(source.acked_ids) == ["j0", "j2"]
    assert report.results_not_delivered == 1


class CountsTries(InMemoryRefusedResultStore):
    def __init__(self) -> None:
        super().__init__()
        self.tries = 0

    def store(self, job: Job, result: JobResult, refusal: ResultRefused) -> None:
        self.tries += 1
        super().store(job, result, refusal)


def test_a_store_that_refuses_writes_leaves_the_job_not_acked_until_it_works() -> None:
    sink = InMemoryResultSink(refuse=frozenset({"j1"}))
    store = CountsTries()
    store.failing = True
    source = InMemoryJobSource(sleep_jobs(3))
    cfg = config(refusals=fast_refusals(attempts=1))
    engine = WorkerEngine(source, sink, ExecutorRegistry({"SLEEP": SleepFor()}), cfg, (), store)
    engine.start()
    assert source.wait_for_acks(2)
    wait_until(lambda: store.tries >= 2, message="the failed store was not tried again")
    assert sorted(source.acked_ids) == ["j0", "j2"]
    store.failing = False
    assert engine.wait_until_drained(2)
    assert store.job_ids == ["j1"]
    assert sorted(source.acked_ids) == ["j0", "j1", "j2"]


def test_other_sink_failures_are_retried_off_the_sender_and_never_dead_lettered() -> None:
    sink = InMemoryResultSink(fail=frozenset({"j0"}))
    store = InMemoryRefusedResultStore()
    source = InMemoryJobSource(sleep_jobs(10))
    cfg = config(result_senders=1, refusals=fast_refusals(attempts=1))
    engine = WorkerEngine(source, sink, ExecutorRegistry({"SLEEP": SleepFor()}), cfg, (), store)
    engine.start()
    assert source.wait_for_acks(9)
    wait_until(lambda: sink.offers.get("j0", 0) >= 3, message="j0 was not offered again")
    assert "j0" not in source.acked_ids
    sink.fail = frozenset()
    assert engine.wait_until_drained(2)
    assert store.stored == []
    assert engine.results_refused == 0


def test_a_result_too_large_for_the_sink_is_sent_as_failed_with_a_short_reason() -> None:
    sink = InMemoryResultSink(max_output_chars=10)
    jobs = [Job(id="big", type="ECHO", payload="x" * 100), Job(id="small", type="ECHO")]
    source, sink, _ = run_to_end(jobs, ExecutorRegistry({"ECHO": Echo()}), sink)
    by_id = sink.by_id()
    assert by_id["big"].status is JobStatus.FAILED
    assert by_id["big"].output == ""
    assert "100 bytes is above the 10-byte limit" in by_id["big"].error
    assert "had ended SUCCEEDED" in by_id["big"].error
    assert by_id["small"].status is JobStatus.SUCCEEDED
    assert sorted(source.acked_ids) == ["big", "small"]


def test_queues_stay_bounded_under_a_stalled_sink() -> None:
    sink = InMemoryResultSink()
    sink.block()
    source = InMemoryJobSource(sleep_jobs(1000), finite=False)
    cfg = config(
        pool_size=4, jobs_queue_size=8, results_queue_size=5, result_senders=2, result_batch_size=3
    )
    engine = WorkerEngine(source, sink, ExecutorRegistry({"SLEEP": SleepFor()}), cfg)
    engine.start()
    wait_until(
        lambda: engine.results_queue_depth == 5 and source.fetch_sizes[-1:] == [0],
        message="the pipeline never filled up behind the blocked sink",
    )
    taken = 1000 - len(source._pending)
    # results queue + one batch per blocked sender + finished jobs waiting to enqueue
    # (a full pool) + the jobs queue: nothing else holds a job.
    assert taken <= 5 + 2 * 3 + 4 + 8
    # Stalled with the queue above its low-water mark (4), or intake would refill it.
    assert cfg.low_water < engine.jobs_queue_depth <= 8
    assert source.fetch_sizes[-1] == 0, "a full queue must ask the source for nothing"
    sink.unblock()
    source.finish()
    assert engine.wait_until_drained(5)
    assert len(source.acked) == 1000


def test_intake_resumes_as_soon_as_the_queue_drains_not_after_a_fetch_timeout() -> None:
    # A slow fetch timeout must not cap throughput: the dispatcher wakes intake.
    executor = SleepFor()
    source = InMemoryJobSource(sleep_jobs(200))
    # A fetch timeout far above the drain's generous deadline: waiting one out fails the
    # test on any machine, and a slow machine has the whole deadline for 200 jobs.
    cfg = config(pool_size=2, jobs_queue_size=4, fetch_timeout_s=600.0)
    engine = WorkerEngine(source, InMemoryResultSink(), ExecutorRegistry({"SLEEP": executor}), cfg)
    engine.start()
    assert engine.wait_until_drained(timeout=60), "intake waited out its fetch timeout"
    assert len(source.acked) == 200


def test_intake_resumes_only_below_the_low_water_mark() -> None:
    sink = InMemoryResultSink()
    sink.block()
    source = InMemoryJobSource(sleep_jobs(100), finite=False)
    cfg = config(
        pool_size=1,
        jobs_queue_size=10,
        jobs_queue_low_water=3,
        results_queue_size=1,
        result_senders=1,
        result_batch_size=1,
    )
    engine = WorkerEngine(source, sink, ExecutorRegistry({"SLEEP": SleepFor()}), cfg)
    engine.start()
    wait_until(
        lambda: engine.results_queue_depth == 1 and source.fetch_sizes[-1:] == [0],
        message="the pipeline never filled up behind the blocked sink",
    )
    asked = len(source.fetch_sizes)
    stalled_depth = engine.jobs_queue_depth
    sink.unblock()
    sink.block()  # let a few through, not enough to reach the low-water mark
    wait_until(lambda: engine.jobs_queue_depth < stalled_depth, message="no job left the queue")
    taken_from_queue = len(source.fetch_sizes)
    wait_until(
        lambda: len(source.fetch_sizes) > taken_from_queue,
        message="intake never asked again after a job left the queue",
    )
    assert set(source.fetch_sizes[asked:]) <= {0}
    sink.unblock()
    source.finish()
    assert engine.wait_until_drained(5)
    assert any(size >= 7 for size in source.fetch_sizes), "resumes with the queue's free room"


def test_stop_drains_in_flight_jobs_and_leaves_queued_ones_unacked() -> None:
    executor = SleepFor()
    source = InMemoryJobSource(sleep_jobs(10, 0.05), finite=False)
    sink = InMemoryResultSink()
    cfg = config(pool_size=2, jobs_queue_size=3)
    engine = WorkerEngine(source, sink, ExecutorRegistry({"SLEEP": executor}), cfg)
    assert not engine.taking_jobs
    engine.start()
    wait_until(lambda: len(executor.started) == 2, message="the pool did not start two jobs")
    assert engine.taking_jobs
    report = engine.stop(timeout=2)
    assert not engine.taking_jobs
    assert report.jobs_abandoned_in_flight == 0
    assert report.results_not_delivered == 0
    assert report.jobs_not_started == 3
    assert sorted(executor.finished) == ["j0", "j1"]
    assert sorted(source.acked_ids) == ["j0", "j1"]
    assert engine.stop(timeout=2) is report  # idempotent
    # A slow machine only lets less happen in this window: it cannot fail the test.
    gevent.sleep(0.1)  # on purpose: a window in which nothing may start
    assert len(executor.started) == 2, "nothing starts after stop"


def test_stop_interrupts_jobs_still_running_at_its_deadline() -> None:
    executor = SleepFor()
    source = InMemoryJobSource(sleep_jobs(2, 10), finite=False)
    sink = InMemoryResultSink()
    engine = WorkerEngine(source, sink, ExecutorRegistry({"SLEEP": executor}), config())
    engine.start()
    wait_until(lambda: len(executor.started) == 2, message="the jobs did not start")
    report = engine.stop(timeout=0.05)
    assert report.jobs_abandoned_in_flight == 2
    assert source.acked == []
    assert sink.results == []


def test_a_failing_source_does_not_end_intake() -> None:
    class FlakySource(InMemoryJobSource):
        calls = 0

        def fetch(self, max_jobs: int, timeout_s: float):  # type: ignore[no-untyped-def]
            self.calls += 1
            if self.calls == 1:
                raise ConnectionError("broker went away")
            return super().fetch(max_jobs, timeout_s)

    source = FlakySource(sleep_jobs(2))
    sink = InMemoryResultSink()
    engine = WorkerEngine(source, sink, ExecutorRegistry({"SLEEP": SleepFor()}), config())
    engine.start()
    assert engine.wait_until_drained(5)
    assert len(sink.results) == 2


def test_an_output_too_big_to_report_fails_the_job() -> None:
    class Huge:
        def execute(self, job: Job) -> str:
            return "x" * 2000

    _, sink, _ = run_to_end(
        [Job(id="h", type="HUGE")], ExecutorRegistry({"HUGE": Huge()}), max_output_bytes=1000
    )
    assert sink.results[0].status is JobStatus.FAILED
    assert sink.results[0].error == "output of 2000 bytes exceeds the 1000-byte limit"
    assert sink.results[0].output == ""


@pytest.mark.parametrize(
    ("output", "error"),
    [
        (None, "executor returned NoneType, not a string"),
        ({"a": 1}, "executor returned dict, not a string"),
        ("bad \udc80 text", "output is not valid UTF-8 text: surrogates not allowed"),
    ],
)
def test_an_output_core_cannot_take_fails_the_job(output: object, error: str) -> None:
    class Returns:
        def execute(self, job: Job) -> object:
            return output

    registry = ExecutorRegistry({"R": Returns()})  # type: ignore[dict-item]
    _, sink, _ = run_to_end([Job(id="r", type="R")], registry)
    assert (sink.results[0].status, sink.results[0].error) == (JobStatus.FAILED, error)


def test_an_executor_cannot_swallow_its_deadline() -> None:
    class Stubborn:
        def execute(self, job: Job) -> str:
            try:
                gevent.sleep(10)  # the job's work, far longer than its deadline
            except Exception:  # what careless executor code does
                gevent.sleep(10)  # and more of it
            return "finished anyway"

    job = Job(id="s", type="S", timeout_ms=20)
    _, sink, _ = run_to_end([job], ExecutorRegistry({"S": Stubborn()}))
    assert sink.results[0].status is JobStatus.TIMED_OUT


def test_a_failing_observer_costs_neither_the_job_nor_the_others() -> None:
    class Broken:
        def __getattr__(self, name: str) -> object:
            def fail(*args: object) -> None:
                raise RuntimeError("metrics backend down")

            return fail

    recording = RecordingObserver()
    source = InMemoryJobSource(sleep_jobs(2))
    sink = InMemoryResultSink()
    engine = WorkerEngine(
        source,
        sink,
        ExecutorRegistry({"SLEEP": SleepFor()}),
        config(),
        observers=[Broken(), recording],  # type: ignore[list-item]
    )
    engine.start()
    assert engine.wait_until_drained(2)
    assert [r.status for r in sink.results] == [JobStatus.SUCCEEDED] * 2
    assert ("delivered", "j1") in recording.events
    assert not engine.failed.is_set()


def test_a_fatal_source_error_fails_the_engine_with_its_reason() -> None:
    class RefusingSource(InMemoryJobSource):
        def fetch(self, max_jobs: int, timeout_s: float):  # type: ignore[no-untyped-def]
            raise SourceFailed("Kafka refused the group join: GroupAuthorizationFailedError")

    engine = WorkerEngine(RefusingSource(), InMemoryResultSink(), ExecutorRegistry(), config())
    engine.start()
    assert engine.failed.wait(1)
    assert isinstance(engine.failure, SourceFailed)
    assert "GroupAuthorizationFailedError" in str(engine.failure)


def test_an_engine_loop_that_dies_fails_the_engine_loudly() -> None:
    class BrokenSource(InMemoryJobSource):
        def exhausted(self) -> bool:
            raise AttributeError("a bug in a source")

    engine = WorkerEngine(BrokenSource(), InMemoryResultSink(), ExecutorRegistry(), config())
    engine.start()
    assert engine.failed.wait(1), "a dead intake loop must not go unnoticed"
    assert isinstance(engine.failure, AttributeError)


class WaitsForRelease:
    """A job that runs until the test sets ``release``."""

    def __init__(self) -> None:
        self.started = gevent.event.Event()
        self.release = gevent.event.Event()

    def execute(self, job: Job) -> str:
        self.started.set()
        self.release.wait()
        return "released"


def test_the_source_is_kept_alive_while_stop_drains_the_pool() -> None:
    executor = WaitsForRelease()
    source = InMemoryJobSource([Job(id="j0", type="WAIT")], finite=False)
    engine = WorkerEngine(
        source,
        InMemoryResultSink(),
        ExecutorRegistry({"WAIT": executor}),
        config(fetch_timeout_s=0.01),
    )
    engine.start()
    assert executor.started.wait(5), "the job did not start"
    asked_before_stop = len(source.fetch_sizes)
    stopping = gevent.spawn(engine.stop, timeout=10)
    wait_until(
        lambda: len(source.fetch_sizes) >= asked_before_stop + 3,
        message="the source was not polled while stop drained the pool",
    )
    executor.release.set()
    assert stopping.get(timeout=10).clean
    during_drain = source.fetch_sizes[asked_before_stop:]
    assert set(during_drain) == {0}, "and never asked for new jobs"


def test_refused_results_waiting_at_once_are_bounded_by_the_results_queue() -> None:
    sink = InMemoryResultSink(refuse=frozenset(f"j{i}" for i in range(10)))
    source = InMemoryJobSource(sleep_jobs(10), finite=False)
    policy = fast_refusals(dead_letter=False, retry_base_s=30, retry_max_s=30)
    cfg = config(result_senders=1, results_queue_size=2, refusals=policy)
    engine = WorkerEngine(source, sink, ExecutorRegistry({"SLEEP": SleepFor()}), cfg)
    engine.start()
    # Settled: the sender holds an offered result it has no room to park.
    wait_until(
        lambda: len(sink.offers) > engine.results_waiting_to_retry >= 2,
        message="the refused results never filled the room to wait in",
    )
    assert engine.results_waiting_to_retry == 2, "the rest wait in the bounded queues"
    assert engine.stop(timeout=2).results_not_delivered >= 3


def test_results_go_to_the_sink_in_batches_and_every_job_is_acked_once() -> None:
    sink = InMemoryResultSink()
    source, sink, _ = run_to_end(
        sleep_jobs(200),
        ExecutorRegistry({"SLEEP": SleepFor()}),
        sink,
        pool_size=50,
        jobs_queue_size=100,
        results_queue_size=100,
        result_batch_size=40,
        result_batch_linger_s=0.01,
    )
    assert sorted(source.acked_ids) == sorted(f"j{i}" for i in range(200))
    assert sorted(r.job_id for r in sink.results) == sorted(source.acked_ids)
    assert max(sink.batches) > 1, f"batches: {sink.batches}"
    assert max(sink.batches) <= 40
    assert sink.offers == {}, "nothing needed sending one at a time"


def test_a_sink_without_batches_gets_one_result_at_a_time_after_its_first_answer() -> None:
    sink = InMemoryResultSink()
    sink.refuse_batches = True
    source, sink, _ = run_to_end(
        sleep_jobs(50), ExecutorRegistry({"SLEEP": SleepFor()}), sink, result_batch_size=10
    )
    assert sorted(source.acked_ids) == sorted(f"j{i}" for i in range(50))
    assert len(sink.batches) <= 2, "asked once per sender at most, then never again"
    assert all(count == 1 for count in sink.offers.values())


def test_a_batch_with_a_refused_result_is_narrowed_down_to_it() -> None:
    sink = InMemoryResultSink(refuse=frozenset({"j3"}))
    store = InMemoryRefusedResultStore()
    source, sink, engine = run_to_end(
        sleep_jobs(8),
        ExecutorRegistry({"SLEEP": SleepFor()}),
        sink,
        store,
        pool_size=8,
        jobs_queue_size=8,
        results_queue_size=8,
        result_senders=1,
        result_batch_size=8,
        result_batch_linger_s=0.05,
    )
    assert sorted(source.acked_ids) == sorted(f"j{i}" for i in range(8))
    assert sorted(r.job_id for r in sink.results) == sorted(f"j{i}" for i in range(8) if i != 3)
    assert store.job_ids == ["j3"]
    assert engine.results_refused == 3


class CountsDelivered:
    """Never yields; notes how many results the sink had when each job ran."""

    def __init__(self, sink: InMemoryResultSink) -> None:
        self.sink = sink
        self.delivered_seen: list[int] = []

    def execute(self, job: Job) -> str:
        self.delivered_seen.append(len(self.sink.by_id()))
        return "ok"


def test_a_pool_slot_running_queued_jobs_back_to_back_still_lets_results_out() -> None:
    # One slot, a full queue and jobs that never yield: the slot takes job after job
    # from the queue, and must still hand the hub over now and then, or no result
    # would reach the sink (nor any job be acked) until the queue ran dry.
    sink = InMemoryResultSink()
    executor = CountsDelivered(sink)
    jobs = [Job(id=f"j{i}", type="ECHO", payload="") for i in range(300)]
    cfg = config(
        pool_size=1, jobs_queue_size=200, results_queue_size=500, result_batch_linger_s=0.0
    )
    source = InMemoryJobSource(jobs)
    engine = WorkerEngine(source, sink, ExecutorRegistry({"ECHO": executor}), cfg)
    engine.start()
    assert engine.wait_until_drained(5)
    engine.stop(timeout=2)
    assert len(sink.by_id()) == 300
    assert sorted(source.acked_ids) == sorted(job.id for job in jobs)
    first_full_queue = executor.delivered_seen[:200]
    assert max(first_full_queue) > 0, "results went out while the queue was still full"


# -- a job waiting for its next attempt holds no pool slot ------------------------------

NO_JITTER = RetryPolicy(max_attempts=10, backoff_base_s=0.0, backoff_max_s=0.0)


class AsksToComeBack:
    """Answers "busy, come back in ``retry_after_s``" (a 429/503 with Retry-After)
    ``times`` times per job, then succeeds."""

    def __init__(self, retry_after_s: float, times: int = 1) -> None:
        self.retry_after_s = retry_after_s
        self.times = times
        self.calls: dict[str, int] = {}

    def execute(self, job: Job) -> str:
        self.calls[job.id] = self.calls.get(job.id, 0) + 1
        if self.calls[job.id] <= self.times:
            raise RetryableJobError("busy", retry_after_s=self.retry_after_s)
        return "ok"


def test_a_job_waiting_for_its_next_attempt_lets_the_jobs_behind_it_run() -> None:
    # One slot, and the first job is asked to come back later: the jobs queued behind it
    # run in the meantime, and only then does it come back for its second attempt. A
    # slot held through the backoff would run r#2 straight after r#1.
    observer = RecordingObserver()
    busy = AsksToComeBack(retry_after_s=0.05)
    registry = ExecutorRegistry({"BUSY": busy, "SLEEP": SleepFor()})
    source = InMemoryJobSource([Job(id="r", type="BUSY"), *sleep_jobs(3)])
    sink = InMemoryResultSink()
    cfg = config(pool_size=1, jobs_queue_size=4, retry=NO_JITTER, refusals=fast_refusals())
    engine = WorkerEngine(source, sink, registry, cfg, observers=[observer])
    engine.start()
    assert engine.wait_until_drained(5), "engine did not drain"
    assert engine.stop(timeout=1).clean
    started = [name for kind, name in observer.events if kind == "started"]
    assert started == ["r#1", "j0#1", "j1#1", "j2#1", "r#2"]
    result = sink.by_id()["r"]
    assert (result.status, result.attempts, result.output) == (JobStatus.SUCCEEDED, 2, "ok")
    assert sorted(source.acked_ids) == ["j0", "j1", "j2", "r"]


def test_jobs_waiting_to_retry_counts_the_waiting_jobs_not_the_running_ones() -> None:
    # Two jobs wait at once with a single slot (only possible if neither holds it), and
    # a third job still runs to its end meanwhile.
    busy = AsksToComeBack(retry_after_s=60)
    registry = ExecutorRegistry({"BUSY": busy, "SLEEP": SleepFor()})
    source = InMemoryJobSource([Job(id="r0", type="BUSY"), Job(id="r1", type="BUSY")], finite=False)
    cfg = config(pool_size=1, retry=NO_JITTER, max_job_timeout_s=300.0)
    engine = WorkerEngine(source, InMemoryResultSink(), registry, cfg)
    engine.start()
    assert engine.jobs_waiting_to_retry == 0
    wait_until(lambda: engine.jobs_waiting_to_retry == 2, message="the jobs did not both wait")
    source.put(*sleep_jobs(1))
    assert source.wait_for_acks(1), "the slot was held by a waiting job"
    assert source.acked_ids == ["j0"]
    assert (engine.jobs_waiting_to_retry, engine.jobs_in_flight) == (2, 0)
    assert engine.stop(timeout=5).jobs_given_back_waiting == 2
    assert engine.jobs_waiting_to_retry == 0


def test_stop_gives_a_waiting_job_back_unacked_without_waiting_out_its_backoff() -> None:
    busy = AsksToComeBack(retry_after_s=60)
    source = InMemoryJobSource([Job(id="r", type="BUSY")], finite=False)
    sink = InMemoryResultSink()
    cfg = config(pool_size=1, retry=NO_JITTER, max_job_timeout_s=300.0)
    engine = WorkerEngine(source, sink, ExecutorRegistry({"BUSY": busy}), cfg)
    engine.start()
    wait_until(lambda: engine.jobs_waiting_to_retry == 1, message="the job did not wait")
    started = time.monotonic()
    report = engine.stop(timeout=120)
    # Loose on purpose: a stop that waited out the backoff would take 60 s.
    assert time.monotonic() - started < 30, "stop waited out the backoff"
    assert report.jobs_given_back_waiting == 1
    assert (report.jobs_abandoned_in_flight, report.jobs_not_started) == (0, 0)
    assert not report.clean, "a job given back is not a clean stop"
    assert source.acked == []
    assert sink.results == []
    assert engine.jobs_waiting_to_retry == 0
    assert busy.calls == {"r": 1}


class BusyWhenReleased:
    """Runs until the test sets ``release``, then answers "busy, come back in a minute"."""

    def __init__(self) -> None:
        self.started = gevent.event.Event()
        self.release = gevent.event.Event()
        self.calls = 0

    def execute(self, job: Job) -> str:
        self.calls += 1
        self.started.set()
        self.release.wait()
        raise RetryableJobError("busy", retry_after_s=60)


def test_a_job_asked_to_come_back_while_stop_drains_the_pool_is_given_back() -> None:
    executor = BusyWhenReleased()
    source = InMemoryJobSource([Job(id="r", type="BUSY")], finite=False)
    sink = InMemoryResultSink()
    cfg = config(pool_size=1, retry=NO_JITTER, max_job_timeout_s=300.0)
    engine = WorkerEngine(source, sink, ExecutorRegistry({"BUSY": executor}), cfg)
    engine.start()
    assert executor.started.wait(5), "the job did not start"
    asked_before_stop = len(source.fetch_sizes)
    stopping = gevent.spawn(engine.stop, timeout=120)
    # The keep-alive polls (asking for 0 jobs) begin once the pool takes no more jobs.
    wait_until(
        lambda: 0 in source.fetch_sizes[asked_before_stop:],
        message="stop did not get to draining the pool",
    )
    executor.release.set()
    report = stopping.get(timeout=30)
    assert report.jobs_given_back_waiting == 1
    assert not report.clean
    assert source.acked == []
    assert sink.results == []
    assert engine.jobs_waiting_to_retry == 0
    assert executor.calls == 1


def test_a_job_whose_deadline_passes_while_it_waits_ends_timed_out_with_its_last_error() -> None:
    # Asked to come back in a minute, with 50 ms left: the wait is cut to the deadline
    # (or the run would not drain within run_to_end's 5 s), and the job ends there.
    # Attempts to spare: the job can only end at its deadline, never by giving up.
    retry = RetryPolicy(max_attempts=1000, backoff_base_s=0.0, backoff_max_s=0.0)
    busy = AsksToComeBack(retry_after_s=60, times=1000)
    job = Job(id="r", type="BUSY", timeout_ms=50)
    source, sink, _ = run_to_end([job], ExecutorRegistry({"BUSY": busy}), retry=retry)
    [result] = sink.results
    assert result.status is JobStatus.TIMED_OUT
    assert result.error.startswith("timed out after 0.05s (attempt ")
    assert result.error.endswith("; last error: busy")
    assert result.duration_ms < 30_000
    assert source.acked_ids == ["r"]


# -- limits and breakers: a job that may not start yet holds no pool slot -------------


class BlocksUntilTold:
    """Runs until the test sets ``go``; notes how many of its jobs ran at once."""

    def __init__(self) -> None:
        self.go = gevent.event.Event()
        self.started: list[str] = []
        self.running = 0
        self.most_at_once = 0

    def execute(self, job: Job) -> str:
        self.started.append(job.id)
        self.running += 1
        self.most_at_once = max(self.most_at_once, self.running)
        try:
            self.go.wait()
        finally:
            self.running -= 1
        return "ok"


class CountsParks:
    """The engine's admission listener: counts the jobs parked, and breaker changes."""

    def __init__(self) -> None:
        self.parks: list[str] = []
        self.changes: list[BreakerState] = []

    def parked(self, gate: str, by_breaker: bool) -> None:
        self.parks.append(gate)

    def breaker_changed(self, target: str, state: BreakerState) -> None:
        self.changes.append(state)


ONE_SLEEP_AT_A_TIME = (TargetLimit("SLEEP", concurrent=1),)


def test_a_job_type_limit_holds_its_jobs_back_and_no_slot_with_them() -> None:
    # Four slots, three SLEEP jobs limited to one at a time, then two ECHO jobs: the
    # two SLEEP jobs waiting for the limit hold no slot, so both ECHO jobs run alongside.
    sleeps, echoes = BlocksUntilTold(), BlocksUntilTold()
    registry = ExecutorRegistry({"SLEEP": sleeps, "ECHO": echoes})
    jobs = [*sleep_jobs(3, prefix="s"), Job(id="e0", type="ECHO"), Job(id="e1", type="ECHO")]
    source = InMemoryJobSource(jobs)
    sink = InMemoryResultSink()
    cfg = config(pool_size=4, jobs_queue_size=8, target_limits=ONE_SLEEP_AT_A_TIME)
    engine = WorkerEngine(source, sink, registry, cfg)
    engine.start()
    wait_until(lambda: echoes.running == 2, message="the ECHO jobs did not run alongside")
    assert sleeps.started == ["s0"], "one SLEEP job at a time"
    sleeps.go.set()
    echoes.go.set()
    assert engine.wait_until_drained(5)
    assert engine.stop(timeout=1).clean
    assert sleeps.most_at_once == 1
    assert sorted(sleeps.started) == ["s0", "s1", "s2"]
    assert [r.status for r in sink.results] == [JobStatus.SUCCEEDED] * 5
    assert sorted(source.acked_ids) == ["e0", "e1", "s0", "s1", "s2"]


def test_a_job_whose_deadline_passes_while_it_waits_for_a_limit_ends_timed_out() -> None:
    sleeps = BlocksUntilTold()
    jobs = [Job(id="first", type="SLEEP"), Job(id="late", type="SLEEP", timeout_ms=30)]
    source = InMemoryJobSource(jobs)
    sink = InMemoryResultSink()
    cfg = config(target_limits=ONE_SLEEP_AT_A_TIME, max_job_timeout_s=300.0)
    engine = WorkerEngine(source, sink, ExecutorRegistry({"SLEEP": sleeps}), cfg)
    engine.start()
    wait_until(lambda: "late" in sink.by_id(), message="the waiting job never timed out")
    result = sink.by_id()["late"]
    assert result.status is JobStatus.TIMED_OUT
    assert result.error == (
        "timed out after 0.03s waiting for limit SLEEP=1 concurrent (attempt 1 never started)"
    )
    assert result.attempts == 0
    assert sleeps.started == ["first"]
    sleeps.go.set()
    assert engine.wait_until_drained(5)
    assert sorted(source.acked_ids) == ["first", "late"]


def test_stop_gives_jobs_waiting_for_a_limit_back_unacked_at_once() -> None:
    sleeps = BlocksUntilTold()
    source = InMemoryJobSource(sleep_jobs(3), finite=False)
    sink = InMemoryResultSink()
    listener = CountsParks()
    cfg = config(target_limits=ONE_SLEEP_AT_A_TIME, max_job_timeout_s=300.0)
    engine = WorkerEngine(
        source, sink, ExecutorRegistry({"SLEEP": sleeps}), cfg, admission_listener=listener
    )
    engine.start()
    wait_until(lambda: len(listener.parks) == 2, message="the jobs did not wait for the limit")
    asked_before_stop = len(source.fetch_sizes)

    def end_j0_while_stop_drains_the_pool() -> None:
        # The keep-alive polls (asking for 0 jobs) begin once the waiting jobs are given
        # back: j0 ending then must wake none of them.
        wait_until(lambda: 0 in source.fetch_sizes[asked_before_stop:], message="no drain")
        sleeps.go.set()

    gevent.spawn(end_j0_while_stop_drains_the_pool)
    started = time.monotonic()
    report = engine.stop(timeout=120)
    # Loose on purpose: the waiting jobs' deadlines are 300 s away.
    assert time.monotonic() - started < 30, "stop waited for the waiting jobs"
    assert report.jobs_given_back_waiting == 2
    assert (report.jobs_abandoned_in_flight, report.jobs_not_started) == (0, 0)
    assert source.acked_ids == ["j0"], "the two waiting jobs are not acked"
    assert sleeps.started == ["j0"], "nothing woke them once stop() began"


class DownHost:
    """Calls the host ``h.example``, which is down: every call fails against it."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    def targets(self, job: Job) -> list[str]:
        return ["host:h.example"]

    def execute(self, job: Job) -> str:
        self.calls.append(job.id)
        raise RetryableJobError("h.example: connection refused", target_down=True)


def test_a_probe_past_its_deadline_before_its_attempt_does_not_close_the_breaker() -> None:
    # f opens the breaker; p waits for it, is let through as the probe after the
    # cool-down, but its slot is taken by `blocker` until p's deadline has passed: p
    # never calls the host, so it decides nothing (the breaker stays half-open).
    down, blocker = DownHost(), BlocksUntilTold()
    registry = ExecutorRegistry({"HTTP": down, "SLEEP": blocker})
    jobs = [
        Job(id="f", type="HTTP"),
        Job(id="p", type="HTTP", timeout_ms=200),
        Job(id="blocker", type="SLEEP"),
    ]
    source = InMemoryJobSource(jobs)
    sink = InMemoryResultSink()
    listener = CountsParks()
    cfg = config(
        pool_size=1,
        retry=RetryPolicy(max_attempts=1),
        breaker=BreakerPolicy(failures=1, cooldown_s=0.01),
        max_job_timeout_s=300.0,
    )
    engine = WorkerEngine(source, sink, registry, cfg, admission_listener=listener)
    engine.start()
    wait_until(lambda: blocker.started, message="the blocker did not start")
    started = time.monotonic()
    wait_until(
        lambda: time.monotonic() - started > 0.3, message="p's deadline did not pass", timeout_s=5
    )
    blocker.go.set()
    assert engine.wait_until_drained(5)
    assert sink.by_id()["p"].status is JobStatus.TIMED_OUT
    assert down.calls == ["f"]
    assert listener.changes == [BreakerState.OPEN, BreakerState.HALF_OPEN]
