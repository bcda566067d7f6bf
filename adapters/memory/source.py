"""A JobSource fed from Python: ``put`` jobs in, read ``acked`` back out."""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Sequence

import gevent
from gevent.event import Event

from jobworker.domain.model import Job


class InMemoryJobSource:
    """Hands out the jobs it was given, in order; remembers which were acked.

    ``finite=True`` (the default) makes it exhausted once empty, so an engine over it
    drains and idles; ``finite=False`` keeps it open for more ``put`` calls.
    """

    def __init__(self, jobs: Iterable[Job] = (), *, finite: bool = True) -> None:
        self._pending: deque[Job] = deque(jobs)
        self._finite = finite
        self._arrived = Event()
        self.acked: list[Job] = []
        self.fetch_sizes: list[int] = []  # every max_jobs the engine asked for
        self.closed = False
        if self._pending:
            self._arrived.set()

    def put(self, *jobs: Job) -> None:
        self._pending.extend(jobs)
        self._arrived.set()

    def finish(self) -> None:
        """No more jobs will come: lets an engine drain and go idle."""
        self._finite = True
        self._arrived.set()

    def fetch(self, max_jobs: int, timeout_s: float) -> Sequence[Job]:
        self.fetch_sizes.append(max_jobs)
        if max_jobs <= 0:
            gevent.sleep(timeout_s)
            return []
        if not self._pending and not self._finite:
            self._arrived.clear()
            self._arrived.wait(timeout_s)
        return [self._pending.popleft() for _ in range(min(max_jobs, len(self._pending)))]

    def ack(self, job: Job) -> None:
        self.acked.append(job)

    def exhausted(self) -> bool:
        return self._finite and not self._pending

    def close(self) -> None:
        self.closed = True

    @property
    def acked_ids(self) -> list[str]:
        return [job.id for job in self.acked]

    def wait_for_acks(self, count: int, timeout_s: float = 5.0) -> bool:
        """Wait until at least ``count`` jobs were acked; False on timeout."""
        with gevent.Timeout(timeout_s, False):
            while len(self.acked) < count:
                gevent.sleep(0.001)
            return True
        return False
