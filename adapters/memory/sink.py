"""A ResultSink that keeps results in a list, optionally slow or failing."""

from __future__ import annotations

from collections.abc import Sequence

import gevent
import gevent.event

from jobworker.domain.errors import (
    BatchesUnsupported,
    ResultNotDelivered,
    ResultRefused,
    ResultTooLarge,
)
from jobworker.domain.model import Job, JobResult


class InMemoryResultSink:
    """Accepts results into ``results``.

    ``delay_s`` makes every send slow (a congested Core); ``blocked`` holds every send
    until ``unblock()`` (Core down); ``refuse`` names job ids whose results are refused
    for good (``ResultRefused``), ``fail`` those that fail otherwise (a sink closed);
    results with a longer output than ``max_output_chars`` are ``ResultTooLarge``.
    """

    def __init__(
        self,
        delay_s: float = 0.0,
        *,
        refuse: frozenset[str] = frozenset(),
        fail: frozenset[str] = frozenset(),
        max_output_chars: int | None = None,
    ) -> None:
        self.results: list[JobResult] = []
        self.delay_s = delay_s
        self.refuse = refuse
        self.fail = fail
        self.max_output_chars = max_output_chars
        self.offers: dict[str, int] = {}
        self.batches: list[int] = []  # the size of each send_batch call
        self.refuse_batches = False  # True: like a Core without ReportResults
        self._gate = gevent.event.Event()
        self._gate.set()
        self.closed = False

    def block(self) -> None:
        self._gate.clear()

    def unblock(self) -> None:
        self._gate.set()

    def send(self, result: JobResult) -> None:
        self._gate.wait()
        self._check(result)
        self.results.append(result)

    def _check(self, result: JobResult, offer: bool = True) -> None:
        # ``offers`` counts results offered one at a time (a batch is counted in
        # ``batches``), which is what the refusal policy is about.
        if self.delay_s:
            gevent.sleep(self.delay_s)
        if offer:
            self.offers[result.job_id] = self.offers.get(result.job_id, 0) + 1
        if result.job_id in self.refuse:
            raise ResultRefused(f"sink refuses job {result.job_id}", "REFUSED", "test refusal")
        if result.job_id in self.fail:
            raise ResultNotDelivered(f"sink cannot take job {result.job_id} now")
        limit = self.max_output_chars
        if limit is not None and len(result.output) > limit:
            raise ResultTooLarge(f"output of {result.job_id} too large", len(result.output), limit)

    def send_batch(self, results: Sequence[JobResult]) -> None:
        """All or nothing, like Core's ``ReportResults``; ``batches`` counts the calls."""
        self._gate.wait()
        self.batches.append(len(results))
        if self.refuse_batches:
            raise BatchesUnsupported("this sink takes results one at a time")
        for result in results:
            self._check(result, offer=False)
        self.results.extend(results)

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


class InMemoryRefusedResultStore:
    """A RefusedResultStore keeping ``(job, result, refusal)`` in ``stored``.

    ``failing`` makes every ``store`` raise (a dead-letter topic that refuses writes).
    """

    def __init__(self) -> None:
        self.stored: list[tuple[Job, JobResult, ResultRefused]] = []
        self.failing = False
        self.closed = False

    def store(self, job: Job, result: JobResult, refusal: ResultRefused) -> None:
        if self.failing:
            raise ResultNotDelivered("refused-result store is failing")
        self.stored.append((job, result, refusal))

    def close(self) -> None:
        self.closed = True

    @property
    def job_ids(self) -> list[str]:
        return [job.id for job, _, _ in self.stored]
