"""What a jobs-file run leaves behind: results, a dead-letter file only when a line held
no job, and image folders only when an image job needs one."""

from __future__ import annotations

import base64
import io
import json
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from tests.support.processes import wait_until, worker_env

pytestmark = pytest.mark.integration


def run(
    tmp_path: Path, *args: str, stdin: str | None = None, **settings: str
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "jobworker", "run", *args],
        env=worker_env(**settings),
        cwd=tmp_path,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def jobs_file(tmp_path: Path, *jobs: dict[str, object]) -> Path:
    path = tmp_path / "jobs.jsonl"
    path.write_text("".join(json.dumps(job) + "\n" for job in jobs))
    return path


def results(path: Path) -> dict[str, dict[str, object]]:
    return {r["job_id"]: r for r in map(json.loads, path.read_text().splitlines())}


def stopped_line(stderr: str) -> dict[str, object]:
    [stopped] = [
        event
        for event in (json.loads(line) for line in stderr.splitlines() if line.startswith("{"))
        if event["event"] == "worker stopped"
    ]
    return stopped


def test_a_clean_sleep_run_leaves_only_its_results(tmp_path: Path) -> None:
    jobs = jobs_file(tmp_path, {"id": "a", "type": "SLEEP", "payload": {"ms": 1}})

    done = run(tmp_path, "--jobs", str(jobs), "--results", "results.jsonl")

    assert done.returncode == 0, done.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["jobs.jsonl", "results.jsonl"]
    assert stopped_line(done.stderr)["malformed_lines"] == 0


def test_an_image_job_makes_the_output_folder_and_not_the_input_one(tmp_path: Path) -> None:
    png = io.BytesIO()
    Image.new("RGB", (8, 8)).save(png, "PNG")
    inline = "data:image/png;base64," + base64.b64encode(png.getvalue()).decode()
    jobs = jobs_file(
        tmp_path,
        {"id": "inline", "type": "IMAGE_RESIZE",
         "payload": {"source": inline, "width": 4, "height": 4, "destination": "t/a.png"}},
        {"id": "from-file", "type": "IMAGE_RESIZE",
         "payload": {"source": "a.png", "width": 4, "height": 4, "destination": "b.png"}},
    )  # fmt: skip

    done = run(tmp_path, "--jobs", str(jobs), "--results", "results.jsonl")

    assert done.returncode == 0, done.stderr
    by_id = results(tmp_path / "results.jsonl")
    assert by_id["inline"]["status"] == "SUCCEEDED"
    assert (tmp_path / "data" / "images" / "out" / "t" / "a.png").is_file()
    assert not (tmp_path / "data" / "images" / "in").exists()
    assert by_id["from-file"]["status"] == "FAILED"
    assert "(IMAGE_INPUT_ROOT) does not exist" in str(by_id["from-file"]["error"])


def test_malformed_lines_from_stdin_go_to_a_dead_letter_file_in_the_working_folder(
    tmp_path: Path,
) -> None:
    lines = json.dumps({"id": "a", "type": "SLEEP", "payload": {"ms": 1}}) + "\n[]\n"

    done = run(tmp_path, "--jobs", "-", "--results", "results.jsonl", stdin=lines)

    assert done.returncode == 65, done.stderr
    assert done.stderr.splitlines()[-1] == (
        "jobworker: 1 line(s) of - held no job; they are in stdin.dlq.jsonl"
    )
    [dead] = map(json.loads, (tmp_path / "stdin.dlq.jsonl").read_text().splitlines())
    assert (dead["line"], dead["source_file"], dead["source_line"]) == ("[]", "-", 2)
    assert list(results(tmp_path / "results.jsonl")) == ["a"]
    assert stopped_line(done.stderr)["malformed_lines"] == 1


def test_jobs_not_run_outrank_malformed_lines(tmp_path: Path) -> None:
    # Exit 1 (jobs read and not run) says more than 65 (lines to look at): it wins.
    jobs = tmp_path / "jobs.jsonl"
    sleeps = [{"id": f"s{i}", "type": "SLEEP", "payload": {"ms": 3000}} for i in range(3)]
    jobs.write_text("oops\n" + "".join(json.dumps(job) + "\n" for job in sleeps))
    log = tmp_path / "worker.log"
    with log.open("w") as stderr:
        worker = subprocess.Popen(
            [sys.executable, "-m", "jobworker", "run", "--jobs", str(jobs), "--results", "r.jsonl"],
            env=worker_env(WORKER_POOL_SIZE="1", JOBS_QUEUE_SIZE="1"),
            cwd=tmp_path,
            stderr=stderr,
        )
    try:
        assert wait_until(lambda: '"malformed job line' in log.read_text(), 30), log.read_text()
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(timeout=30) == 1, log.read_text()
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.wait(10)
    stopped = stopped_line(log.read_text())
    assert stopped["malformed_lines"] == 1
    assert stopped["jobs_not_started"] == 1
    assert (tmp_path / "jobs.jsonl.dlq.jsonl").exists()
