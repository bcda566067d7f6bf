"""In-memory status feed and group progress: the web console without a broker."""

from __future__ import annotations

from jobworker.domain.errors import JobWorkerError
from jobworker.domain.fleet import GroupPartition, WorkerStatus


class InMemoryStatusFeed:
    """A ``StatusFeed`` of the records ``publish``ed to it; ``fail`` makes reads raise."""

    def __init__(self) -> None:
        self._published: list[tuple[str, WorkerStatus | None]] = []
        self.fail: str | None = None
        self.closed = False

    def publish(self, worker_id: str, status: WorkerStatus | None) -> None:
        self._published.append((worker_id, status))

    def read(self, max_wait_s: float) -> list[tuple[str, WorkerStatus | None]]:
        if self.fail is not None:
            raise JobWorkerError(self.fail)
        taken, self._published = self._published, []
        return taken

    def close(self) -> None:
        self.closed = True


class InMemoryGroupProgress:
    """A ``GroupProgressProbe`` answering ``partitions``; ``fail`` makes it raise."""

    def __init__(self, partitions: list[GroupPartition] | None = None) -> None:
        self.partitions = list(partitions or [])
        self.fail: str | None = None
        self.closed = False

    def measure(self) -> list[GroupPartition]:
        if self.fail is not None:
            raise JobWorkerError(self.fail)
        return list(self.partitions)

    def close(self) -> None:
        self.closed = True
