"""Sources, sinks and executors the benchmarks drive the engine with.

They implement our own ports (``JobSource``, ``ResultSink``, ``Executor``) and keep
counts instead of lists, so that what a benchmark measures is the engine, not the
bookkeeping of its fixtures.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Callable, Iterator, Sequence

import gevent
from gevent.event import Event

from jobworker.domain.model import Job, JobResult


class ReturnOkExecutor:
    """The cheapest possible job: no I/O, no parsing, a constant output."""

    def execute(self, job: Job) -> str:
        return "ok"


class LazyJobSource:
    """A JobSource of ``total`` jobs, each made only when the engine fetches it.

    A backlog that is not materialised costs nothing, as a Kafka backlog lives in the
    broker: memory measured around an engine over this source is the engine's own.
    """

    def __init__(self, total: int, make_job: Callable[[int], Job]) -> None:
        self.total = total
        self.taken = 0
        self.acked = 0
        self._jobs: Iterator[Job] = (make_job(number) for number in range(total))

    def fetch(self, max_jobs: int, timeout_s: float) -> Sequence[Job]:
        if max_jobs <= 0:
            gevent.sleep(timeout_s)
            return []
        batch = list(itertools.islice(self._jobs, max_jobs))
        self.taken += len(batch)
        return batch

    def ack(self, job: Job) -> None:
        self.acked += 1

    def exhausted(self) -> bool:
        return self.taken >= self.total

    def close(self) -> None:
        """Nothing to release."""


class CountingResultSink:
    """Counts results without keeping them; ``block()`` holds every send (Core down)."""

    def __init__(self) -> None:
        self.delivered = 0
        self._gate = Event()
        self._gate.set()

    def block(self) -> None:
        self._gate.clear()

    def unblock(self) -> None:
        self._gate.set()

    def send(self, result: JobResult) -> None:
        self._gate.wait()
        self.delivered += 1

    def send_batch(self, results: Sequence[JobResult]) -> None:
        self._gate.wait()
        self.delivered += len(results)

    def close(self) -> None:
        self.unblock()


def resident_bytes() -> int:
    """This process's resident set size now (0 where /proc is not available)."""
    try:
        with open("/proc/self/statm", encoding="ascii") as statm:  # noqa: PTH123 - a /proc read
            resident_pages = int(statm.read().split()[1])
    except (OSError, ValueError, IndexError):
        return 0
    return resident_pages * os.sysconf("SC_PAGE_SIZE")
