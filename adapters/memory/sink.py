"""A ResultSink that keeps results in a list, optionally slow or failing."""

from __future__ import annotations

import gevent
import gevent.event

from domain.errors import ResultNotDelivered
from domain.model import JobResult


class InMemoryResultSink:
    """Accepts results into ``results``.

    ``delay_s`` makes every send slow (a congested Core); ``blocked`` holds every send
    until ``unblock()`` (Core down); ``refuse`` names job ids whose results are refused.
    """

    def __init__(self, delay_s: float = 0.0, *, refuse: frozenset[str] = frozenset()) -> None:
        self.results: list[JobResult] = []
        self.delay_s = delay_s
        self.refuse = refuse
        self._gate = gevent.event.Event()
        self._gate.set()
        self.closed = False

    def block(self) -> None:
        self._gate.clear()

    def unblock(self) -> None:
        self._gate.set()

    def send(self, result: JobResult) -> None:
        self._gate.wait()
        if self.delay_s:
            gevent.sleep(self.delay_s)
        if result.job_id in self.refuse:
            raise ResultNotDelivered(f"sink refuses job {result.job_id}")
        self.results.append(result)

    def close(self) -> None:
        self.closed = True

    def by_id(self) -> dict[str, JobResult]:
        return {result.job_id: result for result in self.results}

    def wait_for(self, count: int, timeout_s: float = 5.0) -> bool:
        """Wait until at least ``count`` results arrived; False on timeout."""
        with gevent.Timeout(timeout_s, False):
            while len(self.results) < count:
                gevent.sleep(0.001)
            return True
        return False
