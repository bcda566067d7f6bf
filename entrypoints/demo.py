"""``make demo``: the whole worker on one machine, no Kafka (or with it: ``--kafka``).

Starts the reference Core on loopback and a small local HTTP server, makes a picture,
runs ``jobworker run`` as a real subprocess over the bundled example jobs (all three
executors, good and bad input), reports every result to Core over gRPC, prints what
Core holds, checks every job is there, stops everything and exits 0.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from PIL import Image, ImageDraw

from jobworker.adapters.core.process import CoreProcess

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE_JOBS = ROOT / "examples" / "demo-jobs.jsonl"
WORKER_TIMEOUT_S = 120


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="demo", description=__doc__)
    parser.add_argument("--kafka", action="store_true", help="go through a Kafka topic")
    parser.add_argument("--workdir", type=Path, default=ROOT / ".cache" / "demo")
    args = parser.parse_args(argv)

    workdir: Path = args.workdir
    shutil.rmtree(workdir, ignore_errors=True)
    (workdir / "images" / "in").mkdir(parents=True)
    (workdir / "images" / "out").mkdir(parents=True)
    picture = _make_picture()
    (workdir / "images" / "in" / "photo.png").write_bytes(picture)

    with _demo_http_server(picture) as http_base, _core(workdir) as core_address:
        jobs_file = workdir / "jobs.jsonl"
        jobs_file.write_text(EXAMPLE_JOBS.read_text().replace("{HTTP}", http_base))
        job_ids = [json.loads(line)["id"] for line in jobs_file.read_text().splitlines()]
        env = _worker_env(workdir, core_address)
        if args.kafka:
            code = _run_through_kafka(env, jobs_file, workdir, len(job_ids))
        else:
            _say(f"worker: {len(job_ids)} jobs from {EXAMPLE_JOBS.relative_to(ROOT)}")
            code = _jobworker(["run", "--jobs", str(jobs_file)], env, WORKER_TIMEOUT_S)
        if code != 0:
            _say(f"the worker exited with status {code}")
            return 1
        return _report(workdir / "core.db", job_ids)


def _report(db: Path, job_ids: list[str]) -> int:
    from jobworker.adapters.core.store import ResultStore, format_summary  # noqa: PLC0415

    with ResultStore(db) as store:
        _say("Core holds:")
        print(format_summary(store.summary()))
        missing = sorted(set(job_ids) - set(store.job_ids()))
        for job_id in job_ids:
            stored = store.get(job_id)
            if stored is not None:
                result = stored.result
                detail = result.error or result.output
                print(f"  {job_id:<18} {result.status:<10} {detail[:90]}")
    if missing:
        _say(f"MISSING from Core: {', '.join(missing)}")
        return 1
    _say(f"all {len(job_ids)} jobs reached Core")
    return 0


def _run_through_kafka(env: dict[str, str], jobs_file: Path, workdir: Path, expected: int) -> int:
    brokers = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
    if not brokers:
        _say("--kafka needs KAFKA_BOOTSTRAP_SERVERS (make demo-kafka starts a broker)")
        return 2
    topic = f"demo-jobs-{int(time.time())}"
    env = env | {
        "JOB_SOURCE": "kafka",
        "KAFKA_BROKERS": brokers,
        "KAFKA_TOPIC": topic,
        "KAFKA_GROUP_ID": f"{topic}-workers",
    }
    _say(f"submitting {expected} jobs to Kafka topic {topic}")
    if _jobworker(["submit", "--file", str(jobs_file)], env, 60) != 0:
        return 1
    worker = _start_jobworker(["run"], env, workdir / "worker.log")
    try:
        from jobworker.adapters.core.store import ResultStore  # noqa: PLC0415

        deadline = time.monotonic() + WORKER_TIMEOUT_S
        while time.monotonic() < deadline:
            with ResultStore(workdir / "core.db") as store:
                if len(store.job_ids()) >= expected:
                    break
            time.sleep(0.5)
        worker.send_signal(signal.SIGTERM)
        return worker.wait(timeout=60)
    finally:
        if worker.poll() is None:
            worker.kill()


def _worker_env(workdir: Path, core_address: str) -> dict[str, str]:
    return os.environ | {
        "JOB_SOURCE": "file",
        "RESULT_SINK": "grpc",
        "GRPC_SERVER_ADDRESS": core_address,
        "WORKER_ID": "demo-worker",
        "WORKER_POOL_SIZE": "8",
        "MAX_JOB_TIMEOUT": "10s",
        "RETRY_BACKOFF_BASE": "100ms",
        "LOG_FORMAT": os.environ.get("LOG_FORMAT", "text"),
        # The demo's HTTP server is on loopback, which HTTP jobs refuse by default.
        "HTTP_ALLOW_PRIVATE_NETWORKS": "true",
        "IMAGE_INPUT_ROOT": str(workdir / "images" / "in"),
        "IMAGE_OUTPUT_ROOT": str(workdir / "images" / "out"),
    }


def _jobworker(args: list[str], env: dict[str, str], timeout_s: float) -> int:
    return subprocess.run(_command(args), env=env, timeout=timeout_s, check=False).returncode


def _start_jobworker(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:
        return subprocess.Popen(_command(args), env=env, stdout=out, stderr=subprocess.STDOUT)


def _command(args: list[str]) -> list[str]:
    return [sys.executable, "-m", "jobworker", *args]


@contextmanager
def _core(workdir: Path) -> Iterator[str]:
    core = CoreProcess(_free_port(), workdir / "core.db", log_path=workdir / "core.log")
    try:
        core.start(timeout_s=30)
    except RuntimeError as error:
        raise SystemExit(f"demo: {error}") from None
    try:
        _say(f"reference Core listening on {core.address} (SQLite: {core.db_path})")
        yield core.address
    finally:
        core.stop(timeout_s=15)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@contextmanager
def _demo_http_server(picture: bytes) -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(picture))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def _handler(picture: bytes) -> type[BaseHTTPRequestHandler]:
    class DemoHandler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            routes = {
                "/hello": (200, "application/json", b'{"greeting": "hello, jobworker"}'),
                "/photo.png": (200, "image/png", picture),
                "/unavailable": (503, "text/plain", b"try again later"),
            }
            if self.path == "/redirect":
                self.send_response(302)
                self.send_header("Location", "/hello")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            status, content_type, body = routes.get(self.path, (404, "text/plain", b"no such page"))
            self._reply(status, content_type, body)

        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            self._reply(200, "application/json", self.rfile.read(length))

        def _reply(self, status: int, content_type: str, body: bytes) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:  # noqa: A002
            pass  # the worker logs every job; the server's own lines would only repeat them

    return DemoHandler


def _make_picture() -> bytes:
    image = Image.new("RGB", (640, 400), "#1f6feb")
    draw = ImageDraw.Draw(image)
    for step in range(0, 640, 40):
        draw.rectangle((step, 0, step + 20, 400), fill="#f0b429")
    draw.ellipse((220, 100, 420, 300), fill="#e5534b")
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def _say(message: str) -> None:
    print(f"demo: {message}", flush=True)


if __name__ == "__main__":
    sys.exit(main())
