"""The fleet as an operator sees it: each worker's last status, and the group's progress
through each partition of the jobs topic.

A worker publishes its status every few seconds (docs/operations.md, "Fleet status on
Kafka"); one that stops cleanly retracts it, one that dies simply falls silent. So a
status says "alive" only while it is fresh: one older than ``STALE_AFTER_INTERVALS`` of
the worker's own interval is stale.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field

# A status older than this many of its worker's intervals is stale. Two, not one: a
# record made just before a busy moment may be sent a little late without the worker
# being in trouble; and SIGKILL still shows within three intervals (the check the
# console is held to), since the console re-reads the fleet every second.
STALE_AFTER_INTERVALS = 2.0
# ... plus this slack, so a one-second interval does not flap on a late record.
STALE_SLACK_S = 0.5


class WorkerState(enum.StrEnum):
    LIVE = "live"
    STALE = "stale"


@dataclass(frozen=True, slots=True)
class OwnedPartition:
    """A partition a worker holds, with its backlog and lag as that worker last saw them
    (None until it knew)."""

    topic: str
    partition: int
    backlog: int | None
    lag: int | None


@dataclass(frozen=True, slots=True)
class WorkerStatus:
    """One status record of one worker: what it was doing at ``at_ms`` (its clock)."""

    worker_id: str
    at_ms: int
    interval_s: float
    host: str = ""
    pid: int = 0
    version: str = ""
    partitions: tuple[OwnedPartition, ...] = ()
    jobs_in_flight: int = 0
    jobs_waiting: int = 0
    jobs_waiting_to_retry: int = 0
    results_waiting: int = 0
    finished: Mapping[str, int] = field(default_factory=dict)
    rate_per_s: Mapping[str, float] = field(default_factory=dict)
    errors: Mapping[str, int] = field(default_factory=dict)
    breakers: Mapping[str, str] = field(default_factory=dict)
    limits: Mapping[str, Mapping[str, int]] = field(default_factory=dict)
    last_poll_at_ms: int | None = None
    last_commit_at_ms: int | None = None

    @property
    def finished_total(self) -> int:
        return sum(self.finished.values())

    @property
    def jobs_per_s(self) -> float:
        return sum(self.rate_per_s.values())

    def state(self, now_ms: int) -> WorkerState:
        stale_after_ms = (STALE_AFTER_INTERVALS * self.interval_s + STALE_SLACK_S) * 1000
        return WorkerState.STALE if now_ms - self.at_ms > stale_after_ms else WorkerState.LIVE


@dataclass(frozen=True, slots=True)
class GroupPartition:
    """The consumer group in one partition, as the broker says: the partition's end, the
    committed offset (None: never committed; the group starts at ``start``), and how
    many jobs beyond the committed offset the commit records as finished."""

    topic: str
    partition: int
    start: int
    end: int
    committed: int | None
    finished_beyond: int = 0

    @property
    def lag(self) -> int:
        """What Kafka's tools and KEDA's Kafka scaler call lag: end minus committed."""
        return max(0, self.end - self._position)

    @property
    def backlog(self) -> int:
        """The jobs not finished as far as the commit knows: the lag less the jobs
        finished beyond the committed offset."""
        return max(0, self.lag - self.finished_beyond)

    @property
    def _position(self) -> int:
        return self.start if self.committed is None else max(self.committed, self.start)
