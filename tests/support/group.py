"""Helpers for scenarios with several workers in one consumer group: settings, logs,
offsets, a publisher that keeps jobs coming while the scenario acts on the workers."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from kafka import KafkaConsumer, TopicPartition

from adapters.core.store import ResultStore
from adapters.kafka import KafkaClientSettings
from adapters.kafka.publisher import KafkaJobPublisher
from domain.model import Job
from tests.support.e2e import tally
from tests.support.processes import WorkerProcess, wait_until


def worker_settings(
    servers: str, topic: str, group_id: str, core_address: str, worker_id: str, **overrides: str
) -> dict[str, str]:
    """A Kafka-to-Core worker's settings, tuned for tests: short group session (the
    broker's minimum is 6 s) so a killed member is noticed quickly, frequent commits."""
    return {
        "JOB_SOURCE": "kafka",
        "RESULT_SINK": "grpc",
        "KAFKA_BROKERS": servers,
        "KAFKA_TOPIC": topic,
        "KAFKA_GROUP_ID": group_id,
        "GRPC_SERVER_ADDRESS": core_address,
        "WORKER_ID": worker_id,
        "KAFKA_SESSION_TIMEOUT": "8s",
        "KAFKA_COMMIT_INTERVAL": "500ms",
        "LOG_FORMAT": "json",
    } | overrides


def log_events(worker: WorkerProcess) -> list[dict[str, Any]]:
    """The worker's JSON log lines, parsed (other output, like a traceback, is skipped)."""
    events = []
    for line in worker.log().splitlines():
        if line.startswith("{"):
            try:
                events.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return events


def events_named(worker: WorkerProcess, prefix: str) -> list[dict[str, Any]]:
    """Log events whose message starts with ``prefix``."""
    return [e for e in log_events(worker) if str(e.get("event", "")).startswith(prefix)]


def jobs_finished_by(worker: WorkerProcess) -> int:
    return len(events_named(worker, "job finished"))


def assigned_partitions(worker: WorkerProcess) -> set[int]:
    """The partitions the worker owns now, by its last "partitions assigned/revoked" line."""
    owned: set[int] = set()
    for event in log_events(worker):
        if event.get("event") == "partitions assigned":
            owned = {int(p.rsplit("[", 1)[1].rstrip("]")) for p in event["partitions"]}
        elif event.get("event") in {
            "partitions revoked",
            "partitions lost (group membership expired)",
        }:
            owned = set()
    return owned


def group_is_settled(workers: Sequence[WorkerProcess], partitions: int) -> bool:
    """Every worker owns some partitions, no two the same, and together all of them."""
    owned = [assigned_partitions(worker) for worker in workers]
    every = [p for own in owned for p in own]
    return all(owned) and len(every) == len(set(every)) == partitions


def log_tail(worker: WorkerProcess, lines: int = 30) -> str:
    return "\n".join(worker.log().splitlines()[-lines:])


def wait_while_running(
    condition: Callable[[], object],
    timeout_s: float,
    *workers: WorkerProcess,
    interval_s: float = 0.2,
) -> bool:
    """``wait_until``, but a watched worker that exits meanwhile fails the wait at once
    (with the end of its log) instead of after the whole timeout."""

    def check() -> bool:
        for worker in workers:
            if worker.process is not None and worker.process.poll() is not None:
                raise AssertionError(
                    f"a worker exited ({worker.process.returncode}) while the test waited on it:"
                    f"\n{log_tail(worker)}"
                )
        return bool(condition())

    return wait_until(check, timeout_s, interval_s)


def end_offsets(servers: str, topic: str) -> dict[int, int]:
    """The end (high-water mark) of every partition of ``topic``."""
    consumer = KafkaConsumer(bootstrap_servers=servers, client_id="tests-offsets")
    try:
        partitions = consumer.partitions_for_topic(topic) or set()
        ends = consumer.end_offsets([TopicPartition(topic, p) for p in partitions])
    finally:
        consumer.close()
    return {tp.partition: offset for tp, offset in ends.items()}


def results_in_core(db: Path, job_ids: Sequence[str]) -> frozenset[str]:
    """Which of ``job_ids`` Core has a result for."""
    count = tally(db, job_ids)
    return count.received & count.expected


def reports_per_job(db: Path, job_ids: Sequence[str]) -> dict[str, int]:
    """How often Core received each job's result (0: never)."""
    with ResultStore(db, create=False) as store:
        stored = {job_id: store.get(job_id) for job_id in job_ids}
    return {job_id: s.reports if s else 0 for job_id, s in stored.items()}


def reporting_workers(db: Path) -> dict[str, int]:
    """Jobs per worker id, as Core kept them (the first success of each job)."""
    counts: dict[str, int] = {}
    with ResultStore(db, create=False) as store:
        for job_id in store.job_ids():
            stored = store.get(job_id)
            if stored is not None:
                worker_id = stored.result.worker_id
                counts[worker_id] = counts.get(worker_id, 0) + 1
    return counts


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
