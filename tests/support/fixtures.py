"""Fixtures of the tiers that run worker processes (e2e, faults): the reference Core,
workers that never outlive a test and whose logs a failed test shows, and a way to
print a scenario's figures past pytest's capture. Registered in tests/conftest.py."""

from __future__ import annotations

from collections.abc import Callable, Generator, Iterator
from pathlib import Path

import pytest

from jobworker.adapters.core.process import CoreProcess
from tests.support.e2e import running_core
from tests.support.processes import WorkerProcess, log_tail

StartWorker = Callable[[str, dict[str, str]], WorkerProcess]
"""The ``start_worker`` fixture: ``start_worker(name, settings)``."""
Report = Callable[[str], None]
"""The ``report`` fixture: prints a scenario's line past pytest's capture."""

_CALL_FAILED = pytest.StashKey[bool]()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item,
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    if report.when == "call":
        item.stash[_CALL_FAILED] = report.failed
    return report


@pytest.fixture
def core(tmp_path: Path) -> Iterator[CoreProcess]:
    with running_core(tmp_path) as running:
        yield running


@pytest.fixture
def start_worker(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[StartWorker]:
    """``start_worker(name, settings)``: ``python -m jobworker run`` with ``WORKER_ID``
    set to ``name``, logging to ``<tmp>/<name>.log``. Every one is killed after the test,
    and a failed test prints the end of each worker's log."""
    started: list[tuple[str, WorkerProcess]] = []

    def start(name: str, settings: dict[str, str]) -> WorkerProcess:
        worker = WorkerProcess(settings | {"WORKER_ID": name}, tmp_path / f"{name}.log")
        started.append((name, worker.start()))
        return worker

    yield start
    for _, worker in started:
        worker.ensure_stopped()
    if request.node.stash.get(_CALL_FAILED, False):
        for name, worker in started:
            print(f"\n----- {name} log (last lines) -----\n{log_tail(worker)}")


@pytest.fixture
def report(capsys: pytest.CaptureFixture[str]) -> Report:
    """Print a scenario's counts even when pytest captures output."""

    def say(line: str) -> None:
        with capsys.disabled():
            print(f"\n{line}", flush=True)

    return say
