"""A worker's status record: what it is doing now, as one small versioned JSON object.

The fleet's status topic (``adapters/kafka/status.py``) carries one of these per worker
every ``STATUS_INTERVAL``; docs/operations.md ("Fleet status on Kafka") documents every
field. A field is added without changing ``v``; ``v`` changes only when a field changes
meaning or goes away, so a reader checks ``v`` and ignores fields it does not know.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypedDict

import orjson

from jobworker.domain.fleet import OwnedPartition, WorkerStatus

STATUS_VERSION = 1
# Breakers are per HTTP host called: a worker calling thousands of hosts keeps the
# record small by reporting at most this many, those not closed first.
MAX_BREAKERS = 50


class PartitionStatus(TypedDict):
    """One partition the worker owns; ``backlog`` and ``lag`` are None until known."""

    topic: str
    partition: int
    backlog: int | None
    lag: int | None


def _none() -> int | None:
    return None


@dataclass(frozen=True, slots=True)
class StatusReadings:
    """Where each field of a record is read from, when the record is made. Each reader
    must be cheap and must not block (they read counters and snapshots)."""

    jobs_in_flight: Callable[[], int]
    jobs_waiting: Callable[[], int]
    jobs_waiting_to_retry: Callable[[], int]
    results_waiting: Callable[[], int]
    finished: Callable[[], Mapping[str, int]]
    errors: Callable[[], Mapping[str, int]]
    partitions: Callable[[], Sequence[PartitionStatus]] = list
    breakers: Callable[[], Mapping[str, str]] = dict
    limits: Callable[[], Mapping[str, Mapping[str, int]]] = dict
    last_poll_at_ms: Callable[[], int | None] = _none
    last_commit_at_ms: Callable[[], int | None] = _none


@dataclass(frozen=True, slots=True)
class WorkerIdentity:
    worker_id: str
    version: str
    host: str
    pid: int


@dataclass(slots=True)
class StatusRecords:
    """Makes the records of one worker; ``rate_per_s`` is over the time since the last
    record (the first: since this was made)."""

    identity: WorkerIdentity
    readings: StatusReadings
    interval_s: float
    clock: Callable[[], float] = time.monotonic
    wall_clock: Callable[[], float] = time.time
    _last_at: float = field(init=False)
    _last_finished: dict[str, int] = field(init=False)

    def __post_init__(self) -> None:
        self._last_at = self.clock()
        self._last_finished = dict(self.readings.finished())

    def next(self) -> dict[str, Any]:
        """The record for now, as a JSON-ready dict."""
        now, read = self.clock(), self.readings
        finished = {status: int(n) for status, n in read.finished().items()}
        elapsed_s = now - self._last_at
        rates = {
            status: round((n - self._last_finished.get(status, 0)) / elapsed_s, 3)
            if elapsed_s > 0
            else 0.0
            for status, n in finished.items()
        }
        self._last_at, self._last_finished = now, finished
        identity = self.identity
        return {
            "v": STATUS_VERSION,
            "worker_id": identity.worker_id,
            "version": identity.version,
            "host": identity.host,
            "pid": identity.pid,
            "at_ms": int(self.wall_clock() * 1000),
            "interval_s": self.interval_s,
            "partitions": [dict(p) for p in read.partitions()],
            "jobs_in_flight": read.jobs_in_flight(),
            "jobs_waiting": read.jobs_waiting(),
            "jobs_waiting_to_retry": read.jobs_waiting_to_retry(),
            "results_waiting": read.results_waiting(),
            "finished": finished,
            "rate_per_s": rates,
            "errors": dict(read.errors()),
            "breakers": _bounded_breakers(read.breakers()),
            "limits": {key: dict(state) for key, state in read.limits().items()},
            "last_poll_at_ms": read.last_poll_at_ms(),
            "last_commit_at_ms": read.last_commit_at_ms(),
        }


def _bounded_breakers(states: Mapping[str, str]) -> dict[str, str]:
    chosen = sorted(states.items(), key=lambda item: (item[1] == "closed", item[0]))
    return dict(chosen[:MAX_BREAKERS])


class UnreadableStatus(ValueError):  # noqa: N818 - reads as the fact it is
    """A status record that is not JSON, or not of a version this reader knows."""


def read_status(value: bytes) -> WorkerStatus:
    """The ``WorkerStatus`` a record's value holds. A newer record of the same version
    may hold fields this reader does not know: they are ignored. Raises
    ``UnreadableStatus``."""
    try:
        record = orjson.loads(value)
    except orjson.JSONDecodeError as error:
        raise UnreadableStatus(f"not JSON: {error}") from None
    if not isinstance(record, dict):
        raise UnreadableStatus("not a JSON object")
    if record.get("v") != STATUS_VERSION:
        raise UnreadableStatus(f"status record version {record.get('v')!r}, not {STATUS_VERSION}")
    try:
        return WorkerStatus(
            worker_id=str(record["worker_id"]),
            at_ms=int(record["at_ms"]),
            interval_s=float(record["interval_s"]),
            host=str(record.get("host", "")),
            pid=int(record.get("pid") or 0),
            version=str(record.get("version", "")),
            partitions=tuple(
                OwnedPartition(
                    str(p["topic"]),
                    int(p["partition"]),
                    _int_or_none(p.get("backlog")),
                    _int_or_none(p.get("lag")),
                )
                for p in record.get("partitions") or ()
            ),
            jobs_in_flight=int(record.get("jobs_in_flight") or 0),
            jobs_waiting=int(record.get("jobs_waiting") or 0),
            jobs_waiting_to_retry=int(record.get("jobs_waiting_to_retry") or 0),
            results_waiting=int(record.get("results_waiting") or 0),
            finished={str(k): int(n) for k, n in (record.get("finished") or {}).items()},
            rate_per_s={str(k): float(r) for k, r in (record.get("rate_per_s") or {}).items()},
            errors={str(k): int(n) for k, n in (record.get("errors") or {}).items()},
            breakers={str(k): str(s) for k, s in (record.get("breakers") or {}).items()},
            limits={
                str(k): {str(f): int(n) for f, n in state.items()}
                for k, state in (record.get("limits") or {}).items()
            },
            last_poll_at_ms=_int_or_none(record.get("last_poll_at_ms")),
            last_commit_at_ms=_int_or_none(record.get("last_commit_at_ms")),
        )
    except (KeyError, TypeError, ValueError, AttributeError) as error:
        raise UnreadableStatus(f"a field is missing or of the wrong type: {error!r}") from None


def _int_or_none(value: Any) -> int | None:
    return None if value is None else int(value)
