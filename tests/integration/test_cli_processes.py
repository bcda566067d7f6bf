"""``run --processes``: bad values are one line naming the setting, exit 2, before any
child is started."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.integration.test_cli import jobworker
from tests.support.processes import worker_env

pytestmark = pytest.mark.integration

KAFKA = {
    "KAFKA_BROKERS": "127.0.0.1:9",
    "KAFKA_GROUP_ID": "g",
    "GRPC_SERVER_ADDRESS": "127.0.0.1:9",
}


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        ("0", "'0' must be greater than zero"),
        ("-2", "'-2' must be greater than zero"),
        ("two", ""),
        ("1000", "'1000' is above the limit of 256"),
    ],
)
@pytest.mark.parametrize("given_as", ["flag", "variable"])
def test_a_bad_process_count_is_one_line_and_exit_2(
    tmp_path: Path, value: str, problem: str, given_as: str
) -> None:
    if given_as == "flag":  # the error names what the user typed
        done = jobworker("run", "--processes", value, env=worker_env(**KAFKA), cwd=tmp_path)
        name = "--processes"
    else:
        env = worker_env(**KAFKA, WORKER_PROCESSES=value)
        done = jobworker("run", env=env, cwd=tmp_path)
        name = "WORKER_PROCESSES"
    assert done.returncode == 2
    (line,) = done.stderr.strip().splitlines()
    assert line.startswith(f"jobworker: configuration error: {name}: {problem}")


def test_processes_need_kafka_not_a_jobs_file(tmp_path: Path) -> None:
    jobs = tmp_path / "jobs.jsonl"
    jobs.write_text('{"id": "a", "type": "SLEEP", "payload": {"ms": 1}}\n')
    env = worker_env(WORKER_PROCESSES="2")
    done = jobworker("run", "--jobs", str(jobs), "--results", "-", env=env, cwd=tmp_path)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        "jobworker: configuration error: WORKER_PROCESSES: needs JOB_SOURCE=kafka:"
        " with a jobs file every process would run every job"
    ]


def test_processes_need_core_not_a_results_file(tmp_path: Path) -> None:
    env = worker_env(**KAFKA, WORKER_PROCESSES="2")
    done = jobworker("run", "--results", str(tmp_path / "r.jsonl"), env=env, cwd=tmp_path)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        "jobworker: configuration error: WORKER_PROCESSES: needs RESULT_SINK=grpc:"
        " processes appending to one results file could interleave their lines"
    ]
