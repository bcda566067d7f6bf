"""Core at start (RESULT_SINK=grpc): the worker waits up to CORE_START_TIMEOUT for it to
answer, before it takes any job; then it exits 69, one line naming Core and the setting.
A Core lost later is waited for, holding results (tests/faults/test_core_outage.py)."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from jobworker.adapters.core.process import CoreProcess
from tests.support.e2e import publish, results_in_core, sleep_jobs, worker_settings
from tests.support.kafka import committed_offsets, create_topic, group_members, unique_name
from tests.support.processes import WorkerProcess, free_port, wait_while_running, worker_env

pytestmark = pytest.mark.e2e

WAITING_FOR_CORE = '"waiting for Core to answer before taking jobs"'


def run(settings: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "jobworker", "run"],
        env=worker_env(**settings),
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def file_worker(jobs: Path, core_address: str, **overrides: str) -> dict[str, str]:
    return {
        "JOB_SOURCE": "file",
        "JOB_FILE": str(jobs),
        "RESULT_SINK": "grpc",
        "GRPC_SERVER_ADDRESS": core_address,
        "LOG_FORMAT": "json",
    } | overrides


def write_jobs(path: Path, count: int) -> list[str]:
    ids = [f"job-{i}" for i in range(count)]
    path.write_text(
        "".join(json.dumps({"id": i, "type": "SLEEP", "payload": {"ms": 1}}) + "\n" for i in ids)
    )
    return ids


def test_core_unreachable_at_start_exits_69_before_taking_a_job(
    kafka_servers: str, tmp_path: Path
) -> None:
    topic = create_topic(kafka_servers, partitions=1, prefix="core-at-start")
    group = unique_name("core-at-start")
    publish(kafka_servers, topic, sleep_jobs(5, ms=1))
    core_address = f"127.0.0.1:{free_port()}"  # nothing listens there

    done = run(
        worker_settings(kafka_servers, topic, group, core_address, CORE_START_TIMEOUT="2s"),
        tmp_path,
    )

    assert done.returncode == 69, done.stderr[-3000:]
    last = done.stderr.strip().splitlines()[-1]
    assert last == (
        f"jobworker: cannot reach Core at {core_address} (GRPC_SERVER_ADDRESS) within 2 s"
        " (CORE_START_TIMEOUT; 0 starts without it)"
    )
    assert "Traceback" not in done.stderr
    # Nothing was taken: the worker never joined the group, let alone committed.
    assert '"partitions assigned"' not in done.stderr
    assert committed_offsets(kafka_servers, group, topic) == {}
    assert group_members(kafka_servers, group) == {}


def test_a_core_that_comes_up_within_the_timeout_is_waited_for(tmp_path: Path) -> None:
    jobs = tmp_path / "jobs.jsonl"
    ids = write_jobs(jobs, 3)
    core = CoreProcess(free_port(), tmp_path / "core.db")
    settings = file_worker(jobs, core.address, CORE_START_TIMEOUT="60s")
    worker = WorkerProcess(settings, tmp_path / "worker.log").start()
    try:
        # Core comes up only once the worker waits for it, however long its start took.
        assert wait_while_running(lambda: WAITING_FOR_CORE in worker.log(), 30, worker)
        core.start()
        assert worker.wait(60) == 0, worker.log()[-3000:]
        assert results_in_core(core.db_path, ids) == set(ids)
    finally:
        worker.ensure_stopped()
        core.kill()


def test_a_signal_while_waiting_for_core_stops_cleanly_having_run_nothing(
    tmp_path: Path,
) -> None:
    jobs = tmp_path / "jobs.jsonl"
    write_jobs(jobs, 3)
    settings = file_worker(jobs, f"127.0.0.1:{free_port()}", CORE_START_TIMEOUT="60s")
    worker = WorkerProcess(settings, tmp_path / "worker.log").start()
    try:
        assert wait_while_running(lambda: WAITING_FOR_CORE in worker.log(), 30, worker)
        worker.signal(signal.SIGTERM)
        assert worker.wait(20) == 0, worker.log()
        assert '"job finished"' not in worker.log()
    finally:
        worker.ensure_stopped()
