"""The real ``jobworker`` command, run as a subprocess, as a user would run it."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.support.processes import worker_env

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]


def jobworker(
    *args: str, env: dict[str, str], cwd: Path, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "entrypoints", *args],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def test_missing_kafka_brokers_is_one_line_and_exit_2(tmp_path: Path) -> None:
    done = jobworker("run", env=worker_env(), cwd=tmp_path)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        "jobworker: configuration error: KAFKA_BROKERS: is required "
        "(comma-separated bootstrap servers (JOB_SOURCE=kafka))"
    ]
    assert "Traceback" not in done.stderr + done.stdout


def test_a_malformed_duration_names_its_variable(tmp_path: Path) -> None:
    env = worker_env(
        KAFKA_BROKERS="127.0.0.1:9",
        KAFKA_GROUP_ID="g",
        GRPC_SERVER_ADDRESS="127.0.0.1:9",
        MAX_JOB_TIMEOUT="thirty",
    )
    done = jobworker("run", env=env, cwd=tmp_path)
    assert done.returncode == 2
    assert "MAX_JOB_TIMEOUT: 'thirty' is not a duration" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1


def test_settings_come_from_dotenv_in_the_working_directory(tmp_path: Path) -> None:
    (tmp_path / ".env").write_text(
        "KAFKA_BROKERS=127.0.0.1:9\nKAFKA_GROUP_ID=g\nWORKER_POOL_SIZE=-3\n"
    )
    done = jobworker("run", env=worker_env(), cwd=tmp_path)
    assert done.returncode == 2
    assert "WORKER_POOL_SIZE: '-3' must be greater than zero" in done.stderr


def test_file_to_file_run_reports_every_job(tmp_path: Path) -> None:
    jobs = tmp_path / "jobs.jsonl"
    jobs.write_text(
        "\n".join(
            [
                json.dumps(
                    {"id": "ok", "type": "SLEEP", "payload": {"ms": 5}, "metadata": {"t": "1"}}
                ),
                json.dumps({"id": "bad", "type": "SLEEP", "payload": {"ms": -1}}),
                "{this is not json",
                json.dumps({"id": "who", "type": "NOPE"}),
            ]
        )
        + "\n"
    )
    results = tmp_path / "out" / "results.jsonl"
    done = jobworker(
        "run",
        "--jobs",
        str(jobs),
        "--results",
        str(results),
        env=worker_env(LOG_FORMAT="json"),
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr
    by_id = {r["job_id"]: r for r in map(json.loads, results.read_text().splitlines())}
    assert by_id["ok"]["status"] == "SUCCEEDED"
    assert by_id["ok"]["metadata"] == {"t": "1"}
    assert by_id["bad"]["status"] == "REJECTED"
    assert "'ms'" in by_id["bad"]["error"]
    assert by_id["who"]["status"] == "REJECTED"
    logs = [json.loads(line) for line in done.stderr.splitlines()]
    assert any("jobs.jsonl:3" in e["event"] for e in logs if e["level"] == "error")
    finished = [e for e in logs if e["event"] == "job finished"]
    assert {e["job_id"] for e in finished} == {"ok", "bad", "who"}
    assert all({"type", "attempt", "status", "duration_ms"} <= e.keys() for e in finished)


def test_sigterm_lets_running_jobs_finish(tmp_path: Path) -> None:
    jobs = tmp_path / "jobs.jsonl"
    jobs.write_text(
        "".join(
            json.dumps({"id": f"s{i}", "type": "SLEEP", "payload": {"ms": 1500}}) + "\n"
            for i in range(30)
        )
    )
    results = tmp_path / "results.jsonl"
    log = tmp_path / "worker.log"
    with log.open("w") as stderr:
        worker = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "entrypoints",
                "run",
                "--jobs",
                str(jobs),
                "--results",
                str(results),
            ],
            env=worker_env(WORKER_POOL_SIZE="4", JOBS_QUEUE_SIZE="2"),
            cwd=tmp_path,
            stderr=stderr,
        )
    deadline = time.monotonic() + 30
    while "worker starting" not in log.read_text() and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.5)  # the first four 1.5 s jobs are running now
    worker.send_signal(signal.SIGTERM)
    worker.wait(timeout=30)
    stderr_text = log.read_text()
    statuses = [json.loads(line)["status"] for line in results.read_text().splitlines()]
    # The file source cannot redeliver, so the run reports the jobs it never started.
    assert worker.returncode == 1, stderr_text
    assert statuses == ["SUCCEEDED"] * 4, "the four running jobs finished, none started after"
    assert '"jobs_not_started": 2' in stderr_text


def test_submit_to_a_file_then_run_it(tmp_path: Path) -> None:
    jobs = tmp_path / "jobs.jsonl"
    env = worker_env()
    done = jobworker(
        "submit",
        "--type",
        "sleep",
        "--payload",
        '{"ms": 1}',
        "--count",
        "3",
        "--id",
        "batch",
        "--meta",
        "tenant=acme",
        "--to-file",
        str(jobs),
        env=env,
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr
    records = [json.loads(line) for line in jobs.read_text().splitlines()]
    assert [r["id"] for r in records] == ["batch-0", "batch-1", "batch-2"]
    assert records[0]["type"] == "SLEEP"
    assert records[0]["metadata"] == {"tenant": "acme"}
    results = tmp_path / "results.jsonl"
    assert (
        jobworker(
            "run", "--jobs", str(jobs), "--results", str(results), env=env, cwd=tmp_path
        ).returncode
        == 0
    )
    assert len(results.read_text().splitlines()) == 3


def test_submit_refuses_a_payload_that_is_not_json(tmp_path: Path) -> None:
    done = jobworker(
        "submit",
        "--type",
        "SLEEP",
        "--payload",
        "{ms: 1}",
        "--to-file",
        "x.jsonl",
        env=worker_env(),
        cwd=tmp_path,
    )
    assert done.returncode == 2
    assert "--payload: is not valid JSON" in done.stderr
    assert not (tmp_path / "x.jsonl").exists()


def test_demo_reports_every_example_job_to_core(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "entrypoints.demo", "--workdir", str(tmp_path / "demo")],
        env=worker_env(),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "demo: all 17 jobs reached Core" in done.stdout
    assert "duplicates         0" in done.stdout


def test_max_payload_bytes_rejects_larger_payloads_and_metrics_port_is_checked(
    tmp_path: Path,
) -> None:
    jobs = tmp_path / "jobs.jsonl"
    big = {"ms": 1, "output": "x" * 500}
    jobs.write_text(
        json.dumps({"id": "big", "type": "SLEEP", "payload": big})
        + "\n"
        + json.dumps({"id": "small", "type": "SLEEP", "payload": {"ms": 1}})
        + "\n"
    )
    results = tmp_path / "results.jsonl"
    env = worker_env(MAX_PAYLOAD_BYTES="200")
    done = jobworker("run", "--jobs", str(jobs), "--results", str(results), env=env, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    by_id = {r["job_id"]: r for r in map(json.loads, results.read_text().splitlines())}
    assert by_id["big"]["status"] == "REJECTED"
    assert "above the 200-byte limit" in by_id["big"]["error"]
    assert by_id["small"]["status"] == "SUCCEEDED"

    done = jobworker(
        "run",
        "--jobs",
        str(jobs),
        "--results",
        str(results),
        env=worker_env(METRICS_PORT="70000"),
        cwd=tmp_path,
    )
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        "jobworker: configuration error: METRICS_PORT: '70000' is not a port: 0 (off) or 1-65535"
    ]
