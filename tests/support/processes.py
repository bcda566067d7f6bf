"""The real ``jobworker`` CLI as a child process, for end-to-end and fault tests: start
it, wait on it, and read what its JSON log says."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from tests.support.waiting import wait_until

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def worker_env(**settings: str) -> dict[str, str]:
    """This environment minus every jobworker setting and ``OTEL_*`` variable, plus
    ``settings``: a developer's shell cannot turn tracing (or anything else) on in tests."""
    from jobworker.entrypoints.settings import SETTINGS

    names = {s.name for s in SETTINGS}
    env = {k: v for k, v in os.environ.items() if k not in names and not k.startswith("OTEL_")}
    env["PYTHONPATH"] = str(ROOT)
    return env | {"LOG_FORMAT": "json"} | settings


class WorkerProcess:
    """``python -m jobworker run`` (or another command: ``args``) with its own settings;
    output goes to ``log_path``. ``module`` runs another CLI in jobworker's stead (one
    that wraps it: ``tests.support.hub_probe``)."""

    def __init__(
        self,
        settings: Mapping[str, str],
        log_path: Path,
        args: Sequence[str] = ("run",),
        module: str = "jobworker",
    ) -> None:
        self.settings = dict(settings)
        self.log_path = log_path
        self.args = list(args)
        self.module = module
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> WorkerProcess:
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", self.module, *self.args],
                env=worker_env(**self.settings),
                cwd=ROOT,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        return self

    def signal(self, signum: int = signal.SIGTERM) -> None:
        assert self.process is not None
        self.process.send_signal(signum)

    def kill(self) -> None:
        self.signal(signal.SIGKILL)
        self.wait(10)

    def wait(self, timeout_s: float) -> int:
        assert self.process is not None
        return self.process.wait(timeout=timeout_s)

    def stop(self, timeout_s: float = 60) -> int:
        """SIGTERM, then wait for the graceful exit; returns the exit status."""
        if self.process is None or self.process.poll() is not None:
            return self.process.returncode if self.process else 0
        self.signal(signal.SIGTERM)
        return self.wait(timeout_s)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def ensure_stopped(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)


def wait_while_running(
    condition: Callable[[], object],
    timeout_s: float,
    *workers: WorkerProcess,
    interval_s: float = 0.2,
) -> bool:
    """``wait_until``, but a watched worker that exits meanwhile fails the wait at once
    (with the end of its log): a crashed worker makes no more progress, and waiting out
    the timeout only hides the crash."""

    def check() -> bool:
        for worker in workers:
            if worker.process is not None and worker.process.poll() is not None:
                raise AssertionError(
                    f"a worker exited ({worker.process.returncode}) while the test waited on it:"
                    f"\n{log_tail(worker)}"
                )
        return bool(condition())

    return bool(wait_until(check, timeout_s, interval_s=interval_s))


def log_tail(worker: WorkerProcess, lines: int = 40) -> str:
    return "\n".join(worker.log().splitlines()[-lines:])


def log_events(worker: WorkerProcess) -> list[dict[str, Any]]:
    """The worker's JSON log lines, parsed (other output, like a traceback, is skipped)."""
    events = []
    for line in worker.log().splitlines():
        if line.startswith("{"):
            try:
                events.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return events


def events_named(worker: WorkerProcess, prefix: str) -> list[dict[str, Any]]:
    """Log events whose message starts with ``prefix``."""
    return [e for e in log_events(worker) if str(e.get("event", "")).startswith(prefix)]


def jobs_finished_by(worker: WorkerProcess) -> int:
    return len(events_named(worker, "job finished"))


def assigned_partitions(worker: WorkerProcess) -> set[int]:
    """The partitions the worker owns now, by its last "partitions assigned/revoked" line."""
    owned: set[int] = set()
    for event in log_events(worker):
        if event.get("event") == "partitions assigned":
            owned = {int(p.rsplit("[", 1)[1].rstrip("]")) for p in event["partitions"]}
        elif event.get("event") in {
            "partitions revoked",
            "partitions lost (group membership expired)",
        }:
            owned = set()
    return owned
