"""A Core written against the original single RPC: ``ReportResults`` answers
UNIMPLEMENTED. The worker (the CLI) switches to one ``ReportResult`` per result for good,
sends a batch's calls all at once over grpc.aio, and still dead-letters the results Core
refuses while every other job reaches Core and every partition is committed to its end."""

from __future__ import annotations

import signal
import threading
from pathlib import Path

import grpc

from jobworker.adapters.codec import task_from_job
from jobworker.adapters.core.store import ResultStore
from jobworker.adapters.proto.jobworker.v1 import jobworker_pb2 as pb
from tests.support.e2e import RefusingCore, core_in_this_process, sleep_jobs, tally, worker_settings
from tests.support.fixtures import StartWorker
from tests.support.kafka import (
    committed_offsets,
    create_topic,
    end_offsets,
    produce,
    read_all,
    unique_name,
)
from tests.support.processes import events_named, free_port, wait_while_running
from tests.support.waiting import wait_until

RESULTS_TIMEOUT_S = 120


class UnaryRefusingCore(RefusingCore):
    """``RefusingCore`` without ``ReportResults``; counts the calls in flight at once."""

    def __init__(self, store: ResultStore, refused: frozenset[str]) -> None:
        super().__init__(store, refused)
        self.batch_calls = 0
        self.in_flight = 0
        self.most_in_flight = 0
        self._lock = threading.Lock()

    def ReportResults(  # noqa: N802
        self, request: pb.ReportResultsRequest, context: grpc.ServicerContext
    ) -> pb.ReportResultsResponse:
        with self._lock:
            self.batch_calls += 1
        context.abort(grpc.StatusCode.UNIMPLEMENTED, "Method not implemented!")
        raise AssertionError  # abort raises

    def ReportResult(  # noqa: N802
        self, request: pb.ReportResultRequest, context: grpc.ServicerContext
    ) -> pb.ReportResultResponse:
        with self._lock:
            self.in_flight += 1
            self.most_in_flight = max(self.most_in_flight, self.in_flight)
        try:
            return super().ReportResult(request, context)
        finally:
            with self._lock:
                self.in_flight -= 1


def test_a_unary_core_gets_every_result_many_at_once_and_refusals_are_dead_lettered(
    kafka_servers: str, start_worker: StartWorker, tmp_path: Path
) -> None:
    good = sleep_jobs(600, ms=1, prefix="good")
    bad = sleep_jobs(3, ms=1, prefix="refused")
    topic = create_topic(kafka_servers, partitions=3)
    group_id = unique_name("group")
    jobs = good[:100] + bad + good[100:]
    produce(
        kafka_servers,
        topic,
        [
            (job.id.encode(), task_from_job(job).SerializeToString(), i % 3)
            for i, job in enumerate(jobs)
        ],
    )
    refused_ids = frozenset(job.id for job in bad)
    good_ids = [job.id for job in good]

    def unary_core(store: ResultStore) -> UnaryRefusingCore:
        return UnaryRefusingCore(store, refused_ids)

    with core_in_this_process(tmp_path / "core.db", unary_core) as (address, servicer):
        settings = worker_settings(
            kafka_servers,
            topic,
            group_id,
            address,
            RESULT_REFUSED_ATTEMPTS="2",
            # The blocked-hub monitor on, warning of a hub held over half a second.
            METRICS_PORT=str(free_port()),
            LIVENESS_MAX_BLOCKED="1s",
        )
        worker = start_worker("worker-1", settings)
        assert wait_while_running(
            lambda: len(tally(tmp_path / "core.db", good_ids).received) == 600,
            RESULTS_TIMEOUT_S,
            worker,
        ), f"only {len(tally(tmp_path / 'core.db', good_ids).received)} of 600 in Core"
        ends = end_offsets(kafka_servers, topic)
        assert wait_until(lambda: committed_offsets(kafka_servers, group_id, topic) == ends, 60), (
            f"committed {committed_offsets(kafka_servers, group_id, topic)}, ends {ends}"
        )
        dead = read_all(kafka_servers, f"{topic}.results.dlq", count=len(bad))
        worker.signal(signal.SIGTERM)
        assert worker.wait(60) == 0

    # Asked once (per sender that raced to it), then never again.
    assert 1 <= servicer.batch_calls <= 4
    [switch] = events_named(worker, "Core does not implement ReportResults")
    assert switch["client"] == "grpc.aio"
    # Four senders, one call each at a time, could never have more than four out.
    assert servicer.most_in_flight > 4
    # Neither the switch (the loop thread's start) nor the calls ever held the hub.
    assert events_named(worker, "the event loop was blocked") == []
    assert sorted(record.key.decode() for record in dead) == sorted(refused_ids)
    for record in dead:
        headers = {name: value.decode() for name, value in record.headers}
        assert headers["x-dlq-core-code"] == "INVALID_ARGUMENT"
        assert headers["x-dlq-core-details"] == "tenant unknown to Core"
    count = tally(tmp_path / "core.db", good_ids)
    assert not count.lost
    assert not (count.received & refused_ids)
