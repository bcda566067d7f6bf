"""Building blocks for end-to-end and fault scenarios: Core, jobs in Kafka, counting."""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from adapters.core.process import CoreProcess
from adapters.core.store import ResultStore
from adapters.kafka import KafkaClientSettings
from adapters.kafka.publisher import KafkaJobPublisher
from domain.model import Job
from tests.support.processes import free_port


@contextmanager
def running_core(workdir: Path) -> Iterator[CoreProcess]:
    """The reference Core on a free loopback port, its SQLite file in ``workdir``."""
    core = CoreProcess(free_port(), workdir / "core.db")
    core.start()
    try:
        yield core
    finally:
        core.kill()


def sleep_jobs(count: int, ms: int = 20, prefix: str = "job") -> list[Job]:
    return [
        Job(id=f"{prefix}-{i:05d}", type="SLEEP", payload=json.dumps({"ms": ms}))
        for i in range(count)
    ]


def publish(servers: str, topic: str, jobs: Iterable[Job]) -> int:
    """Produce ``jobs`` as the wire contract says (key = id, value = JobTask); wait for acks."""
    publisher = KafkaJobPublisher(KafkaClientSettings([servers], client_id="e2e-tests"), topic)
    count = 0
    try:
        for job in jobs:
            publisher.publish(job)
            count += 1
        publisher.flush(30)
    finally:
        publisher.close()
    return count


@dataclass(frozen=True)
class CoreTally:
    """What Core holds for a set of expected job ids."""

    expected: frozenset[str]
    received: frozenset[str]
    reports: int

    @property
    def lost(self) -> frozenset[str]:
        return self.expected - self.received

    @property
    def duplicates(self) -> int:
        return self.reports - len(self.received)

    def line(self, scenario: str) -> str:
        return (
            f"[{scenario}] jobs sent: {len(self.expected)}, results received: "
            f"{len(self.received & self.expected)}, duplicates: {self.duplicates}, "
            f"lost: {len(self.lost)}"
        )


def tally(db: Path, expected: Iterable[str]) -> CoreTally:
    """Count what Core stored (read-only, while Core may still be running)."""
    if not db.exists():
        return CoreTally(frozenset(expected), frozenset(), 0)
    with ResultStore(db, create=False) as store:
        summary = store.summary()
        return CoreTally(frozenset(expected), frozenset(store.job_ids()), summary["reports"])
