"""Several workers in one consumer group: whether they share the partitions, and a
publisher that keeps jobs coming while the scenario acts on the workers."""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence

from jobworker.adapters.kafka import KafkaClientSettings
from jobworker.adapters.kafka.publisher import KafkaJobPublisher
from jobworker.domain.model import Job
from tests.support.processes import WorkerProcess, assigned_partitions


def group_is_settled(workers: Sequence[WorkerProcess], partitions: int) -> bool:
    """Every worker owns some partitions, no two the same, and together all of them."""
    owned = [assigned_partitions(worker) for worker in workers]
    every = [p for own in owned for p in own]
    return all(owned) and len(every) == len(set(every)) == partitions


class SteadyPublisher:
    """Publishes jobs from a thread at about ``rate_per_s``, in small acknowledged batches.

    It stops at each index in ``holds`` until ``release()``: a scenario decides when the
    next part of the run begins, and can be sure the run is not over while it starts,
    kills or stops workers.
    """

    def __init__(
        self,
        servers: str,
        topic: str,
        jobs: Sequence[Job],
        rate_per_s: float,
        holds: Sequence[int] = (),
        batch: int = 20,
    ) -> None:
        self._settings = KafkaClientSettings([servers], client_id="e2e-steady-publisher")
        self._topic = topic
        self._jobs = list(jobs)
        self._interval_s = batch / rate_per_s
        self._batch = batch
        self._holds = sorted(h for h in holds if 0 < h < len(self._jobs))
        self._releases = [threading.Event() for _ in self._holds]
        self._stopping = threading.Event()
        self._done = threading.Event()
        self.published = 0
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="steady-publisher", daemon=True)

    def start(self) -> SteadyPublisher:
        self._thread.start()
        return self

    def release(self) -> None:
        """Let the publisher go on past its next hold."""
        for released in self._releases:
            if not released.is_set():
                released.set()
                return

    def finished(self) -> bool:
        return self._done.is_set()

    def stop(self, timeout_s: float = 30) -> None:
        self._stopping.set()
        for released in self._releases:
            released.set()
        self._thread.join(timeout_s)

    def _limit(self) -> int:
        """How far the publisher may go now: the first hold not yet released."""
        for hold, released in zip(self._holds, self._releases, strict=True):
            if not released.is_set():
                return hold
        return len(self._jobs)

    def _run(self) -> None:
        publisher = KafkaJobPublisher(self._settings, self._topic)
        try:
            next_at = time.monotonic()
            while self.published < len(self._jobs) and not self._stopping.is_set():
                limit = self._limit()
                if self.published >= limit:
                    self._releases[self._holds.index(limit)].wait()
                    next_at = time.monotonic()
                    continue
                end = min(self.published + self._batch, limit)
                for job in self._jobs[self.published : end]:
                    publisher.publish(job)
                publisher.flush(30)
                self.published = end
                next_at += self._interval_s
                self._stopping.wait(max(0.0, next_at - time.monotonic()))
        except BaseException as error:
            self.error = error
        finally:
            publisher.close(10)
            self._done.set()
