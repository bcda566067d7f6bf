"""Controlled load on what HTTP jobs call (issue 19), end to end: the worker is the CLI,
Core a real gRPC server in this process, and the targets are HTTP servers on loopback,
also in this process, that count what reaches them.

Host A (``127.0.0.1``) is limited and fails at first with 503 + Retry-After; host B
(``localhost``: another host to the worker, on the same loopback address) is healthy.
Their jobs are interleaved on the same partitions."""

from __future__ import annotations

import itertools
import json
import signal
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from jobworker.adapters.core.store import ResultStore
from jobworker.domain.model import Job, JobStatus
from tests.support.e2e import core_in_this_process, reports_per_job, statuses, worker_settings
from tests.support.fixtures import Report, StartWorker
from tests.support.kafka import committed_offsets, create_topic, job_record, produce, unique_name
from tests.support.processes import WorkerProcess, events_named, wait_while_running
from tests.support.waiting import wait_until

RESULTS_TIMEOUT_S = 120
A_CONCURRENT = 5
A_PER_SECOND = 40
A_LIMITS = f"host:127.0.0.1={A_CONCURRENT} concurrent,{A_PER_SECOND}/s"
BREAKER_STEPS = {
    ("closed", "open"),
    ("open", "half-open"),
    ("half-open", "open"),
    ("half-open", "closed"),
}


@dataclass(frozen=True)
class Request:
    """One request as the target saw it: when it came (this process's monotonic
    clock), the job id in its path, its Idempotency-Key, and the status answered."""

    at: float
    job_id: str
    key: str | None
    status: int


class LoadTarget(ThreadingHTTPServer):
    """``GET /jobs/<job id>``: 200 after ``service_s``, or 503 with ``Retry-After``
    while failing (for ``failing_for_s`` after its first request, or while ``failing``).
    Counts the requests in progress at once, and keeps every request."""

    daemon_threads = True
    block_on_close = False
    # The default backlog (5) overflows under a pool of jobs: SYN retries, seconds long,
    # would look like the worker stalling.
    request_queue_size = 1024

    def __init__(
        self, service_s: float = 0.0, failing_for_s: float = 0.0, retry_after: str = "1"
    ) -> None:
        super().__init__(("127.0.0.1", 0), _TargetHandler)
        self.service_s = service_s
        self.failing_for_s = failing_for_s
        self.retry_after = retry_after
        self.failing = False
        self.lock = threading.Lock()
        self.in_progress = 0
        self.peak = 0
        self.first_at: float | None = None
        self.requests: list[Request] = []

    def url(self, host: str, job_id: str) -> str:
        return f"http://{host}:{self.server_port}/jobs/{job_id}"

    def seen(self) -> list[Request]:
        with self.lock:
            return list(self.requests)

    def answer(self, job_id: str, key: str | None) -> int:
        with self.lock:
            now = time.monotonic()
            self.in_progress += 1
            self.peak = max(self.peak, self.in_progress)
            if self.first_at is None:
                self.first_at = now
            failing = self.failing or now - self.first_at < self.failing_for_s
        if not failing:
            time.sleep(self.service_s)
        status = 503 if failing else 200
        # Counted out before the answer goes: the worker frees its slot only once it has
        # the answer, so the count here is never above the worker's own.
        with self.lock:
            self.in_progress -= 1
            self.requests.append(Request(now, job_id, key, status))
        return status


class _TargetHandler(BaseHTTPRequestHandler):
    server: LoadTarget

    def do_GET(self) -> None:
        job_id = self.path.removeprefix("/jobs/")
        status = self.server.answer(job_id, self.headers.get("Idempotency-Key"))
        body = b'{"ok": true}' if status == 200 else b"busy"
        self.send_response(status)
        if status == 503:
            self.send_header("Retry-After", self.server.retry_after)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - base class name
        pass


@contextmanager
def load_target(**options: Any) -> Iterator[LoadTarget]:
    server = LoadTarget(**options)
    threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


def http_jobs(target: LoadTarget, host: str, prefix: str, count: int, timeout_ms: int) -> list[Job]:
    return [
        Job(
            id=f"{prefix}-{i:05d}",
            type="HTTP",
            payload=json.dumps({"url": target.url(host, f"{prefix}-{i:05d}")}),
            timeout_ms=timeout_ms,
        )
        for i in range(count)
    ]


def finished_at_ms(db: Path, job_ids: list[str]) -> dict[str, int]:
    """When each job finished, by the result Core kept."""
    with ResultStore(db, create=False) as store:
        kept = {job_id: store.get(job_id) for job_id in job_ids}
    return {job_id: s.result.finished_at_unix_ms for job_id, s in kept.items() if s is not None}


def breaker_changes(worker: WorkerProcess, target: str) -> list[str]:
    """The states ``target``'s breaker went through, one per log line, in order."""
    changes = []
    for event in events_named(worker, "circuit breaker "):
        # "circuit breaker <state> for <target>: <why>"
        words = str(event["event"]).split(maxsplit=4)
        if len(words) > 4 and words[3] == "for" and words[4].startswith(f"{target}:"):
            changes.append(words[2])
    return changes


def keys_mismatched(requests: list[Request]) -> list[Request]:
    return [r for r in requests if r.key != r.job_id]


def test_a_limited_failing_host_is_held_to_its_limits_and_a_healthy_one_runs_at_pool_speed(
    kafka_servers: str, start_worker: StartWorker, tmp_path: Path, report: Report
) -> None:
    per_host = 300
    with (
        load_target(service_s=0.1, failing_for_s=2.0, retry_after="1") as host_a,
        load_target() as host_b,
    ):
        a_jobs = http_jobs(host_a, "127.0.0.1", "a", per_host, timeout_ms=60_000)
        b_jobs = http_jobs(host_b, "localhost", "b", per_host, timeout_ms=60_000)
        interleaved = [job for pair in zip(a_jobs, b_jobs, strict=True) for job in pair]
        topic = create_topic(kafka_servers, partitions=3)
        produce(
            kafka_servers,
            topic,
            [job_record(job, i % 3) for i, job in enumerate(interleaved)],
        )
        ids = [job.id for job in interleaved]
        db = tmp_path / "core.db"

        with core_in_this_process(db) as (address, _):
            settings = worker_settings(
                kafka_servers,
                topic,
                unique_name("group"),
                address,
                WORKER_POOL_SIZE="64",
                LIMITS=A_LIMITS,
                HTTP_ALLOW_PRIVATE_NETWORKS="true",
                HTTP_BREAKER_COOLDOWN="1s",
                # Enough attempts and time for every job to outlast A's failing start.
                RETRY_MAX_ATTEMPTS="10",
                RETRY_BACKOFF_MAX="2s",
                MAX_JOB_TIMEOUT="60s",
            )
            started = time.monotonic()
            worker = start_worker("worker-1", settings)
            assert wait_while_running(
                lambda: len(finished_at_ms(db, ids)) == len(ids),
                RESULTS_TIMEOUT_S,
                worker,
            ), f"only {len(finished_at_ms(db, ids))} of {len(ids)} jobs in Core"
            took_s = time.monotonic() - started
            worker.signal(signal.SIGTERM)
            assert worker.wait(60) == 0

        a_seen, b_seen = host_a.seen(), host_b.seen()

    # No loss, no duplicate: every job SUCCEEDED, reported once.
    assert set(statuses(db, ids).values()) == {JobStatus.SUCCEEDED}
    assert set(reports_per_job(db, ids).values()) == {1}

    # Every request carries its own job's id as its Idempotency-Key.
    assert not keys_mismatched(a_seen + b_seen), keys_mismatched(a_seen + b_seen)[:5]
    assert {r.job_id for r in a_seen} == {job.id for job in a_jobs}
    assert {r.job_id for r in b_seen} == {job.id for job in b_jobs}

    # A is held to its limits: never more than 5 at once, about 40 a second at most
    # over its busy span (a tenth of a second's burst, and 15% for the clocks).
    assert host_a.peak <= A_CONCURRENT, f"host A saw {host_a.peak} requests at once"
    a_span_s = a_seen[-1].at - a_seen[0].at
    assert len(a_seen) <= A_PER_SECOND * a_span_s * 1.15 + A_PER_SECOND / 10 + 1, (
        f"{len(a_seen)} requests to A in {a_span_s:.2f} s"
    )

    # Retry-After honoured: after a 503, a job came back to A no sooner than 1 s later.
    failed = [r for r in a_seen if r.status == 503]
    assert failed, "host A never answered 503: its failing start was missed"
    gaps = []
    for job_id in {r.job_id for r in failed}:
        attempts = [r for r in a_seen if r.job_id == job_id]
        gaps += [
            later.at - earlier.at
            for earlier, later in itertools.pairwise(attempts)
            if earlier.status == 503
        ]
    assert gaps, "no job tried A again after a 503"
    assert min(gaps) >= 1.0, f"a job came back {min(gaps):.3f} s after a 503 with Retry-After: 1"
    # Those gaps are mostly A's queue, which a job joins again at its end; the wait the
    # worker itself chose after each 503 is in its log.
    retries = events_named(worker, "job attempt failed; retrying")
    assert len(retries) == len(failed)
    assert min(float(e["retry_in_s"]) for e in retries) >= 1.0, retries

    # The breaker opened and closed, one line per change; B's never changed.
    changes = breaker_changes(worker, "host:127.0.0.1")
    assert "open" in changes, changes
    assert changes[-1] == "closed", changes
    # One line per change: each line a step the breaker can take from the one before.
    steps = set(itertools.pairwise(["closed", *changes]))
    assert steps <= BREAKER_STEPS, changes
    assert not breaker_changes(worker, "host:localhost")

    # B is not held behind A: its jobs all finished before A's last one.
    finished = finished_at_ms(db, ids)
    b_last_ms = max(finished[job.id] for job in b_jobs)
    a_last_ms = max(finished[job.id] for job in a_jobs)
    assert b_last_ms < a_last_ms, f"B's last job finished {b_last_ms - a_last_ms} ms after A's"

    healthy = [r for r in a_seen if r.status == 200]
    healthy_span_s = healthy[-1].at - healthy[0].at
    b_span_s = b_seen[-1].at - b_seen[0].at
    report(
        f"[controlled load] {len(ids)} jobs in {took_s:.1f} s, lost 0, duplicates 0; "
        f"A: peak {host_a.peak} at once (limit {A_CONCURRENT}), {len(a_seen)} requests "
        f"({len(failed)} answered 503) in {a_span_s:.2f} s, "
        f"{len(healthy) / healthy_span_s:.1f}/s while healthy (limit {A_PER_SECOND}/s), "
        f"shortest wait after a 503 {min(gaps):.3f} s; breaker {' -> '.join(changes)}; "
        f"B: {len(b_seen)} requests in {b_span_s:.2f} s, "
        f"its last job done {(a_last_ms - b_last_ms) / 1000:.1f} s before A's"
    )


def test_sigterm_during_a_long_backoff_exits_promptly_and_the_waiting_jobs_are_redelivered(
    kafka_servers: str, start_worker: StartWorker, tmp_path: Path, report: Report
) -> None:
    count = 8
    with load_target(retry_after="60") as target:
        target.failing = True
        jobs = http_jobs(target, "127.0.0.1", "waiting", count, timeout_ms=120_000)
        topic = create_topic(kafka_servers, partitions=1)
        produce(kafka_servers, topic, [job_record(job, 0) for job in jobs])
        group_id = unique_name("group")
        ids = [job.id for job in jobs]
        db = tmp_path / "core.db"

        with core_in_this_process(db) as (address, _):
            settings = worker_settings(
                kafka_servers,
                topic,
                group_id,
                address,
                HTTP_ALLOW_PRIVATE_NETWORKS="true",
                # No breaker: every job makes its first attempt, then waits out its
                # Retry-After (the breaker's waiting is the test above's).
                HTTP_BREAKER_FAILURES="0",
                MAX_JOB_TIMEOUT="180s",
            )
            first = start_worker("worker-1", settings)
            assert wait_while_running(
                lambda: len(events_named(first, "job attempt failed; retrying")) == count,
                60,
                first,
            ), f"{len(target.seen())} first attempts seen by the target"
            stopping = time.monotonic()
            first.signal(signal.SIGTERM)
            assert first.wait(20) == 0
            stop_s = time.monotonic() - stopping
            (stopped,) = events_named(first, "worker stopped")
            assert stopped["jobs_given_back_waiting"] == count
            assert stopped["jobs_abandoned_in_flight"] == 0
            # Nothing finished, so nothing is committed past the first of them.
            assert committed_offsets(kafka_servers, group_id, topic).get(0, 0) == 0
            assert set(statuses(db, ids).values()) == {None}
            first_attempts = target.seen()
            assert len(first_attempts) == count

            target.failing = False
            second = start_worker("worker-2", settings)
            assert wait_while_running(
                lambda: set(statuses(db, ids).values()) == {JobStatus.SUCCEEDED}, 60, second
            ), statuses(db, ids)
            assert wait_until(
                lambda: committed_offsets(kafka_servers, group_id, topic).get(0) == count, 30
            ), committed_offsets(kafka_servers, group_id, topic)
            assert second.stop(60) == 0

    assert set(reports_per_job(db, ids).values()) == {1}
    seen = target.seen()
    assert sorted(r.job_id for r in seen) == sorted(ids * 2), "one attempt per run per job"
    assert not keys_mismatched(seen), keys_mismatched(seen)[:5]
    report(
        f"[backoff at SIGTERM] {count} jobs waiting out Retry-After: 60: the worker exited "
        f"{stop_s:.2f} s after SIGTERM, {stopped['jobs_given_back_waiting']} given back, "
        f"committed 0; the next run finished all {count}, each reported once"
    )
