"""One worker run against the bench Core: start, wait for every result, measure, stop."""

from __future__ import annotations

import itertools
import time
from dataclasses import dataclass
from pathlib import Path

from bench.e2e_processes import JOBWORKER_RUN, BenchCore, WorkerProcess

POLL_S = 0.05
_run_numbers = itertools.count(1)


@dataclass(frozen=True)
class WorkerRun:
    results: int
    calls: int  # RPCs that carried them: results / calls is the batch size
    to_first_s: float  # worker start to the first result at Core: start-up and group join
    window_s: float  # first result at Core to the last
    peak_rss: int  # VmHWM at the end, before SIGTERM
    worker_cpu_s: float  # CPU time the worker used between first and last result
    core_cpu_s: float  # ...and Core

    @property
    def rate(self) -> float:
        return self.results / self.window_s


@dataclass(frozen=True)
class Bench:
    """What every worker run shares: the broker, the log folder, the base settings, and
    the worker program (the Go design's in bench/vs_go.py)."""

    servers: str
    workdir: Path
    log_level: str
    worker_argv: tuple[str, ...] = JOBWORKER_RUN

    def worker(self, core: BenchCore, topic: str, pool: int, **extra: str) -> WorkerProcess:
        number = next(_run_numbers)
        settings = {
            "JOB_SOURCE": "kafka",
            "RESULT_SINK": "grpc",
            "KAFKA_BROKERS": self.servers,
            "KAFKA_TOPIC": topic,
            "KAFKA_GROUP_ID": f"{topic}-group-{number}",
            "GRPC_SERVER_ADDRESS": core.address,
            "WORKER_POOL_SIZE": str(pool),
            "WORKER_ID": f"bench-{number}",
            "LOG_LEVEL": self.log_level,
            "LOG_FORMAT": "json",
            "SHUTDOWN_TIMEOUT": "5s",
        }
        log_path = self.workdir / f"worker-{number}.log"
        return WorkerProcess(settings | extra, log_path, self.worker_argv)

    def run(self, core: BenchCore, topic: str, count: int, pool: int, **extra: str) -> WorkerRun:
        """A fresh group reads ``topic`` (``count`` jobs) from its start; returns once
        Core has ``count`` results (raises if the worker dies or stalls for a minute).
        ``extra``: settings over the bench's own (``LOG_LEVEL="info"``)."""
        core.command("reset")
        worker = self.worker(core, topic, pool, **extra)
        try:
            stats = wait_for_results(core, worker, count)
            _, peak_rss = worker.memory()
            worker_cpu_end = worker.cpu_s()
        finally:
            worker.stop()
        first, last = stats["first"], stats["last"]
        return WorkerRun(
            results=stats["results"],
            calls=stats["calls"],
            to_first_s=(first - worker.started) / 1000,
            window_s=(last - first) / 1000,
            peak_rss=peak_rss,
            worker_cpu_s=worker_cpu_end - stats["worker_cpu_at_first"],
            core_cpu_s=stats["cpu_s"] - stats["core_cpu_at_first"],
        )


def wait_for_results(
    core: BenchCore, worker: WorkerProcess, count: int, stall_s: float = 60
) -> dict[str, float]:
    """Core's stats once it has ``count`` results, with the CPU times at the first one."""
    at_first: dict[str, float] = {}
    seen, progress_at = 0, time.monotonic()
    while True:
        worker.check_running()
        stats = core.stats()
        if stats["results"] and not at_first:
            at_first = {"worker_cpu_at_first": worker.cpu_s(), "core_cpu_at_first": stats["cpu_s"]}
        if stats["results"] >= count:
            return stats | at_first
        if stats["results"] > seen:
            seen, progress_at = stats["results"], time.monotonic()
        elif time.monotonic() - progress_at > stall_s:
            raise RuntimeError(f"Core has {seen} of {count} results, none new for {stall_s:g} s")
        time.sleep(POLL_S)
