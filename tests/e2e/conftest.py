"""End-to-end fixtures: the reference Core, worker processes that never outlive a test,
and their logs shown when a test fails."""

from __future__ import annotations

from collections.abc import Callable, Generator, Iterator
from pathlib import Path

import pytest

from adapters.core.process import CoreProcess
from tests.support.e2e import running_core
from tests.support.group import log_tail
from tests.support.processes import WorkerProcess

StartWorker = Callable[[str, dict[str, str]], WorkerProcess]


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item,
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    if report.when == "call":
        item.stash[_CALL_FAILED] = report.failed
    return report


_CALL_FAILED = pytest.StashKey[bool]()


@pytest.fixture
def core(tmp_path: Path) -> Iterator[CoreProcess]:
    with running_core(tmp_path) as core:
        yield core


@pytest.fixture
def start_worker(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[StartWorker]:
    """Start ``python -m entrypoints run`` as ``name``; every one is killed after the test,
    and a failed test prints the end of each worker's log."""
    started: list[tuple[str, WorkerProcess]] = []

    def start(name: str, settings: dict[str, str]) -> WorkerProcess:
        worker = WorkerProcess(settings, tmp_path / f"{name}.log").start()
        started.append((name, worker))
        return worker

    yield start
    for _, worker in started:
        worker.ensure_stopped()
    if request.node.stash.get(_CALL_FAILED, False):
        for name, worker in started:
            print(f"\n----- {name} log (last lines) -----\n{log_tail(worker, 40)}")
