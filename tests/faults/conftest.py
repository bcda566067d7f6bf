"""Fixtures of the fault scenarios: a Core per test, workers that never outlive it."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from adapters.core.process import CoreProcess
from tests.support.e2e import running_core
from tests.support.faults import Report, StartWorker
from tests.support.processes import WorkerProcess


@pytest.fixture
def core(tmp_path: Path) -> Iterator[CoreProcess]:
    with running_core(tmp_path) as running:
        yield running


@pytest.fixture
def start_worker(tmp_path: Path) -> Iterator[StartWorker]:
    """``start_worker(name, settings)``: the CLI as a child process, logging to
    ``<tmp>/<name>.log``; whatever is still running at teardown is killed."""
    started: list[WorkerProcess] = []

    def start(name: str, settings: dict[str, str]) -> WorkerProcess:
        worker = WorkerProcess(settings | {"WORKER_ID": name}, tmp_path / f"{name}.log")
        started.append(worker.start())
        return worker

    yield start
    for worker in started:
        worker.ensure_stopped()


@pytest.fixture
def report(capsys: pytest.CaptureFixture[str]) -> Report:
    """Print a scenario's counts even when pytest captures output."""

    def say(line: str) -> None:
        with capsys.disabled():
            print(f"\n{line}", flush=True)

    return say
