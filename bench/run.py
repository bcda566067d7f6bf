"""``make bench``: the engine's speed and memory, as ratios measured in one run.

The machines this runs on are shared and noisy, so no figure here is a pass/fail
threshold: each speed is printed beside a baseline measured in the same process
moments apart, and the ratio is what to compare between runs. The one check that can
fail the run is a correctness property: with the sink stalled, the engine must take no
more jobs from its source than its queues and pool can hold.
"""

# ruff: noqa: E402 - gevent must patch the standard library before anything else loads
from gevent import monkey

monkey.patch_all()

import gc
import os
import platform
import sys
import time
import tracemalloc
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

# `python bench/run.py` puts bench/ first on sys.path; the project root must be there too.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import gevent
from google.protobuf.internal import api_implementation

from bench.workloads import CountingResultSink, LazyJobSource, ReturnOkExecutor, resident_bytes
from jobworker.adapters.codec import job_from_task, result_to_proto, task_from_job
from jobworker.adapters.executors.sleep import SleepExecutor
from jobworker.adapters.memory import InMemoryJobSource, InMemoryResultSink
from jobworker.adapters.proto.jobworker.v1 import jobworker_pb2 as pb
from jobworker.application.engine import WorkerEngine
from jobworker.application.engine_config import EngineConfig
from jobworker.application.registry import ExecutorRegistry
from jobworker.domain.model import Job, JobResult, JobStatus

REPEATS = 3
OVERHEAD_JOBS = 20_000
OVERHEAD_POOL = 50
# The engine's intake sleeps in fetch(0, fetch_timeout_s) whenever the jobs queue is
# full. A short timeout measures the engine's per-job cost; the default (0.5 s) is
# measured separately because it caps throughput on its own.
FETCH_TIMEOUT_S = 0.001
DEFAULT_TIMEOUT_WINDOW_S = 3.0
SLEEP_MS = 20
CONCURRENCY = ((1, 100), (10, 2_000), (100, 2_000), (500, 2_000))  # (pool, jobs)
BACKLOG_JOBS = 200_000
STALL_POOL, STALL_JOBS_QUEUE, STALL_RESULTS_QUEUE, STALL_SENDERS = 50, 100, 100, 4
STALL_BATCH = 100  # results a sender gathers into one call (RESULT_BATCH_SIZE's default)
STALL_BOUND = STALL_JOBS_QUEUE + STALL_POOL + STALL_RESULTS_QUEUE + STALL_SENDERS * STALL_BATCH
STALL_S = 2.0
FLOW_S = 2.0
CODEC_MESSAGES = 20_000


class ResultsLost(Exception):  # noqa: N818 - reads as the finding it is
    """A drained engine delivered fewer results than it was given jobs."""


def main() -> int:
    print_header()
    try:
        engine_us_per_job = bench_engine_overhead()
        bench_concurrency()
    except ResultsLost as lost:
        print(f"\nFAIL: {lost}")
        return 1
    bounded = bench_bounded_memory()
    bench_codec(engine_us_per_job)
    return 0 if bounded else 1


def print_header() -> None:
    print("jobworker benchmarks")
    print(
        f"  cpus {os.cpu_count()}, Python {platform.python_version()} "
        f"({platform.python_implementation()}), gevent {gevent.__version__}, "
        f"protobuf backend {api_implementation.Type()}, {platform.platform()}"
    )
    print(
        "  Absolute numbers vary a lot on shared machines; compare the ratios, which are\n"
        "  measured in this one process moments apart."
    )


def section(title: str) -> None:
    print(f"\n{title}")


def best_time(run: Callable[[], object]) -> float:
    """The fastest of ``REPEATS`` timed calls: noise on a shared machine only adds time."""
    timings = []
    for _ in range(REPEATS):
        gc.collect()
        started = time.perf_counter()
        run()
        timings.append(time.perf_counter() - started)
    return min(timings)


def engine_config(pool_size: int, **overrides: object) -> EngineConfig:
    # Queue sizes follow the settings' defaults: twice the pool.
    values: dict[str, object] = {
        "worker_id": "bench",
        "pool_size": pool_size,
        "jobs_queue_size": 2 * pool_size,
        "results_queue_size": 2 * pool_size,
        "fetch_timeout_s": FETCH_TIMEOUT_S,
    }
    values.update(overrides)
    return EngineConfig(**values)  # type: ignore[arg-type]


def run_until_drained(engine: WorkerEngine, expected: int, delivered: Callable[[], int]) -> None:
    engine.start()
    drained = engine.wait_until_drained(timeout=120)
    engine.stop(timeout=5)
    if not drained or delivered() != expected:
        raise ResultsLost(f"the engine delivered {delivered()} of {expected} results")


# -- 1. engine overhead ----------------------------------------------------------------


def bench_engine_overhead() -> float:
    section(
        f"1. Engine overhead: {OVERHEAD_JOBS:,} no-op jobs, pool {OVERHEAD_POOL}, best of {REPEATS}"
    )
    jobs = [Job(id=f"job-{number}", type="NOOP") for number in range(OVERHEAD_JOBS)]
    executor = ReturnOkExecutor()

    def direct() -> None:
        results = []
        for job in jobs:
            started = time.time_ns() // 1_000_000
            output = executor.execute(job)
            results.append(
                JobResult(
                    job_id=job.id,
                    type=job.type,
                    status=JobStatus.SUCCEEDED,
                    output=output,
                    attempts=1,
                    started_at_unix_ms=started,
                    finished_at_unix_ms=time.time_ns() // 1_000_000,
                    worker_id="bench",
                    metadata=dict(job.metadata),
                )
            )

    def through_engine() -> None:
        sink = InMemoryResultSink()
        engine = WorkerEngine(
            InMemoryJobSource(jobs),
            sink,
            ExecutorRegistry({"NOOP": executor}),
            engine_config(OVERHEAD_POOL),
        )
        run_until_drained(engine, OVERHEAD_JOBS, lambda: len(sink.results))

    direct_s = best_time(direct)
    engine_s = best_time(through_engine)
    direct_us, engine_us = direct_s / OVERHEAD_JOBS * 1e6, engine_s / OVERHEAD_JOBS * 1e6
    print(f"   {'direct loop (executor + JobResult)':<44}{rate(OVERHEAD_JOBS, direct_s)}")
    print(
        f"   {f'WorkerEngine, fetch_timeout_s={FETCH_TIMEOUT_S:g}':<44}"
        f"{rate(OVERHEAD_JOBS, engine_s)}"
    )
    print(
        f"   engine takes {engine_s / direct_s:.1f}x the direct loop's time: "
        f"{engine_us - direct_us:.1f} µs of engine overhead per job"
    )
    default_rate = no_op_rate_with_default_fetch_timeout()
    short_timeout_rate = OVERHEAD_JOBS / engine_s
    print(
        f"   {'WorkerEngine, default fetch_timeout_s=0.5':<44}{default_rate:>10,.0f} jobs/s"
        f"   ({default_rate / short_timeout_rate:.3f}x the short timeout's rate)"
    )
    print(
        "   (near 1x: a full queue wakes intake as soon as it drains, so the fetch timeout\n"
        "   never caps throughput; it was 0.01x before that fix)"
    )
    return engine_us


def no_op_rate_with_default_fetch_timeout() -> float:
    """No-op jobs per second over a fixed window, the engine's default intake timeout."""
    source = LazyJobSource(10**9, lambda number: Job(id=f"job-{number}", type="NOOP"))
    sink = CountingResultSink()
    config = engine_config(OVERHEAD_POOL, fetch_timeout_s=EngineConfig().fetch_timeout_s)
    engine = WorkerEngine(source, sink, ExecutorRegistry({"NOOP": ReturnOkExecutor()}), config)
    engine.start()
    gevent.sleep(DEFAULT_TIMEOUT_WINDOW_S)
    delivered = sink.delivered
    engine.stop(timeout=5)
    return delivered / DEFAULT_TIMEOUT_WINDOW_S


def rate(jobs: int, seconds: float) -> str:
    return f"{jobs / seconds:>10,.0f} jobs/s {seconds / jobs * 1e6:>8.1f} µs/job"


# -- 2. concurrency --------------------------------------------------------------------


def bench_concurrency() -> None:
    section(f"2. Concurrency: SLEEP jobs of {SLEEP_MS} ms (the real SleepExecutor), one run each")
    print(
        f"   {'pool':>5} {'jobs':>6} {'ideal':>9} {'actual':>9} {'efficiency':>11} "
        f"{'jobs/s':>9} {'cpu':>8}"
    )
    payload = f'{{"ms": {SLEEP_MS}}}'
    for pool_size, count in CONCURRENCY:
        source = LazyJobSource(
            count, lambda number: Job(id=f"job-{number}", type="SLEEP", payload=payload)
        )
        sink = CountingResultSink()
        engine = WorkerEngine(
            source, sink, ExecutorRegistry({"SLEEP": SleepExecutor()}), engine_config(pool_size)
        )
        gc.collect()
        started, cpu_started = time.perf_counter(), time.process_time()
        run_until_drained(engine, count, lambda sink=sink: sink.delivered)  # type: ignore[misc]
        actual, cpu = time.perf_counter() - started, time.process_time() - cpu_started
        ideal = count * SLEEP_MS / 1000 / pool_size
        print(
            f"   {pool_size:>5} {count:>6,} {ideal:>8.2f}s {actual:>8.2f}s "
            f"{ideal / actual:>10.0%} {count / actual:>9,.0f} {cpu:>7.2f}s"
        )
    print(
        "   ideal = jobs x sleep / pool; efficiency = ideal / actual (100% is perfect);\n"
        "   cpu = process CPU time: where it nears actual, the one gevent hub is the limit"
    )


# -- 3. bounded memory -----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class StalledRun:
    taken_halfway: int
    taken: int
    held: tuple[int, int, int]  # jobs queue depth, pool in flight, results queue depth
    peak_traced: int  # bytes above the baseline, while the sink was blocked
    rss_change: int
    delivered_after_unblock: int
    peak_traced_after_unblock: int


def bench_bounded_memory() -> bool:
    """Returns False when the engine took more jobs than its bound while stalled."""
    section(
        f"3. Bounded memory: {BACKLOG_JOBS:,} pending jobs (made lazily), no-op executor, "
        f"pool {STALL_POOL}, queues {STALL_JOBS_QUEUE}/{STALL_RESULTS_QUEUE}, "
        f"{STALL_SENDERS} senders"
    )
    backlog_bytes = materialised_backlog_bytes()
    gc.collect()
    tracemalloc.start()
    try:
        stalled = run_with_stalled_sink()
        fast_delivered, fast_peak = run_with_fast_sink()
    finally:
        tracemalloc.stop()

    within = stalled.taken <= STALL_BOUND
    verdict = "OK" if within else "FAIL: the engine pulled more than its queues hold"
    print(
        f"   jobs taken while stalled: {stalled.taken} (bound: {STALL_BOUND} = jobs queue "
        f"{STALL_JOBS_QUEUE} + pool {STALL_POOL} + results queue "
        f"{STALL_RESULTS_QUEUE} + senders {STALL_SENDERS} x batch {STALL_BATCH}) {verdict}"
    )
    queued, in_flight, results = stalled.held
    print(
        f"   held at {STALL_S:g} s: jobs queue {queued}, pool {in_flight}, results queue "
        f"{results}, senders {stalled.taken - queued - in_flight - results}; "
        f"taken after {STALL_S / 2:g} s: {stalled.taken_halfway}"
    )
    print(
        "   (intake resumes only once the jobs queue drains to its low-water mark, so the\n"
        "   queue may stall part-full: up to half of it below the bound is expected)"
    )
    print(f"   {'':<44}{'peak traced':>12}  {'jobs delivered':>14}")
    rows = (
        (f"sink stalled for {STALL_S:g} s", stalled.peak_traced, 0),
        (
            f"then unblocked for {FLOW_S:g} s",
            stalled.peak_traced_after_unblock,
            stalled.delivered_after_unblock,
        ),
        (f"fast sink for {FLOW_S:g} s (fresh engine)", fast_peak, fast_delivered),
        (f"for scale: all {BACKLOG_JOBS:,} jobs held in memory", backlog_bytes, 0),
    )
    for label, traced, delivered in rows:
        print(f"   {label:<44}{kib(traced):>12}  {delivered or '-':>14}")
    print(
        f"   stalled engine's peak is {stalled.peak_traced / fast_peak:.2f}x a fast run's and "
        f"{stalled.peak_traced / backlog_bytes:.1%} of the backlog; RSS changed by "
        f"{kib(stalled.rss_change)} while stalled"
    )
    print("   (tracemalloc is on for this section, so its throughput is not comparable)")
    return within


def backlog_engine(sink: CountingResultSink) -> tuple[LazyJobSource, WorkerEngine]:
    source = LazyJobSource(BACKLOG_JOBS, lambda number: Job(id=f"job-{number}", type="NOOP"))
    config = engine_config(
        STALL_POOL,
        jobs_queue_size=STALL_JOBS_QUEUE,
        results_queue_size=STALL_RESULTS_QUEUE,
        result_senders=STALL_SENDERS,
        result_batch_size=STALL_BATCH,
    )
    registry = ExecutorRegistry({"NOOP": ReturnOkExecutor()})
    return source, WorkerEngine(source, sink, registry, config)


def run_with_stalled_sink() -> StalledRun:
    """Blocks the sink for ``STALL_S``, then lets results flow for ``FLOW_S``."""
    sink = CountingResultSink()
    sink.block()
    source, engine = backlog_engine(sink)
    base_traced, base_rss = tracemalloc.get_traced_memory()[0], resident_bytes()
    tracemalloc.reset_peak()
    engine.start()
    gevent.sleep(STALL_S / 2)
    taken_halfway = source.taken
    gevent.sleep(STALL_S / 2)
    taken = source.taken
    held = (engine.jobs_queue_depth, engine.jobs_in_flight, engine.results_queue_depth)
    peak_traced = tracemalloc.get_traced_memory()[1] - base_traced
    rss_change = resident_bytes() - base_rss
    sink.unblock()
    gevent.sleep(FLOW_S)
    run = StalledRun(
        taken_halfway=taken_halfway,
        taken=taken,
        held=held,
        peak_traced=peak_traced,
        rss_change=rss_change,
        delivered_after_unblock=sink.delivered,
        peak_traced_after_unblock=tracemalloc.get_traced_memory()[1] - base_traced,
    )
    engine.stop(timeout=5)
    return run


def run_with_fast_sink() -> tuple[int, int]:
    """Jobs delivered in ``FLOW_S`` and the peak traced bytes above the baseline."""
    sink = CountingResultSink()
    _, engine = backlog_engine(sink)
    gc.collect()
    base_traced = tracemalloc.get_traced_memory()[0]
    tracemalloc.reset_peak()
    engine.start()
    gevent.sleep(FLOW_S)
    delivered, peak = sink.delivered, tracemalloc.get_traced_memory()[1] - base_traced
    engine.stop(timeout=5)
    return delivered, peak


def materialised_backlog_bytes() -> int:
    """What an engine that read the whole backlog into memory would hold, at least."""
    gc.collect()
    tracemalloc.start()
    try:
        jobs = [Job(id=f"job-{number}", type="NOOP") for number in range(BACKLOG_JOBS)]
        held = tracemalloc.get_traced_memory()[0]
        del jobs
    finally:
        tracemalloc.stop()
    return held


def kib(size: int) -> str:
    return f"{size / 1024:,.0f} KiB"


# -- 4. codec --------------------------------------------------------------------------


def bench_codec(engine_us_per_job: float) -> None:
    section(f"4. Wire codec: {CODEC_MESSAGES:,} messages, best of {REPEATS}")
    job = Job(
        id="0f8e2a4c-5b7d-4e1f-9a3b-2c6d8e0f1a2b",
        type="SLEEP",
        payload='{"ms": 20, "output": "hello"}',
        timeout_ms=5_000,
        metadata={"trace_id": "4bf92f3577b34da6a3ce929d0e0e4736", "tenant": "acme"},
        created_at_unix_ms=1_760_000_000_000,
    )
    wire = task_from_job(job).SerializeToString()
    result = JobResult(
        job_id=job.id,
        type=job.type,
        status=JobStatus.SUCCEEDED,
        output='{"slept_ms": 20, "output": "hello"}',
        attempts=1,
        started_at_unix_ms=1_760_000_000_000,
        finished_at_unix_ms=1_760_000_000_020,
        worker_id="bench",
        metadata=dict(job.metadata),
    )
    messages = range(CODEC_MESSAGES)

    def decode() -> None:
        for _ in messages:
            job_from_task(pb.JobTask.FromString(wire))

    def encode_result() -> None:
        for _ in messages:
            pb.ReportResultRequest(result=result_to_proto(result)).SerializeToString()

    for label, run in (
        (f"JobTask bytes -> Job ({len(wire)} B)", decode),
        ("JobResult -> ReportResultRequest bytes", encode_result),
    ):
        seconds = best_time(run)
        per_message_us = seconds / CODEC_MESSAGES * 1e6
        print(
            f"   {label:<44}{CODEC_MESSAGES / seconds:>10,.0f} msg/s {per_message_us:>6.1f} µs"
            f"   ({per_message_us / engine_us_per_job:.2f}x the engine's per-job time)"
        )


if __name__ == "__main__":
    sys.exit(main())
