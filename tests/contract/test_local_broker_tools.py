"""The local-Kafka tools: `make kafka-up`, tools/kafka/with-broker.sh and the tests' own
choice of broker, against the real broker and a Docker engine that answers but has no
images (a fake: this machine cannot pull images, and neither can many CI runners)."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socketserver
import subprocess
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler
from pathlib import Path

import pytest

from tests.support.faults import free_port_pair
from tests.support.kafka import KAFKA_TOOLS, container_image, docker_problem, kafka_version

ROOT = KAFKA_TOOLS.parents[1]
MAKE = shutil.which("make") or "/usr/bin/make"
BASH = shutil.which("bash") or "/bin/bash"
FAKE_DOCKER_CLI = """#!/bin/sh
# A Docker engine that answers but has no images and cannot pull any.
case "$1" in
info|version) exit 0 ;;
image) echo "Error: No such image: $3" >&2; exit 1 ;;
pull) echo "Error response from daemon: dial tcp: lookup registry-1.docker.io: no such host" >&2
      exit 1 ;;
esac
exit 1
"""


def _shared_broker_env(kafka_servers: str) -> dict[str, str]:
    # broker.sh on the port of the broker the tests already use: it reuses that broker
    # (not started from its state directory) and never stops it.
    host, _, port = kafka_servers.split(",", maxsplit=1)[0].rpartition(":")
    if host not in {"127.0.0.1", "localhost"}:
        pytest.skip("the tools start brokers on 127.0.0.1 only")
    # As a user's shell runs make, not as `make test` does: a make run inside another
    # one prints "Entering directory" lines that a shell's `make kafka-up` never shows.
    inherited = {"KAFKA_BOOTSTRAP_SERVERS", "MAKELEVEL", "MAKEFLAGS", "MFLAGS", "MAKEOVERRIDES"}
    env = {k: v for k, v in os.environ.items() if k not in inherited}
    return env | {"KAFKA_PORT": port}


def test_one_kafka_version_everywhere() -> None:
    version = kafka_version()
    compose = (ROOT / "docker-compose.yml").read_text()
    assert re.findall(r"image: apache/kafka:(\S+)", compose) == [version]
    assert container_image() == f"apache/kafka:{version}" or "KAFKA_TEST_IMAGE" in os.environ


def test_compose_gives_workers_longer_than_their_shutdown_timeout() -> None:
    compose = (ROOT / "docker-compose.yml").read_text()
    worker = compose.split("\n  worker:\n", 1)[1].split("\n\n", 1)[0]
    timeout = re.search(r"SHUTDOWN_TIMEOUT: \"?(\d+)s", worker)
    grace = re.search(r"stop_grace_period: (\d+)s", worker)
    assert timeout and grace, "the worker service sets SHUTDOWN_TIMEOUT and stop_grace_period"
    assert int(grace.group(1)) > int(timeout.group(1))


def test_make_kafka_up_prints_only_an_export_line_and_needs_no_virtualenv(
    kafka_servers: str,
) -> None:
    env = _shared_broker_env(kafka_servers)
    dry = subprocess.run(
        [MAKE, "-n", "kafka-up"], cwd=ROOT, env=env, capture_output=True, text=True, check=True
    )
    assert dry.stdout.splitlines() == ["tools/kafka/broker.sh up"]  # no venv prerequisite

    done = subprocess.run(
        [MAKE, "kafka-up"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout == f"export KAFKA_BROKERS=127.0.0.1:{env['KAFKA_PORT']}\n"
    evaluated = subprocess.run(
        [BASH, "-c", f'eval "{done.stdout.strip()}" && printf %s "$KAFKA_BROKERS"'],
        capture_output=True,
        text=True,
        check=True,
    )
    assert evaluated.stdout == f"127.0.0.1:{env['KAFKA_PORT']}"


def test_with_broker_treats_docker_without_the_image_as_no_docker(
    kafka_servers: str, tmp_path: Path
) -> None:
    fake = tmp_path / "bin" / "docker"
    fake.parent.mkdir()
    fake.write_text(FAKE_DOCKER_CLI)
    fake.chmod(0o755)
    env = _shared_broker_env(kafka_servers)
    env["PATH"] = f"{fake.parent}:{env['PATH']}"

    done = subprocess.run(
        [str(KAFKA_TOOLS / "with-broker.sh"), "printenv", "KAFKA_BOOTSTRAP_SERVERS"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )

    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"127.0.0.1:{env['KAFKA_PORT']}"
    said = [line for line in done.stderr.splitlines() if line.startswith("with-broker.sh:")]
    assert said == [
        f"with-broker.sh: Docker answers but cannot supply {container_image()}:"
        " using the jar broker instead"
    ]


class _NoImagesEngine(BaseHTTPRequestHandler):
    """The Docker API as an engine without registry access answers it."""

    def do_GET(self) -> None:
        path = re.sub(r"^/v[0-9.]+", "", self.path.split("?")[0])
        if path == "/version":
            self._reply(200, {"ApiVersion": "1.45", "Version": "26.1.5"})
        elif path == "/_ping":
            self._reply(200, "OK")
        elif path.startswith("/images/"):
            self._reply(404, {"message": "No such image"})
        else:
            self._reply(404, {"message": f"unexpected {path}"})

    def do_HEAD(self) -> None:
        self.do_GET()

    def do_POST(self) -> None:
        self._reply(500, {"message": "Get https://registry-1.docker.io/v2/: no such host"})

    def _reply(self, status: int, body: object) -> None:
        data = body.encode() if isinstance(body, str) else json.dumps(body).encode()
        self.send_response(status)
        self.send_header(
            "Content-Type", "text/plain" if isinstance(body, str) else "application/json"
        )
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def address_string(self) -> str:
        return "unix"

    def log_message(self, *_args: object) -> None:
        pass


@pytest.fixture
def docker_without_images(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    sock = tmp_path / "docker.sock"
    server = socketserver.ThreadingUnixStreamServer(str(sock), _NoImagesEngine)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    monkeypatch.setenv("DOCKER_HOST", f"unix://{sock}")
    try:
        yield
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.usefixtures("docker_without_images")
def test_tests_treat_docker_without_the_image_as_no_docker() -> None:
    problem = docker_problem(container_image())
    assert problem is not None
    assert problem.startswith(f"Docker answers but cannot supply {container_image()}")


def test_tests_see_no_docker_when_none_answers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DOCKER_HOST", f"unix://{tmp_path / 'nothing.sock'}")
    assert docker_problem(container_image()) == "no Docker engine answers"


def _broker_pids(state: Path) -> set[int]:
    """The running java processes whose command line names a config under ``state``."""
    pids = set()
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                cmdline = (proc / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if b"kafka.Kafka" in cmdline and any(str(state).encode() in arg for arg in cmdline):
                pids.add(int(proc.name))
    return pids


def _make(target: str, env: dict[str, str], timeout_s: float) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [MAKE, target], cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout_s,
        check=False,
    )  # fmt: skip


def test_kafka_down_without_the_port_stops_the_broker_started_with_one(tmp_path: Path) -> None:
    # `KAFKA_PORT=… make kafka-up`, then `make kafka-down` in another shell: its own
    # state directory, so the shared broker of the other tests is never touched.
    port = free_port_pair()
    env = {k: v for k, v in os.environ.items() if k not in {"KAFKA_PORT", "MAKELEVEL", "MAKEFLAGS"}}
    env["JOBWORKER_KAFKA_STATE"] = str(tmp_path)
    up = _make("kafka-up", env | {"KAFKA_PORT": str(port)}, timeout_s=180)
    assert up.returncode == 0, up.stderr
    [pid] = _broker_pids(tmp_path)
    try:
        other_port = _make("kafka-down", env | {"KAFKA_PORT": str(port + 2)}, timeout_s=60)
        assert other_port.returncode == 0
        assert _broker_pids(tmp_path) == {pid}, "another port's down leaves it running"
        assert f"runs on port {port + 2} (it has one on port(s) {port}:" in other_port.stderr

        down = _make("kafka-down", env, timeout_s=120)

        assert down.returncode == 0, down.stderr
        assert f"stopping Kafka on 127.0.0.1:{port} (pid {pid})" in down.stderr
        assert _broker_pids(tmp_path) == set()
        again = _make("kafka-down", env, timeout_s=60)
        assert again.returncode == 0
        assert f"no broker started from {tmp_path} is running" in again.stderr
    finally:
        for leftover in _broker_pids(tmp_path):
            os.kill(leftover, signal.SIGKILL)
