"""Building blocks for end-to-end and fault scenarios: Core, jobs in Kafka, a worker's
settings, and what Core holds."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from concurrent import futures
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

from jobworker.adapters.core.process import CoreProcess
from jobworker.adapters.core.server import CoreServicer
from jobworker.adapters.core.store import ResultStore
from jobworker.adapters.kafka import KafkaClientSettings
from jobworker.adapters.kafka.publisher import KafkaJobPublisher
from jobworker.adapters.proto.jobworker.v1 import jobworker_pb2 as pb
from jobworker.adapters.proto.jobworker.v1 import jobworker_pb2_grpc as pb_grpc
from jobworker.domain.model import Job, JobStatus
from tests.support.processes import free_port


@contextmanager
def core_in_this_process(
    db_path: Path,
    servicer_factory: Callable[[ResultStore], CoreServicer] = CoreServicer,
    **options: int,
) -> Iterator[tuple[str, Any]]:
    """A Core served from this process (threads), for a servicer a test shapes: one
    that refuses, sheds load or answers late. Yields its ``host:port`` and servicer;
    ``options`` are gRPC server options (``grpc.max_receive_message_length``…)."""
    with ResultStore(db_path) as store:
        server = grpc.server(
            futures.ThreadPoolExecutor(max_workers=8), options=list(options.items())
        )
        servicer = servicer_factory(store)
        pb_grpc.add_CoreServiceServicer_to_server(servicer, server)
        port = server.add_insecure_port("127.0.0.1:0")
        server.start()
        try:
            yield f"127.0.0.1:{port}", servicer
        finally:
            server.stop(grace=None).wait()


class RefusingCore(CoreServicer):
    """Stores results like the reference Core, but refuses for good (INVALID_ARGUMENT,
    "tenant unknown to Core") the job ids in ``refused``, for as long as they are in
    it (a test may change it: Core fixed); ``refusals`` counts the refused calls."""

    def __init__(self, store: ResultStore, refused: Iterable[str] = ()) -> None:
        super().__init__(store)
        self.refused = frozenset(refused)
        self.refusals = 0

    def ReportResult(  # noqa: N802
        self, request: pb.ReportResultRequest, context: grpc.ServicerContext
    ) -> pb.ReportResultResponse:
        if request.result.job_id in self.refused:
            self.refusals += 1
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "tenant unknown to Core")
        return super().ReportResult(request, context)

    def ReportResults(  # noqa: N802
        self, request: pb.ReportResultsRequest, context: grpc.ServicerContext
    ) -> pb.ReportResultsResponse:
        # A batch holding a refused result is refused whole, as a real Core would.
        if any(result.job_id in self.refused for result in request.results):
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "tenant unknown to Core")
        return super().ReportResults(request, context)


@contextmanager
def running_core(workdir: Path) -> Iterator[CoreProcess]:
    """The reference Core on a free loopback port, its SQLite file in ``workdir``."""
    core = CoreProcess(free_port(), workdir / "core.db")
    core.start()
    try:
        yield core
    finally:
        core.kill()


def worker_settings(
    servers: str, topic: str, group_id: str, core_address: str, **overrides: str
) -> dict[str, str]:
    """A Kafka-to-Core worker's settings, with frequent commits; ``overrides`` win.

    The ``start_worker`` fixture sets ``WORKER_ID`` to the name it is given.
    """
    return {
        "JOB_SOURCE": "kafka",
        "RESULT_SINK": "grpc",
        "KAFKA_BROKERS": servers,
        "KAFKA_TOPIC": topic,
        "KAFKA_GROUP_ID": group_id,
        "GRPC_SERVER_ADDRESS": core_address,
        "KAFKA_COMMIT_INTERVAL": "500ms",
        "LOG_FORMAT": "json",
    } | overrides


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


def results_in_core(db: Path, job_ids: Iterable[str]) -> frozenset[str]:
    """Which of ``job_ids`` Core has a result for."""
    count = tally(db, job_ids)
    return count.received & count.expected


def reports_per_job(db: Path, job_ids: Iterable[str]) -> dict[str, int]:
    """How often Core received each job's result (0: never)."""
    with ResultStore(db, create=False) as store:
        stored = {job_id: store.get(job_id) for job_id in job_ids}
    return {job_id: s.reports if s else 0 for job_id, s in stored.items()}


def statuses(db: Path, job_ids: Iterable[str]) -> dict[str, JobStatus | None]:
    """Each job's kept status in Core (None: no result yet)."""
    ids = list(job_ids)
    if not db.exists():
        return dict.fromkeys(ids)
    with ResultStore(db, create=False) as store:
        kept = {job_id: store.get(job_id) for job_id in ids}
    return {job_id: (s.result.status if s else None) for job_id, s in kept.items()}


def reporters(db: Path) -> dict[str, str]:
    """job id -> the worker id of the result Core kept (the first success of each job)."""
    if not db.exists():
        return {}
    with ResultStore(db, create=False) as store:
        kept = {job_id: store.get(job_id) for job_id in store.job_ids()}
    return {job_id: s.result.worker_id for job_id, s in kept.items() if s is not None}


def reporting_workers(db: Path) -> Counter[str]:
    """Jobs per worker id, as Core kept them."""
    return Counter(reporters(db).values())
