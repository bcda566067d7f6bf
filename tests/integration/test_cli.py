"""The real ``jobworker`` command, run as a subprocess, as a user would run it."""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from jobworker.entrypoints.settings import SETTINGS
from tests.support.faults import scrape_metric
from tests.support.processes import free_port, wait_until, worker_env

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]


def jobworker(
    *args: str, env: dict[str, str], cwd: Path, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "jobworker", *args],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def test_missing_kafka_brokers_is_one_line_and_exit_2(tmp_path: Path) -> None:
    env = worker_env(KAFKA_GROUP_ID="g", GRPC_SERVER_ADDRESS="127.0.0.1:9")
    done = jobworker("run", env=env, cwd=tmp_path)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        "jobworker: configuration error: KAFKA_BROKERS: is required "
        "(comma-separated bootstrap servers (JOB_SOURCE=kafka))"
    ]
    assert "Traceback" not in done.stderr + done.stdout


def test_every_configuration_problem_is_a_line_of_one_run(tmp_path: Path) -> None:
    (tmp_path / ".env").write_text("KAFKA_SESSION_TIMEOUT=45000\n")
    env = worker_env(KAFKA_BROKERS="127.0.0.1:9", WORKER_POOL_SIZE="ten")
    done = jobworker("run", env=env, cwd=tmp_path)
    assert done.returncode == 2
    assert "Traceback" not in done.stderr + done.stdout
    assert done.stderr.splitlines() == [
        "jobworker: configuration error: KAFKA_SESSION_TIMEOUT: '45000' has no unit: write"
        " 45000ms (= 45s) or 45000s (units: ms, s, m, h)",
        "jobworker: configuration error: WORKER_POOL_SIZE: 'ten' is not a whole number",
        "jobworker: configuration error: KAFKA_GROUP_ID: is required (consumer group"
        " (JOB_SOURCE=kafka))",
        "jobworker: configuration error: GRPC_SERVER_ADDRESS: is required (Core service"
        " host:port (RESULT_SINK=grpc))",
    ]


def test_a_misspelt_variable_is_a_warning_naming_the_setting(tmp_path: Path) -> None:
    jobs = tmp_path / "jobs.jsonl"
    jobs.write_text(json.dumps({"id": "a", "type": "SLEEP", "payload": {"ms": 1}}) + "\n")
    (tmp_path / ".env").write_text("MAX_JOB_TIMEOT=5s\n")
    env = worker_env(WORKER_POOLSIZE="4")
    done = jobworker("run", "--jobs", str(jobs), "--results", "-", env=env, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    warnings = [e for e in log_events(done.stderr) if e["level"] == "warning"]
    assert [(e["event"], e["variable"], e["nearest"]) for e in warnings] == [
        (
            "MAX_JOB_TIMEOT (in .env) is not a setting; did you mean MAX_JOB_TIMEOUT?",
            "MAX_JOB_TIMEOT",
            "MAX_JOB_TIMEOUT",
        ),
        (
            "WORKER_POOLSIZE is not a setting; did you mean WORKER_POOL_SIZE?",
            "WORKER_POOLSIZE",
            "WORKER_POOL_SIZE",
        ),
    ]
    # Where it stops the run, it comes before the errors it may explain.
    failed = jobworker("run", env=worker_env(KAFKA_BROKER="127.0.0.1:9"), cwd=tmp_path)
    assert failed.returncode == 2
    assert failed.stderr.splitlines()[:2] == [
        "jobworker: warning: KAFKA_BROKER is not a setting; did you mean KAFKA_BROKERS?",
        "jobworker: warning: MAX_JOB_TIMEOT (in .env) is not a setting; did you mean"
        " MAX_JOB_TIMEOUT?",
    ]
    assert "KAFKA_BROKERS: is required" in failed.stderr.splitlines()[2]


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
    # Every job ran and was reported; the line with no job makes the run's status 65.
    assert done.returncode == 65, done.stderr
    by_id = {r["job_id"]: r for r in map(json.loads, results.read_text().splitlines())}
    assert by_id["ok"]["status"] == "SUCCEEDED"
    assert by_id["ok"]["metadata"] == {"t": "1"}
    assert by_id["bad"]["status"] == "REJECTED"
    assert "'ms'" in by_id["bad"]["error"]
    assert by_id["who"]["status"] == "REJECTED"
    *log_lines, last = done.stderr.splitlines()
    assert last == (f"jobworker: 1 line(s) of {jobs} held no job; they are in {jobs}.dlq.jsonl")
    logs = [json.loads(line) for line in log_lines]
    [malformed] = [e for e in logs if e["event"].startswith("malformed job line")]
    assert (malformed["level"], malformed["line"]) == ("warning", f"{jobs}:3")
    finished = [e for e in logs if e["event"] == "job finished"]
    assert {e["job_id"] for e in finished} == {"ok", "bad", "who"}
    assert all({"type", "attempt", "status", "duration_ms"} <= e.keys() for e in finished)
    [stopped] = [e for e in logs if e["event"] == "worker stopped"]
    assert stopped["malformed_lines"] == 1
    assert stopped["finished"] == {"SUCCEEDED": 1, "REJECTED": 2}
    [dead] = map(json.loads, (tmp_path / "jobs.jsonl.dlq.jsonl").read_text().splitlines())
    assert dead["line"] == "{this is not json"
    assert (dead["source_file"], dead["source_line"]) == (str(jobs), 3)
    assert dead["reason"].startswith("not valid JSON")


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
    metrics_port = free_port()
    with log.open("w") as stderr:
        worker = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "jobworker",
                "run",
                "--jobs",
                str(jobs),
                "--results",
                str(results),
            ],
            env=worker_env(
                WORKER_POOL_SIZE="4", JOBS_QUEUE_SIZE="2", METRICS_PORT=str(metrics_port)
            ),
            cwd=tmp_path,
            stderr=stderr,
        )

    def running_four_with_two_queued() -> bool:
        assert worker.poll() is None, log.read_text()
        try:
            in_flight = scrape_metric(metrics_port, "jobworker_jobs_in_flight")
            queued = scrape_metric(metrics_port, "jobworker_jobs_queue_depth")
        except OSError:
            return False  # not serving yet
        return (in_flight, queued) == (4, 2)

    assert wait_until(running_four_with_two_queued, 30), log.read_text()
    worker.send_signal(signal.SIGTERM)
    worker.wait(timeout=30)
    stderr_text = log.read_text()
    statuses = [json.loads(line)["status"] for line in results.read_text().splitlines()]
    # The file source cannot redeliver, so the run reports the jobs it never started.
    assert worker.returncode == 1, stderr_text
    assert statuses == ["SUCCEEDED"] * 4, "the four running jobs finished, none started after"
    [stopped] = [event for event in log_events(stderr_text) if event["event"] == "worker stopped"]
    assert stopped["jobs_not_started"] == 2


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
        [sys.executable, "-m", "jobworker.entrypoints.demo", "--workdir", str(tmp_path / "demo")],
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


# -- issue 10: flags, `settings`, exit statuses ---------------------------------------


def _one_line(done: subprocess.CompletedProcess[str]) -> str:
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert "Traceback" not in done.stderr + done.stdout
    return lines[0]


@pytest.mark.parametrize("flag", ["--version", "-V"])
def test_version(tmp_path: Path, flag: str) -> None:
    done = jobworker(flag, env=worker_env(), cwd=tmp_path)
    assert done.returncode == 0
    assert re.fullmatch(r"jobworker \d+\.\d+\.\d+\S*\n", done.stdout)


def test_a_flag_wins_over_the_environment(tmp_path: Path) -> None:
    jobs = tmp_path / "jobs.jsonl"
    jobs.write_text(json.dumps({"id": "a", "type": "SLEEP", "payload": {"ms": 1}}) + "\n")
    env = worker_env(WORKER_POOL_SIZE="3", LOG_LEVEL="error")
    done = jobworker(
        "run", "-c", "7", "-l", "info", "--jobs", str(jobs), "--results", "-", env=env, cwd=tmp_path
    )
    assert done.returncode == 0, done.stderr
    logs = [json.loads(line) for line in done.stderr.splitlines()]
    starting = next(e for e in logs if e["event"] == "worker starting")
    assert starting["pool_size"] == 7


def test_text_logs_name_job_types_without_reprs(tmp_path: Path) -> None:
    jobs = tmp_path / "jobs.jsonl"
    jobs.write_text(json.dumps({"id": "a", "type": "SLEEP", "payload": {"ms": 1}}) + "\n")
    done = jobworker(
        "run", "--log-format", "text", "--jobs", str(jobs), "--results", "-",
        env=worker_env(), cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "worker starting" in done.stderr
    assert "'SLEEP'" in done.stderr
    assert "<JobType" not in done.stderr


def test_a_missing_jobs_file_exits_2_at_once_with_one_line(tmp_path: Path) -> None:
    done = jobworker(
        "run", "--jobs", str(tmp_path / "nonexistent.jsonl"), "--results", "-",
        env=worker_env(), cwd=tmp_path, timeout=30,
    )  # fmt: skip
    assert done.returncode == 2
    assert _one_line(done) == (
        "jobworker: configuration error: --jobs: cannot read jobs file"
        f" {tmp_path / 'nonexistent.jsonl'}: No such file or directory"
    )


@pytest.mark.parametrize(
    ("args", "env", "line"),
    [
        (["-c", "-3"], {}, "--concurrency: '-3' must be greater than zero"),
        (["--concurrency", "many"], {}, "--concurrency: 'many' is not a whole number"),
        (["-l", "loud"], {}, "--log-level: 'loud' is not one of debug, info, warning, error"),
        (["--log-format", "xml"], {}, "--log-format: 'xml' is not one of json, text"),
        ([], {"LOG_LEVEL": "loud"}, "LOG_LEVEL: 'loud' is not one of"),
        ([], {"WORKER_POOL_SIZE": "-1"}, "WORKER_POOL_SIZE: '-1' must be greater than zero"),
        ([], {"JOB_FILE": "/nonexistent/jobs"}, "JOB_FILE: cannot read jobs file /nonexistent"),
        (["--env-file", "/nonexistent.env"], {}, "--env-file: /nonexistent.env is not a readable"),
        (["--results", "/etc/hostname/r"], {}, "--results: cannot write results file /etc/host"),
        ([], {"RESULT_FILE": "/"}, "RESULT_FILE: cannot write results file /: it is a folder"),
    ],
)
def test_bad_input_is_one_line_naming_it_and_exit_2(
    tmp_path: Path, args: list[str], env: dict[str, str], line: str
) -> None:
    base = {"JOB_SOURCE": "file", "JOB_FILE": "-", "RESULT_SINK": "file", "RESULT_FILE": "-"}
    for command in ("run", "settings"):
        done = jobworker(command, *args, env=worker_env(**(base | env)), cwd=tmp_path)
        assert done.returncode == 2, (command, done.stderr)
        assert line in _one_line(done), command


def test_a_results_file_that_cannot_be_written_exits_2_at_once(tmp_path: Path) -> None:
    # Not caught by the check of `settings` when run as root (which may write anywhere):
    # /proc takes no new folders, which only trying shows.
    jobs = tmp_path / "jobs.jsonl"
    jobs.write_text(json.dumps({"id": "a", "type": "SLEEP", "payload": {"ms": 1}}) + "\n")
    done = jobworker(
        "run", "--jobs", str(jobs), "--results", "/proc/nope/r.jsonl", env=worker_env(),
        cwd=tmp_path, timeout=30,
    )  # fmt: skip
    assert done.returncode == 2
    assert "--results: cannot write results file /proc/nope/r.jsonl" in _one_line(done)


def test_a_usage_error_is_one_line_and_exit_2(tmp_path: Path) -> None:
    done = jobworker("run", "--no-such-flag", env=worker_env(), cwd=tmp_path)
    assert done.returncode == 2
    assert "unrecognized arguments: --no-such-flag" in _one_line(done)


def test_settings_prints_the_values_in_force_and_where_they_come_from(tmp_path: Path) -> None:
    (tmp_path / ".env").write_text("KAFKA_TOPIC=from_dotenv\nKAFKA_GROUP_ID=g\n")
    env = worker_env(
        WORKER_POOL_SIZE="55",
        KAFKA_BROKERS="127.0.0.1:9",
        GRPC_SERVER_ADDRESS="127.0.0.1:9",
        KAFKA_SASL_PASSWORD="hunter2",  # noqa: S106 - must never be printed
    )
    done = jobworker("settings", "-l", "debug", env=env, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    rows = {line.split()[0]: line.split()[1:] for line in done.stdout.splitlines()}
    assert rows["WORKER_POOL_SIZE"] == ["55", "environment"]
    assert rows["KAFKA_TOPIC"] == ["from_dotenv", ".env"]
    assert rows["LOG_LEVEL"] == ["debug", "flag", "--log-level"]
    assert rows["MAX_JOB_TIMEOUT"] == ["30s", "default"]
    assert rows["KAFKA_DLQ_TOPIC"] == ["from_dotenv.dlq", "derived"]
    assert rows["KAFKA_SASL_PASSWORD"] == ["****", "environment"]
    assert "hunter2" not in done.stdout


def test_settings_fails_like_run(tmp_path: Path) -> None:
    env = worker_env(MAX_JOB_TIMEOUT="thirty", KAFKA_BROKERS="127.0.0.1:9")
    shown = jobworker("settings", env=env, cwd=tmp_path)
    ran = jobworker("run", env=env, cwd=tmp_path)
    assert shown.returncode == ran.returncode == 2
    assert shown.stderr == ran.stderr
    assert len(shown.stderr.splitlines()) == 3  # MAX_JOB_TIMEOUT, KAFKA_GROUP_ID, GRPC_…


def test_settings_shows_the_table_whatever_is_wrong(tmp_path: Path) -> None:
    env = {"PATH": os.environ["PATH"], "PYTHONPATH": str(ROOT), "WORKER_POOL_SIZE": "55"}
    env |= {"SHUTDOWN_TIMEOUT": "30", "CORE_START_TIMEOUT": "0", "WORKER_POOLSIZE": "4"}
    done = jobworker("settings", env=env, cwd=tmp_path)
    assert done.returncode == 2
    assert "Traceback" not in done.stderr + done.stdout
    rows = {line.split()[0]: line.split()[1:] for line in done.stdout.splitlines()}
    assert len(rows) == len(SETTINGS)
    assert rows["WORKER_POOL_SIZE"] == ["55", "environment"]
    assert rows["SHUTDOWN_TIMEOUT"] == ["30", "environment"]  # wrong, shown as given
    assert rows["CORE_START_TIMEOUT"] == ["0s", "environment"]
    assert rows["MAX_JOB_TIMEOUT"] == ["30s", "default"]
    assert rows["KAFKA_BROKERS"] == ["—", "default"]
    assert done.stderr.splitlines() == [
        "jobworker: warning: WORKER_POOLSIZE is not a setting; did you mean WORKER_POOL_SIZE?",
        "jobworker: configuration error: SHUTDOWN_TIMEOUT: '30' has no unit: write 30ms or"
        " 30s (units: ms, s, m, h)",
        "jobworker: configuration error: KAFKA_BROKERS: is required (comma-separated"
        " bootstrap servers (JOB_SOURCE=kafka))",
        "jobworker: configuration error: KAFKA_GROUP_ID: is required (consumer group"
        " (JOB_SOURCE=kafka))",
        "jobworker: configuration error: GRPC_SERVER_ADDRESS: is required (Core service"
        " host:port (RESULT_SINK=grpc))",
    ]


def test_submit_warns_of_a_misspelt_variable_too(tmp_path: Path) -> None:
    env = worker_env(KAFKA_TOPC="orders")  # the jobs would go to the default topic
    done = jobworker("submit", "--type", "SLEEP", env=env, cwd=tmp_path)
    assert done.returncode == 2  # no KAFKA_BROKERS: before any connection
    [warning] = [e for e in log_events(done.stderr) if e["level"] == "warning"]
    assert warning["event"] == "KAFKA_TOPC is not a setting; did you mean KAFKA_TOPIC?"


def test_settings_with_only_a_warning_exits_0(tmp_path: Path) -> None:
    base = {"JOB_SOURCE": "file", "JOB_FILE": "-", "RESULT_SINK": "file", "RESULT_FILE": "-"}
    done = jobworker("settings", env=worker_env(**base, LOG_LEVLE="debug"), cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stderr.splitlines() == [
        "jobworker: warning: LOG_LEVLE is not a setting; did you mean LOG_LEVEL?"
    ]


def test_settings_defaults_is_the_readme_table(tmp_path: Path) -> None:
    done = jobworker("settings", "--defaults", env=worker_env(), cwd=tmp_path)
    assert done.returncode == 0
    assert done.stdout.strip() in (ROOT / "README.md").read_text()


@pytest.mark.parametrize(
    ("command", "defaults"),
    [
        ("run", ["(default: ./.env)", "default 10]", "default info]"]),
        ("core", ["(default: 127.0.0.1:50051)", "(default: core.db)", "(default: 16)"]),
        ("core-summary", ["(default: core.db)"]),
        ("submit", ["(default: {})", "(default: 1)", "(default: 0)", "(default: a new UUID)"]),
        ("settings", ["(default: ./.env)"]),
    ],
)
def test_each_commands_help_has_a_description_and_shows_defaults(
    tmp_path: Path, command: str, defaults: list[str]
) -> None:
    done = jobworker(command, "--help", env=worker_env(), cwd=tmp_path)
    assert done.returncode == 0
    usage, description, options = done.stdout.split("\n\n", 2)
    assert usage.startswith(f"usage: jobworker {command}")
    assert len(description.split()) > 10, description
    text = " ".join(options.split())
    assert all(default in text for default in defaults), text


def test_the_readme_flag_table_lists_every_flag_of_run(tmp_path: Path) -> None:
    done = jobworker("run", "--help", env=worker_env(), cwd=tmp_path)
    readme = (ROOT / "README.md").read_text()
    table = readme[readme.index("| Flag | Variable |") :].split("\n\n")[0]
    for flag in set(re.findall(r"--[a-z-]+", done.stdout)) - {"--help"}:
        assert f"`{flag}" in table or f", `{flag}" in table, flag


def test_the_readme_examples_of_configuration_errors_are_true(tmp_path: Path) -> None:
    readme = (ROOT / "README.md").read_text()
    block = readme.split("In a shell with no settings exported:\n\n```\n")[1].split("```")[0]
    (tmp_path / "jobs.jsonl").write_text(
        json.dumps({"id": "hello-1", "type": "SLEEP", "payload": {"ms": 100}}) + "\n"
    )
    examples = re.findall(r"^\$ (.*)\n((?:[^$].*\n)*)", block, re.MULTILINE)
    assert len(examples) >= 4
    for command, expected in examples:
        words = shlex.split(command)
        assigned = dict(word.split("=", 1) for word in words if "=" in word.split("-")[0])
        args = words[words.index("jobworker") + 1 :]
        done = jobworker(*args, env=worker_env(**assigned), cwd=tmp_path)
        assert done.returncode == 2, command
        assert done.stderr == expected, command


def test_help_names_the_variable_behind_each_flag(tmp_path: Path) -> None:
    done = jobworker("run", "--help", env=worker_env(), cwd=tmp_path)
    text = " ".join(done.stdout.split())
    for flag, variable in [
        ("--concurrency", "WORKER_POOL_SIZE"),
        ("--log-level", "LOG_LEVEL"),
        ("--log-format", "LOG_FORMAT"),
        ("--jobs", "JOB_FILE"),
        ("--results", "RESULT_FILE"),
    ]:
        assert re.search(f"{flag} \\S+ [^-]*\\[[^]]*{variable}", text), (flag, text)


def test_unreachable_kafka_at_start_exits_69(tmp_path: Path) -> None:
    env = worker_env(
        KAFKA_BROKERS="127.0.0.1:9", KAFKA_GROUP_ID="g", RESULT_SINK="file", RESULT_FILE="-"
    )
    done = jobworker("run", env=env, cwd=tmp_path, timeout=120)
    assert done.returncode == 69, done.stderr
    lines = done.stderr.strip().splitlines()
    assert lines[-1].startswith("jobworker: cannot reach Kafka at 127.0.0.1:9 (KAFKA_BROKERS)")
    # The cause is in that line; kafka-python's lines for every attempt are held back.
    assert "ECONNREFUSED" in lines[-1]
    assert not [line for line in lines if "kafka.net" in line or "kafka.conn" in line]


@pytest.mark.parametrize(("env_format", "flags", "json_lines"), [
    ("json", [], True),
    ("json", ["--log-format", "text"], False),
    ("text", [], False),
])  # fmt: skip
def test_core_reads_log_format_like_run_and_its_flag_wins(
    tmp_path: Path, env_format: str, flags: list[str], json_lines: bool
) -> None:
    command = [sys.executable, "-m", "jobworker", "core", "--address", "127.0.0.1:0"]
    core = subprocess.Popen(
        [*command, "--db", str(tmp_path / "core.db"), *flags],
        env=worker_env(LOG_FORMAT=env_format, PYTHONUNBUFFERED="1"),
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert core.stdout is not None
        assert "core listening on port" in core.stdout.readline()
    finally:
        core.send_signal(signal.SIGTERM)
        _, stderr = core.communicate(timeout=30)
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert lines, "Core logged nothing"
    assert all(line.startswith("{") for line in lines) == json_lines, stderr


def test_output_piped_into_a_reader_that_stops_early_ends_quietly(tmp_path: Path) -> None:
    # ``jobworker settings --defaults | true``: the reader is gone before the table is
    # written (it fits a pipe's buffer, so a reader that left later might not be seen).
    reader, writer = os.pipe()
    settings = subprocess.Popen(
        [sys.executable, "-m", "jobworker", "settings", "--defaults"],
        env=worker_env(),
        cwd=tmp_path,
        stdout=writer,
        stderr=subprocess.PIPE,
    )
    os.close(writer)
    os.close(reader)
    _, stderr = settings.communicate(timeout=60)

    assert settings.returncode == 141
    assert b"Traceback" not in stderr
    assert stderr == b""


def log_events(stderr_text: str) -> list[dict[str, Any]]:
    """The JSON log lines of a worker's stderr (the CLI's own plain lines left out)."""
    return [json.loads(line) for line in stderr_text.splitlines() if line.startswith("{")]
