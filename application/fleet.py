"""What the console knows of the fleet: every worker's status and their recent history.

Built only from the status records workers publish (no database): the last one of each
worker says what it does now; the records of the last minutes give throughput and
failures over time. A worker's counters start at zero when its process starts, so a
change between two of its records is what it did in between.
"""

from __future__ import annotations

from collections import Counter, deque
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from jobworker.domain.fleet import GroupPartition, WorkerState, WorkerStatus
from jobworker.domain.model import JobStatus

# Records kept per worker: enough for the throughput chart and the failures window.
HISTORY_S = 15 * 60
# A worker silent for this long (killed, its host gone) is no longer listed; a clean
# stop retracts its status at once.
FORGET_AFTER_S = 60 * 60
# Jobs that ended in these count as failures, by status; SUCCEEDED does not.
FAILED_STATUSES = (JobStatus.FAILED, JobStatus.TIMED_OUT, JobStatus.REJECTED)


@dataclass(frozen=True, slots=True)
class WorkerView:
    status: WorkerStatus
    state: WorkerState
    age_s: float  # since its last status was made


@dataclass(frozen=True, slots=True)
class ThroughputBucket:
    start_ms: int
    jobs: int
    seconds: float

    @property
    def jobs_per_s(self) -> float:
        return self.jobs / self.seconds


@dataclass(frozen=True, slots=True)
class FailureCount:
    kind: str
    recent: int  # within the window asked for
    total: int  # since each live worker started


@dataclass(frozen=True, slots=True)
class PartitionRow:
    """One partition of the jobs topic: who holds it, and how much is left there.

    ``backlog`` and ``lag`` are the holder's own when a live worker holds it (they count
    what it finished and has not committed yet), else the group's commit's.
    """

    topic: str
    partition: int
    holder: str | None
    backlog: int | None
    lag: int | None
    committed: int | None
    end: int | None
    source: str  # "worker" or "commit"


class Fleet:
    """The workers' statuses as they arrive (``saw``), and views of them for a moment."""

    def __init__(self, history_s: float = HISTORY_S) -> None:
        self._history_ms = int(history_s * 1000)
        self._records: dict[str, deque[WorkerStatus]] = {}

    def saw(self, worker_id: str, status: WorkerStatus | None) -> None:
        """A worker's new status; None when it stopped cleanly (its tombstone)."""
        if status is None:
            self._records.pop(worker_id, None)
            return
        records = self._records.setdefault(worker_id, deque())
        if records and status.at_ms < records[-1].at_ms:
            return  # an older record read after a newer one: it says nothing new
        records.append(status)
        while records and records[0].at_ms < status.at_ms - self._history_ms:
            records.popleft()

    def workers(self, now_ms: int) -> list[WorkerView]:
        """Every worker heard from within ``FORGET_AFTER_S``: live ones first."""
        views = [
            WorkerView(last, last.state(now_ms), max(0.0, (now_ms - last.at_ms) / 1000))
            for last in self._last()
            if now_ms - last.at_ms <= FORGET_AFTER_S * 1000
        ]
        return sorted(views, key=lambda v: (v.state != WorkerState.LIVE, v.status.worker_id))

    def live(self, now_ms: int) -> list[WorkerStatus]:
        return [s for s in self._last() if s.state(now_ms) == WorkerState.LIVE]

    def throughput(
        self, now_ms: int, window_s: float = 600, bucket_s: float = 10
    ) -> list[ThroughputBucket]:
        """Jobs finished per bucket over the last ``window_s``, oldest bucket first."""
        bucket_ms, count = int(bucket_s * 1000), int(window_s // bucket_s)
        first_ms = (now_ms // bucket_ms - count + 1) * bucket_ms
        jobs = [0] * count
        for records in self._records.values():
            for before, after in _pairs(records):
                index = (after.at_ms - first_ms) // bucket_ms
                if 0 <= index < count:
                    jobs[index] += _grew(before.finished_total, after.finished_total)
        return [ThroughputBucket(first_ms + i * bucket_ms, n, bucket_s) for i, n in enumerate(jobs)]

    def failures(self, now_ms: int, window_s: float = 300) -> list[FailureCount]:
        """Failures by kind: within the last ``window_s``, and in all of the live
        workers' lives. Kinds are failed job statuses and the workers' error counters."""
        recent: Counter[str] = Counter()
        total: Counter[str] = Counter()
        since_ms = now_ms - int(window_s * 1000)
        for records in self._records.values():
            last = records[-1]
            if last.state(now_ms) != WorkerState.LIVE:
                continue
            baseline = _last_before(records, since_ms)
            before = {} if baseline is None else _failure_counters(baseline)
            for kind, value in _failure_counters(last).items():
                total[kind] += value
                recent[kind] += _grew(before.get(kind, 0), value)
        kinds = sorted(total, key=lambda kind: (-recent[kind], -total[kind], kind))
        return [FailureCount(kind, recent[kind], total[kind]) for kind in kinds]

    def partitions(self, now_ms: int, group: Iterable[GroupPartition]) -> list[PartitionRow]:
        """Every partition of the jobs topic the group or a live worker knows."""
        held = {
            (owned.topic, owned.partition): (status.worker_id, owned)
            for status in self.live(now_ms)
            for owned in status.partitions
        }
        rows: dict[tuple[str, int], PartitionRow] = {}
        for gp in group:
            worker_id, owned = held.get((gp.topic, gp.partition), (None, None))
            if owned is not None and owned.backlog is not None:
                backlog, lag, source = owned.backlog, owned.lag, "worker"
            else:
                backlog, lag, source = gp.backlog, gp.lag, "commit"
            rows[(gp.topic, gp.partition)] = PartitionRow(
                gp.topic, gp.partition, worker_id, backlog, lag, gp.committed, gp.end, source
            )
        for key, (worker_id, owned) in held.items():
            if key not in rows:  # the group's offsets could not be read
                rows[key] = PartitionRow(
                    owned.topic,
                    owned.partition,
                    worker_id,
                    owned.backlog,
                    owned.lag,
                    None,
                    None,
                    "worker",
                )
        return [rows[key] for key in sorted(rows)]

    def _last(self) -> list[WorkerStatus]:
        return [records[-1] for records in self._records.values() if records]


def _pairs(records: Sequence[WorkerStatus]) -> Iterable[tuple[WorkerStatus, WorkerStatus]]:
    return zip(records, list(records)[1:], strict=False)


def _grew(before: int, after: int) -> int:
    """How much a counter grew; a counter that went down was restarted from zero."""
    return after - before if after >= before else after


def _last_before(records: Sequence[WorkerStatus], at_ms: int) -> WorkerStatus | None:
    """The last record made at or before ``at_ms``: the baseline of a window. None when
    the history starts later: the worker started within the window (or the console
    did; counting from zero then says "since it started")."""
    found = None
    for record in records:
        if record.at_ms > at_ms:
            break
        found = record
    return found


def _failure_counters(status: WorkerStatus) -> Mapping[str, int]:
    counters = {
        f"jobs {job_status.value}": status.finished.get(job_status.value, 0)
        for job_status in FAILED_STATUSES
    }
    counters.update({name.replace("_", " "): n for name, n in status.errors.items()})
    return counters
