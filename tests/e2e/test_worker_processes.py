"""``run`` with WORKER_PROCESSES=2 against a real broker and Core: the two children share
the partitions as two members of one group; one child SIGKILLed is replaced and nothing
is lost; SIGTERM to the parent drains both and exits 0 with every finished job reported.
One /metrics and /readyz on the parent show both children."""

from __future__ import annotations

import json
import os
import re
import signal
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from jobworker.adapters.core.process import CoreProcess
from tests.support.e2e import reporting_workers, results_in_core, sleep_jobs, tally, worker_settings
from tests.support.fixtures import Report, StartWorker
from tests.support.kafka import create_topic, group_members, job_record, produce, unique_name
from tests.support.processes import (
    WorkerProcess,
    events_named,
    free_port,
    log_tail,
    wait_until,
    wait_while_running,
)

pytestmark = pytest.mark.e2e

PARTITIONS = 4
NAME = "procs"
CHILDREN = {f"jobworker-{NAME}-0", f"jobworker-{NAME}-1"}
SHUTDOWN_TIMEOUT_S = 20
# The parent's own margin (10 s) plus room for a busy machine.
EXIT_MARGIN_S = 30


def _get(port: int, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as reply:
            return reply.status, reply.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


def _settled(servers: str, group_id: str) -> bool:
    """Both children are members, each owns partitions, together all, none twice."""
    members = group_members(servers, group_id)
    owned = [p for partitions in members.values() for p in partitions]
    return (
        set(members) == CHILDREN
        and all(members.values())
        and sorted(owned) == list(range(PARTITIONS))
    )


def _children(parent: WorkerProcess) -> dict[int, int]:
    """process index -> pid of the child now in that place (from the parent's log)."""
    started = events_named(parent, "worker process started")
    return {int(e["process"]): int(e["pid"]) for e in started}


def _spread(prefix: str, per_partition: int, ms: int) -> list[tuple[bytes, bytes, int]]:
    return [
        job_record(job, p)
        for p in range(PARTITIONS)
        for job in sleep_jobs(per_partition, ms=ms, prefix=f"{prefix}-p{p}")
    ]


def test_two_processes_share_a_group_survive_a_kill_and_drain_on_sigterm(
    kafka_servers: str, core: CoreProcess, start_worker: StartWorker, report: Report
) -> None:
    topic = create_topic(kafka_servers, partitions=PARTITIONS, prefix="e2e-procs")
    group_id = unique_name("e2e-procs")
    metrics_port = free_port()
    settings = worker_settings(
        kafka_servers,
        topic,
        group_id,
        core.address,
        WORKER_PROCESSES="2",
        WORKER_POOL_SIZE="2",
        # The broker's minimum: the killed child's partitions move within ~6 s.
        KAFKA_SESSION_TIMEOUT="6s",
        SHUTDOWN_TIMEOUT=f"{SHUTDOWN_TIMEOUT_S}s",
        METRICS_HOST="127.0.0.1",
        METRICS_PORT=str(metrics_port),
    )
    parent = start_worker(NAME, settings)
    db = core.db_path

    # Two members of one group, each with its own client id, sharing the partitions.
    assert wait_while_running(lambda: _settled(kafka_servers, group_id), 90, parent), (
        f"{group_members(kafka_servers, group_id)}\n{log_tail(parent)}"
    )
    status, ready = _get(metrics_port, "/readyz")
    assert status == 200, ready
    assert set(json.loads(ready)["checks"]) == {"process_0", "process_1"}
    status, metrics = _get(metrics_port, "/metrics")
    assert status == 200
    for index in (0, 1):
        assert f'jobworker_jobs_in_flight{{process="{index}"}}' in metrics
    assert 'jobworker_worker_processes{state="running"} 2.0' in metrics
    assert _get(metrics_port, "/healthz")[0] == 200

    # One child SIGKILLed mid-run: it is replaced, and every job still reaches Core.
    first = _spread("kill", per_partition=150, ms=50)
    first_ids = [key.decode() for key, _, _ in first]
    produce(kafka_servers, topic, first)
    assert wait_while_running(lambda: reporting_workers(db)[f"{NAME}-0"] >= 40, 120, parent), (
        log_tail(parent)
    )
    victim = _children(parent)[0]
    os.kill(victim, signal.SIGKILL)
    done_before_kill = len(tally(db, first_ids).received)
    assert done_before_kill < len(first_ids) - 100, "the run ended before the kill"

    def replaced() -> bool:
        died = events_named(parent, "worker process died")
        return bool(died) and _children(parent)[0] != victim

    assert wait_while_running(replaced, 60, parent), log_tail(parent)
    (died,) = events_named(parent, "worker process died")
    assert died["reason"] == "signal SIGKILL"
    assert died["process"] == 0
    assert wait_while_running(lambda: not tally(db, first_ids).lost, 180, parent), (
        f"{len(tally(db, first_ids).lost)} lost\n{log_tail(parent)}"
    )
    assert wait_while_running(lambda: _settled(kafka_servers, group_id), 90, parent)
    status, metrics = _get(metrics_port, "/metrics")
    assert 'jobworker_worker_process_restarts_total{process="0"} 1.0' in metrics

    # SIGTERM to the parent mid-run: both children drain, it exits 0, and every job a
    # child finished is in Core.
    second = _spread("drain", per_partition=100, ms=100)
    second_ids = [key.decode() for key, _, _ in second]
    produce(kafka_servers, topic, second)
    assert wait_while_running(lambda: len(results_in_core(db, second_ids)) >= 20, 120, parent), (
        log_tail(parent)
    )
    parent.signal(signal.SIGTERM)
    assert parent.wait(SHUTDOWN_TIMEOUT_S + EXIT_MARGIN_S) == 0, log_tail(parent)

    stopped: list[dict[str, Any]] = events_named(parent, "worker process stopped")
    assert sorted((e["process"], e["reason"]) for e in stopped) == [
        (0, "exit code 0"),
        (1, "exit code 0"),
    ]
    finished = {
        e["job_id"]
        for e in events_named(parent, "job finished")
        if str(e["job_id"]).startswith("drain-")
    }
    reported = set(results_in_core(db, second_ids))
    assert reported == finished
    assert len(reported) < len(second_ids), "the drain run ended before SIGTERM"
    for worker_stopped in events_named(parent, "worker stopped"):
        assert worker_stopped["results_not_delivered"] == 0
    count = tally(db, first_ids)
    report(
        count.line("2 processes, one SIGKILLed")
        + f"; done before the kill: {done_before_kill}; per child: "
        f"{dict(reporting_workers(db))}; after SIGTERM: {len(reported)} of "
        f"{len(second_ids)} drain jobs finished and reported, exit 0"
    )


def _gone(pid: int) -> bool:
    """The process has exited (a zombie not yet reaped counts as exited)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat.rsplit(")", 1)[1].split()[0] in {"Z", "X"}


def _start_two(
    kafka_servers: str, core: CoreProcess, start_worker: StartWorker, **overrides: str
) -> tuple[WorkerProcess, str, str]:
    topic = create_topic(kafka_servers, partitions=PARTITIONS, prefix="e2e-procs")
    group_id = unique_name("e2e-procs")
    settings = worker_settings(
        kafka_servers, topic, group_id, core.address, WORKER_PROCESSES="2", **overrides
    )
    parent = start_worker(NAME, settings)
    assert wait_while_running(lambda: _settled(kafka_servers, group_id), 90, parent), (
        f"{group_members(kafka_servers, group_id)}\n{log_tail(parent)}"
    )
    return parent, topic, group_id


def test_a_second_signal_stops_every_child_at_once(
    kafka_servers: str, core: CoreProcess, start_worker: StartWorker
) -> None:
    metrics_port = free_port()
    parent, topic, _ = _start_two(
        kafka_servers,
        core,
        start_worker,
        SHUTDOWN_TIMEOUT="60s",
        METRICS_HOST="127.0.0.1",
        METRICS_PORT=str(metrics_port),
    )
    long = _spread("long", per_partition=2, ms=30_000)
    produce(kafka_servers, topic, long)

    def both_busy() -> bool:
        metrics = _get(metrics_port, "/metrics")[1]
        return all(
            re.search(rf'^jobworker_jobs_in_flight{{process="{i}"}} [1-9]', metrics, re.M)
            for i in (0, 1)
        )

    assert wait_while_running(both_busy, 60, parent), log_tail(parent)
    children = _children(parent)

    parent.signal(signal.SIGTERM)
    assert wait_while_running(
        lambda: events_named(parent, "shutdown requested; draining"), 30, parent
    )
    assert parent.process is not None
    assert parent.process.poll() is None, "the first signal waits for the running jobs"
    parent.signal(signal.SIGTERM)
    assert parent.wait(30) == 128 + signal.SIGTERM, log_tail(parent)
    assert events_named(parent, "second signal")
    assert wait_until(lambda: all(_gone(pid) for pid in children.values()), 10)
    assert not results_in_core(core.db_path, [key.decode() for key, _, _ in long])


def test_children_stop_when_the_parent_is_killed(
    kafka_servers: str, core: CoreProcess, start_worker: StartWorker
) -> None:
    parent, _, _ = _start_two(kafka_servers, core, start_worker, SHUTDOWN_TIMEOUT="10s")
    children = _children(parent)
    parent.kill()
    # The kernel sends each child SIGTERM: a graceful stop, not an orphan left running.
    assert wait_until(lambda: all(_gone(pid) for pid in children.values()), 40), log_tail(parent)
    assert len(events_named(parent, "worker stopped")) == 2
