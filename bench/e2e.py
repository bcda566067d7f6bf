"""``make bench``, end to end: Kafka -> the worker CLI -> a Core in its own process.

Needs a broker (``KAFKA_BOOTSTRAP_SERVERS``; ``make bench`` starts the local one). Every
speed is printed beside a baseline measured in the same run, and the ratio is what to
compare between runs: the machines are shared and noisy, and no figure here fails the
run. The run exits non-zero only when a worker loses results, dies or stalls.

    python bench/e2e.py [--quick] [--repeats N] [--only 1,3] [--latency-rate R] [--profile DIR]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from kafka import KafkaProducer

# `python bench/e2e.py` puts bench/ first on sys.path; the project root must be there too.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import e2e_core, e2e_processes
from bench.e2e_kafka import PARTITIONS, Topics, fast_producer, fill, produce_paced, raw_consume_rate
from bench.e2e_processes import ROOT, BenchCore, WorkerProcess, child_env
from bench.e2e_runs import Bench, WorkerRun, wait_for_results

# "info" (the default) logs a line per job: a cost of its own, measured once beside it.
LOG_LEVEL = "warning"
NOOP_POOL = 100
SLEEP_MS = 100
SLEEP_POOLS = (200, 1_000)
BACKLOG_POOL = 1_000
LATENCY_LOAD = 0.5  # of the top no-op rate the worker sustains while the producer runs
# What section 3's probe offers when section 1 did not run: more than the worker takes.
PROBE_CEILING = 20_000
# The probe's first second is left out of its rate: the worker's fetches are ramping up.
PROBE_SKIP_S = 1.0
MB = 1024 * 1024


@dataclass(frozen=True)
class Scale:
    noop_jobs: int
    sleep_waves: int  # SLEEP jobs per pool slot
    latency_s: float
    probe_s: float  # section 3's sustained-rate probe, the producer running
    backlogs: tuple[int, int]
    repeats: int


FULL = Scale(
    noop_jobs=50_000,
    sleep_waves=30,
    latency_s=10,
    probe_s=6,
    backlogs=(10_000, 1_000_000),
    repeats=3,
)
QUICK = Scale(
    noop_jobs=20_000, sleep_waves=10, latency_s=5, probe_s=4, backlogs=(10_000, 200_000), repeats=1
)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--quick", action="store_true", help="fewer records, one repeat")
    parser.add_argument("--repeats", type=int, help="runs of each speed figure (best is shown)")
    parser.add_argument("--only", help="sections to run, e.g. 1,3 (default: all)")
    parser.add_argument(
        "--latency-rate",
        type=float,
        help="section 3's rate in jobs/s (default: half of what the worker sustains while the"
        " bench's producer runs, probed in section 3)",
    )
    parser.add_argument("--profile", type=Path, help="py-spy every worker (raw format) into DIR")
    args = parser.parse_args()
    only = {int(part) for part in args.only.split(",")} if args.only else {1, 2, 3, 4}
    if args.profile:
        args.profile.mkdir(parents=True, exist_ok=True)
        e2e_processes.PROFILE_DIR = args.profile.resolve()
    scale = QUICK if args.quick else FULL
    repeats = args.repeats or scale.repeats
    servers = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
    if not servers:
        print("bench/e2e.py needs KAFKA_BOOTSTRAP_SERVERS (make bench starts a local broker)")
        return 2
    print_header(repeats)
    topics = Topics(servers, f"bench-e2e-{os.getpid()}-{int(time.time())}")
    try:
        with tempfile.TemporaryDirectory(prefix="bench-e2e-") as workdir:
            bench = Bench(servers, Path(workdir), LOG_LEVEL)
            top_rate = bench_throughput(bench, topics, scale, repeats) if 1 in only else 0.0
            if 2 in only:
                bench_sleep(bench, topics, scale, repeats)
            if 3 in only:
                bench_latency(bench, topics, scale, top_rate, args.latency_rate)
            if 4 in only:
                bench_backlog_memory(bench, topics, scale)
    except RuntimeError as failure:
        print(f"\nFAIL: {failure}")
        return 1
    finally:
        topics.close()
    return 0


def print_header(repeats: int) -> None:
    batched = "yes" if e2e_core.BATCH_REQUEST is not None else "no (unary ReportResult only)"
    print("\njobworker end-to-end benchmark: Kafka -> worker CLI -> a Core process")
    print(
        f"  cpus {os.cpu_count()}, Python {platform.python_version()}, {platform.platform()}\n"
        f"  {PARTITIONS} partitions; worker LOG_LEVEL={LOG_LEVEL} (section 1 also at info);"
        " the bench Core counts results"
        f" and stores nothing\n"
        f"  ReportResults in the proto: {batched}; speed figures: best of {repeats}"
    )


def section(title: str) -> None:
    print(f"\n{title}")


def best_of(repeats: int, measure: Callable[[], float]) -> tuple[float, list[float]]:
    values = [measure() for _ in range(repeats)]
    return max(values), values


def spread(values: list[float]) -> str:
    if len(values) < 2:
        return ""
    return (
        f"  (runs {', '.join(f'{v:.3f}' for v in values)}; spread {max(values) - min(values):.3f})"
    )


def describe(run: WorkerRun) -> str:
    return (
        f"first result after {run.to_first_s:.1f} s; {run.results / run.calls:.1f} results per"
        f" call; cpu over the window: worker {run.worker_cpu_s / run.window_s:.0%},"
        f" Core {run.core_cpu_s / run.window_s:.0%}; peak RSS {run.peak_rss / MB:.0f} MB"
    )


# -- 1. no-op throughput ---------------------------------------------------------------


def bench_throughput(bench: Bench, topics: Topics, scale: Scale, repeats: int) -> float:
    """Raw consume+decode, then the worker end to end with and without ReportResults.
    Returns the best end-to-end no-op rate (jobs/s)."""
    count = scale.noop_jobs
    topic = topics.create("noop")
    filled = fill(bench.servers, topic, count, sleep_ms=0)
    section(
        f'1. No-op jobs (SLEEP {{"ms": 0}}), {count:,} records, worker pool {NOOP_POOL}'
        f" (pre-filled at {count / filled:,.0f} records/s)"
    )
    modes = ("both", "info", "unary")
    rows: dict[str, list[float]] = {mode: [] for mode in ("raw", *modes)}
    cpu: dict[str, list[float]] = {mode: [] for mode in ("raw", *modes)}  # µs per record
    runs: dict[str, WorkerRun] = {}
    with BenchCore("both") as both, BenchCore("unary") as unary:
        for _ in range(repeats):
            rate, cpu_us = raw_consume_rate(bench.servers, topic, count)
            rows["raw"].append(rate)
            cpu["raw"].append(cpu_us)
            for mode, core in (("both", both), ("info", both), ("unary", unary)):
                # "info": the default LOG_LEVEL, a "job finished" line per job.
                extra = {"LOG_LEVEL": "info"} if mode == "info" else {}
                run = bench.run(core, topic, count, NOOP_POOL, **extra)
                rows[mode].append(run.rate)
                cpu[mode].append(run.worker_cpu_s * 1e6 / run.results)
                if run.rate >= max(rows[mode]):
                    runs[mode] = run
    raw = max(rows["raw"])
    print(f"   {'raw kafka-python consume + JobTask.FromString':<48}{raw:>10,.0f} records/s")
    for mode, label in (
        ("both", "end to end, Core with both RPCs"),
        ("info", "the same at LOG_LEVEL=info (the default)"),
        ("unary", "end to end, unary-only Core (fallback)"),
    ):
        ratios = [r / w for r, w in zip(rows[mode], rows["raw"], strict=True)]
        print(
            f"   {label:<48}{max(rows[mode]):>10,.0f} jobs/s   {max(ratios):.3f}x raw"
            f"{spread(ratios)}"
        )
        print(f"      {describe(runs[mode])}")
    # CPU per record is far less moved by the machine's other load than a rate is.
    raw_cpu = min(cpu["raw"])
    print(f"   cpu per record (least of the runs): raw consume + decode {raw_cpu:.1f} µs;")
    for mode in modes:
        each = ", ".join(f"{value:.0f}" for value in cpu[mode])
        print(
            f"      worker, {mode:<5} {min(cpu[mode]):6.1f} µs per job = raw / "
            f"{min(cpu[mode]) / raw_cpu:.1f}  (runs {each} µs)"
        )
    fallback = max(rows["unary"]) / max(rows["both"])
    print(f"   fallback / both RPCs: {fallback:.2f}x")
    print(
        "   (rates run from the first result at Core to the last; ratios pair each run with"
        "\n   the raw read just before it)"
    )
    return max(rows["both"])


# -- 2. concurrency --------------------------------------------------------------------


def bench_sleep(bench: Bench, topics: Topics, scale: Scale, repeats: int) -> None:
    section(f"2. SLEEP {SLEEP_MS} ms jobs against the ideal bound (pool / {SLEEP_MS} ms)")
    print(
        f"   {'pool':>5} {'jobs':>7} {'ideal':>8} {'actual':>8} {'efficiency':>11}"
        f" {'jobs/s':>8} {'worker cpu':>11} {'peak RSS':>9}"
    )
    with BenchCore("both") as core:
        for pool in SLEEP_POOLS:
            count = pool * scale.sleep_waves
            topic = topics.create(f"sleep-{pool}")
            fill(bench.servers, topic, count, sleep_ms=SLEEP_MS)
            # The first wave ends one sleep after the start, the last one waves-1 later.
            ideal = (scale.sleep_waves - 1) * SLEEP_MS / 1000
            runs = [bench.run(core, topic, count, pool) for _ in range(repeats)]
            efficiencies = [ideal / run.window_s for run in runs]
            best = runs[efficiencies.index(max(efficiencies))]
            print(
                f"   {pool:>5} {count:>7,} {ideal:>7.2f}s {best.window_s:>7.2f}s"
                f" {max(efficiencies):>10.0%} {best.rate:>8,.0f}"
                f" {best.worker_cpu_s / best.window_s:>10.0%}"
                f" {best.peak_rss / MB:>6.0f} MB{spread(efficiencies)}"
            )
    print(
        "   ideal/actual: first result at Core to the last; efficiency = ideal / actual;\n"
        "   worker cpu = its CPU time over that window (100% = one core busy)"
    )


# -- 3. latency ------------------------------------------------------------------------


def bench_latency(
    bench: Bench, topics: Topics, scale: Scale, top_rate: float, fixed_rate: float | None
) -> None:
    """Added latency at half the rate the worker sustains while the bench's producer runs.

    Section 1's rate is measured with nothing else running (the records were produced
    before), so half of it is more than half of what the worker keeps up with while
    this process produces and the broker takes in the records, on the same 2 cores.
    The probe offers more than the worker takes, producer running, and paces the
    latency run at half of what reached Core in that time."""
    section(
        f"3. Added latency at {LATENCY_LOAD:.0%} of the top no-op rate sustained while the"
        f" bench's producer runs, pool {NOOP_POOL}"
    )
    topic = topics.create("latency")
    producer = fast_producer(bench.servers, linger_ms=1)
    with BenchCore("both") as core:
        worker = bench.worker(core, topic, NOOP_POOL)
        try:
            # The worker has joined its group once a first job per partition is back.
            warm = produce_paced(producer, topic, PARTITIONS * 10, duration_s=0.3, prefix="warm")
            wait_for_results(core, worker, len(warm))
            if fixed_rate:
                rate = fixed_rate
                print(f"   rate given: {rate:,.0f} jobs/s (no probe)")
            else:
                offered = top_rate or PROBE_CEILING
                sustained, produced = sustained_rate(
                    core, worker, producer, topic, offered, scale.probe_s
                )
                rate = sustained * LATENCY_LOAD
                alone = (
                    f"{top_rate:,.0f} jobs/s in section 1 (nothing producing); " if top_rate else ""
                )
                print(
                    f"   top no-op rate: {alone}{sustained:,.0f} jobs/s reached Core while the"
                    f" producer offered {produced:,.0f}/s for {scale.probe_s:g} s"
                    f"\n   paced at {LATENCY_LOAD:.0%} of that: {rate:,.0f} jobs/s for"
                    f" {scale.latency_s:g} s"
                )
            # The floor is measured with the worker idle (joined, nothing to read).
            floor = latency_floor(
                bench.servers, topics.create("latency-floor"), producer, rate, scale
            )
            core.command("reset")
            stamps = produce_paced(producer, topic, rate, scale.latency_s, prefix="lat")
            stats = wait_for_results(core, worker, len(stamps))
            receipts = core.receipts(bench.workdir / "receipts.txt")
        finally:
            worker.stop()
            producer.close(10)
    in_order = [
        receipts[job_id][0] - stamp - receipts[job_id][1] for job_id, stamp in stamps.items()
    ]
    added = sorted(in_order)
    percentiles = statistics.quantiles(added, n=100)
    p50, p99 = percentiles[49], percentiles[98]
    print(
        f"   {len(added):,} jobs: p50 {p50:.1f} ms, p99 {p99:.1f} ms, max {added[-1]:.1f} ms"
        f"   (p99 is {p99 / 20:.2f}x the 20 ms target)"
        f"\n   {stats['results'] / stats['calls']:.1f} results per call"
    )
    # Where it is spent: record to the job's start (producer, broker, fetch, jobs queue)
    # and the job's end to Core (results queue, batch linger, the call).
    to_start = sorted(receipts[job_id][2] - stamp for job_id, stamp in stamps.items())
    to_core = sorted(
        receipts[job_id][0] - receipts[job_id][2] - receipts[job_id][1] for job_id in stamps
    )
    for label, part in (("record -> job start", to_start), ("job end -> Core", to_core)):
        cuts = statistics.quantiles(part, n=100)
        print(f"   {label:<20} p50 {cuts[49]:6.1f} ms, p99 {cuts[98]:6.1f} ms")
    floor_p50, floor_p99, floor_max, floor_count = floor
    print(
        f"   floor: a plain consumer's wait, same producer and rate, the worker idle:"
        f"\n   {floor_count:,.0f} records: p50 {floor_p50:.1f} ms, p99 {floor_p99:.1f} ms,"
        f" max {floor_max:.1f} ms   (worker's p99 is {p99 / max(floor_p99, 0.1):.2f}x this floor)"
    )
    tenth = max(1, len(in_order) // 10)
    first, last = statistics.median(in_order[:tenth]), statistics.median(in_order[-tenth:])
    print(
        f"   median of the first tenth produced {first:.1f} ms, of the last tenth {last:.1f} ms"
        "\n   (a rise means the worker fell behind this rate: a queue built up)"
    )
    print(
        "   added latency = Core's receipt - the record's timestamp - the job's own time\n"
        "   (producer linger and the broker included: they are part of what a job waits)"
    )


def latency_floor(
    servers: str, topic: str, producer: KafkaProducer, rate: float, scale: Scale
) -> list[float]:
    """p50, p99, max (ms) and count of a plain consumer's record waits at ``rate``."""
    floor = subprocess.Popen(
        [sys.executable, "-m", "bench.e2e_floor", servers, topic],
        cwd=ROOT,
        env=child_env(),
        stdout=subprocess.PIPE,
        text=True,
    )
    assert floor.stdout is not None
    if floor.stdout.readline().strip() != "ready":
        floor.kill()
        raise RuntimeError("the latency-floor consumer did not start")
    produce_paced(producer, topic, rate, scale.latency_s, prefix="floor")
    out, _ = floor.communicate(timeout=150)
    return [float(part) for part in out.split()]


def sustained_rate(
    core: BenchCore,
    worker: WorkerProcess,
    producer: KafkaProducer,
    topic: str,
    offered: float,
    duration_s: float,
) -> tuple[float, float]:
    """(jobs/s that reached Core, records/s produced) while producing at ``offered`` for
    ``duration_s``, the first ``PROBE_SKIP_S`` left out; then waits for the backlog."""
    core.command("reset")
    produced: dict[str, int] = {}
    thread = threading.Thread(
        target=lambda: produced.update(
            produce_paced(producer, topic, offered, duration_s, prefix="probe")
        )
    )
    started = time.monotonic()
    thread.start()
    time.sleep(PROBE_SKIP_S)
    first, first_at = core.stats()["results"], time.monotonic()
    time.sleep(max(0.0, started + duration_s - time.monotonic()))
    last, last_at = core.stats()["results"], time.monotonic()
    thread.join()
    wait_for_results(core, worker, len(produced))
    core.command("reset")
    return (last - first) / (last_at - first_at), len(produced) / duration_s


# -- 4. memory with a backlog ----------------------------------------------------------


def bench_backlog_memory(bench: Bench, topics: Topics, scale: Scale) -> None:
    small, large = scale.backlogs
    section(
        f"4. Memory with a backlog: Core paused, pool {BACKLOG_POOL}, {small:,} vs {large:,}"
        " records waiting"
    )
    rss = {}
    with BenchCore("both") as core:
        for count in (small, large):
            topic = topics.create(f"backlog-{count}")
            filled = fill(bench.servers, topic, count, sleep_ms=0)
            core.command("pause")
            worker = bench.worker(core, topic, BACKLOG_POOL)
            try:
                settled_after = wait_until_rss_settles(worker)
                rss[count] = worker.memory()
            finally:
                worker.kill()
                core.command("resume")
            print(
                f"   {count:>9,} waiting: RSS {rss[count][0] / MB:6.1f} MB, peak"
                f" {rss[count][1] / MB:6.1f} MB (settled after {settled_after:.0f} s;"
                f" filled at {count / filled:,.0f} records/s)"
            )
    ratio = rss[large][0] / rss[small][0]
    print(f"   RSS with {large:,} / with {small:,}: {ratio:.3f}x (target: within 10%)")


def wait_until_rss_settles(
    worker: WorkerProcess, window_s: float = 3.0, timeout_s: float = 40.0
) -> float:
    """Seconds until the worker's RSS moved less than 1% over ``window_s`` (at least 5 s)."""
    samples: list[tuple[float, int]] = []
    started = time.monotonic()
    while (elapsed := time.monotonic() - started) < timeout_s:
        worker.check_running()
        samples.append((elapsed, worker.memory()[0]))
        recent = [rss for at, rss in samples if at >= elapsed - window_s]
        if elapsed >= max(5.0, window_s) and max(recent) <= min(recent) * 1.01:
            return elapsed
        time.sleep(0.25)
    return timeout_s


if __name__ == "__main__":
    sys.exit(main())
