"""Tracing through the real ``jobworker`` command with a jobs file: the console exporter's
spans, a job's trace context taken from the file, and a malformed OTEL_* variable."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from jobworker.adapters.file.source import JobFileError, parse_job_line
from tests.support.processes import worker_env

pytestmark = pytest.mark.integration

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PRODUCER_SPAN = "00f067aa0ba902b7"


def run_file_worker(tmp_path: Path, lines: list[dict[str, Any]], **otel: str) -> Any:
    jobs = tmp_path / "jobs.jsonl"
    jobs.write_text("".join(json.dumps(line) + "\n" for line in lines))
    env = worker_env(
        JOB_SOURCE="file",
        JOB_FILE=str(jobs),
        RESULT_SINK="file",
        RESULT_FILE=str(tmp_path / "results.jsonl"),
        **otel,
    )
    return subprocess.run(
        [sys.executable, "-m", "jobworker", "run"],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def console_spans(stdout: str) -> list[dict[str, Any]]:
    """The console exporter prints each span as an indented JSON object."""
    decoder, spans, at = json.JSONDecoder(), [], 0
    text = stdout.strip()
    while at < len(text):
        span, end = decoder.raw_decode(text, at)
        spans.append(span)
        at = end
        while at < len(text) and text[at].isspace():
            at += 1
    return spans


def test_a_job_from_a_file_continues_its_trace_and_its_log_lines_carry_the_ids(
    tmp_path: Path,
) -> None:
    lines = [
        {
            "id": "traced",
            "type": "SLEEP",
            "payload": {"ms": 1},
            "trace_headers": {"traceparent": f"00-{TRACE_ID}-{PRODUCER_SPAN}-01"},
        },
        {"id": "plain", "type": "SLEEP", "payload": {"ms": 1}},
    ]
    done = run_file_worker(tmp_path, lines, OTEL_TRACES_EXPORTER="console")
    assert done.returncode == 0, done.stderr
    spans = console_spans(done.stdout)
    [job] = [s for s in spans if s["attributes"].get("messaging.message.id") == "traced"]
    assert job["name"] == "job SLEEP"
    assert job["kind"] == "SpanKind.CONSUMER"
    assert job["context"]["trace_id"] == f"0x{TRACE_ID}"
    assert job["parent_id"] == f"0x{PRODUCER_SPAN}"
    assert job["resource"]["attributes"]["service.name"] == "jobworker"
    [call] = [s for s in spans if s["parent_id"] == job["context"]["span_id"]]
    assert call["name"].startswith("report result")
    finished = [
        json.loads(line)
        for line in done.stderr.splitlines()
        if line.startswith("{") and '"job finished"' in line
    ]
    traced = next(event for event in finished if event["job_id"] == "traced")
    assert traced["trace_id"] == TRACE_ID
    assert f"0x{traced['span_id']}" == job["context"]["span_id"]


def test_with_no_otel_variable_nothing_is_traced(tmp_path: Path) -> None:
    done = run_file_worker(tmp_path, [{"id": "j", "type": "SLEEP", "payload": {"ms": 1}}])
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == ""
    assert '"trace_id"' not in done.stderr


@pytest.mark.parametrize(
    ("variable", "value"),
    [("OTEL_TRACES_EXPORTER", "zipkin-ish"), ("OTEL_TRACES_SAMPLER", "sometimes")],
)
def test_a_malformed_otel_variable_is_one_line_and_exit_2(
    tmp_path: Path, variable: str, value: str
) -> None:
    otel = {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:1", variable: value}
    done = run_file_worker(tmp_path, [{"id": "j", "type": "SLEEP"}], **otel)
    assert done.returncode == 2
    [line] = done.stderr.strip().splitlines()
    assert line.startswith(f"jobworker: configuration error: {variable}: ")
    assert "Traceback" not in done.stderr


def test_a_jobs_file_trace_headers_field_must_map_strings_to_strings() -> None:
    job = parse_job_line('{"id": "j", "type": "SLEEP", "trace_headers": {"TraceParent": "x"}}')
    assert job.trace_headers == {"traceparent": "x"}
    with pytest.raises(JobFileError, match="'trace_headers' must map strings to strings"):
        parse_job_line('{"id": "j", "type": "SLEEP", "trace_headers": ["x"]}')


def test_otel_variables_in_dot_env_turn_tracing_on_and_spans_name_the_worker(
    tmp_path: Path,
) -> None:
    # .env is loaded into the environment like every other variable (docs/operations.md).
    (tmp_path / ".env").write_text("OTEL_TRACES_EXPORTER=console\nWORKER_ID=worker-from-env\n")
    done = run_file_worker(tmp_path, [{"id": "j", "type": "SLEEP", "payload": {"ms": 1}}])
    assert done.returncode == 0, done.stderr
    [job] = [s for s in console_spans(done.stdout) if s["name"] == "job SLEEP"]
    assert job["resource"]["attributes"]["service.instance.id"] == "worker-from-env"
