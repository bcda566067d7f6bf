"""A signal during start-up (Kafka not answering, Core not answering) stops the worker at
once with exit 0 and one line saying so: no job was taken, so none can be lost.

No broker is needed: what is tested is a broker or Core that does not answer."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from tests.support.processes import free_port, wait_until, worker_env

pytestmark = pytest.mark.integration

# "At once" against "when the wait it was in ends": the waits here last 30 s (Kafka's
# bootstrap) and 60 s (CORE_START_TIMEOUT), so a worker that reacts to the signal stops
# far inside this bound on any machine, and one that waits does not. The reaction takes
# 0.6-0.9 s on a quiet machine (measured to the last line, see signal_during); that
# figure is not the verdict, because a loaded machine stretches it.
EXIT_WITHIN_S = 10.0
HUNG_AFTER_S = 30.0
STOPPED_LINE = "stopped before starting; no job was taken"


@pytest.fixture
def silent_broker() -> Iterator[str]:
    """An address that takes connections and never answers (a broker hung, or a
    firewall that lets the handshake through): kafka-python waits on its first request."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(64)
        yield f"127.0.0.1:{listener.getsockname()[1]}"


def start_worker(tmp_path: Path, settings: dict[str, str], *args: str) -> subprocess.Popen[str]:
    log = (tmp_path / "worker.log").open("w")
    with log:
        return subprocess.Popen(
            [sys.executable, "-m", "jobworker", "run", *args],
            env=worker_env(**settings),
            cwd=tmp_path,
            stdout=log,
            stderr=subprocess.STDOUT,
            text=True,
        )


def signal_during(
    tmp_path: Path,
    worker: subprocess.Popen[str],
    waiting_line: str,
    signum: int,
    processes: int = 1,
) -> tuple[int, float, str]:
    """Waits for ``waiting_line`` (from each of ``processes``) and 1 s more, then sends
    ``signum``: (exit status, seconds from the signal to the process's last log line,
    the log).

    The last line, not the exit: the worker's reaction is what it answers for; the
    interpreter's teardown after it is the machine's speed, and an exit that hangs
    still fails here, once the generous wait for it runs out."""
    log = tmp_path / "worker.log"

    def waiting() -> bool:
        assert worker.poll() is None, log.read_text()
        return log.read_text().count(waiting_line) >= processes

    try:
        assert wait_until(waiting, 30), log.read_text()
        # Not a synchronisation: the signal is to come well into the wait (the issue's
        # "3 s into start-up"), not the instant it begins; later is no easier.
        time.sleep(1.0)  # on purpose: into the wait, see above
        assert worker.poll() is None, log.read_text()
        sent = datetime.now(UTC)
        worker.send_signal(signum)
        try:
            status = worker.wait(timeout=HUNG_AFTER_S)
        except subprocess.TimeoutExpired:
            pytest.fail(f"still running {HUNG_AFTER_S} s after the signal:\n{log.read_text()}")
        text = log.read_text()
        return status, (last_line_at(text) - sent).total_seconds(), text
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.wait(10)


def last_line_at(text: str) -> datetime:
    [*_, last] = (json.loads(line) for line in text.splitlines() if line.startswith("{"))
    return datetime.fromisoformat(last["timestamp"])


def assert_stopped_before_starting(status: int, took_s: float, text: str, signum: int) -> None:
    assert status == 0, text
    assert took_s < EXIT_WITHIN_S, f"{took_s:.2f} s after the signal\n{text}"
    assert "Traceback" not in text
    events = [json.loads(line) for line in text.splitlines() if line.startswith("{")]
    stopped = [e for e in events if e["event"] == STOPPED_LINE]
    assert [(e["level"], e["signal"]) for e in stopped] == [
        ("info", signal.Signals(signum).name)
    ], text
    # Nothing louder than info: a stop before starting is no problem to report.
    assert [e for e in events if e["level"] != "info"] == [], text
    assert not any("finishing in-flight jobs" in e["event"] for e in events), text


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_while_kafka_refuses_connections_exits_0_at_once(
    tmp_path: Path, signum: int
) -> None:
    settings = {
        "KAFKA_BROKERS": f"127.0.0.1:{free_port()}",  # nothing listens there
        "KAFKA_GROUP_ID": "g",
        "RESULT_SINK": "file",
        "RESULT_FILE": "-",
    }
    worker = start_worker(tmp_path, settings)

    status, took_s, text = signal_during(tmp_path, worker, "connecting to Kafka", signum)

    assert_stopped_before_starting(status, took_s, text, signum)
    assert not (tmp_path / "data").exists()


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_while_kafka_does_not_answer_exits_0_at_once(
    tmp_path: Path, silent_broker: str, signum: int
) -> None:
    settings = {
        "KAFKA_BROKERS": silent_broker,
        "KAFKA_GROUP_ID": "g",
        "GRPC_SERVER_ADDRESS": f"127.0.0.1:{free_port()}",
        "CORE_START_TIMEOUT": "0",  # straight to Kafka, with the gRPC sink made
    }
    worker = start_worker(tmp_path, settings)

    status, took_s, text = signal_during(tmp_path, worker, "connecting to Kafka", signum)

    assert_stopped_before_starting(status, took_s, text, signum)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_while_waiting_for_core_exits_0_at_once(tmp_path: Path, signum: int) -> None:
    jobs = tmp_path / "jobs.jsonl"
    jobs.write_text(json.dumps({"id": "j", "type": "SLEEP", "payload": {"ms": 1}}) + "\n")
    settings = {
        "JOB_SOURCE": "file",
        "JOB_FILE": str(jobs),
        "GRPC_SERVER_ADDRESS": f"127.0.0.1:{free_port()}",  # nothing listens there
        "CORE_START_TIMEOUT": "60s",
    }
    worker = start_worker(tmp_path, settings)

    status, took_s, text = signal_during(tmp_path, worker, "waiting for Core", signum)

    assert_stopped_before_starting(status, took_s, text, signum)
    assert '"job finished"' not in text


def test_processes_stop_at_once_while_kafka_does_not_answer(
    tmp_path: Path, silent_broker: str
) -> None:
    settings = {
        "KAFKA_BROKERS": silent_broker,
        "KAFKA_GROUP_ID": "g",
        "GRPC_SERVER_ADDRESS": f"127.0.0.1:{free_port()}",
        "CORE_START_TIMEOUT": "0",
    }
    supervisor = start_worker(tmp_path, settings, "--processes", "2")

    status, took_s, text = signal_during(
        tmp_path, supervisor, "connecting to Kafka", signal.SIGTERM, processes=2
    )

    assert status == 0, text
    assert took_s < EXIT_WITHIN_S, f"{took_s:.2f} s after the signal\n{text}"
    assert "Traceback" not in text
    events = [json.loads(line) for line in text.splitlines() if line.startswith("{")]
    assert len([e for e in events if e["event"] == STOPPED_LINE]) == 2, text
    [stopped] = [e for e in events if e["event"] == "supervisor stopped"]
    assert stopped["exit_status"] == 0
    assert set(stopped["children"].values()) == {"exit code 0"}


def test_processes_warn_of_a_misspelt_variable_once(tmp_path: Path, silent_broker: str) -> None:
    # The children read the same environment as the supervisor, which already said it.
    settings = {
        "KAFKA_BROKERS": silent_broker,
        "KAFKA_GROUP_ID": "g",
        "GRPC_SERVER_ADDRESS": f"127.0.0.1:{free_port()}",
        "CORE_START_TIMEOUT": "0",
        "WORKER_POOLSIZE": "4",
    }
    supervisor = start_worker(tmp_path, settings, "--processes", "2")

    status, _, text = signal_during(
        tmp_path, supervisor, "connecting to Kafka", signal.SIGTERM, processes=2
    )

    assert status == 0, text
    assert text.count("WORKER_POOLSIZE is not a setting; did you mean WORKER_POOL_SIZE?") == 1, text
