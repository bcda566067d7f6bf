"""HTTP and IMAGE_RESIZE executors are built at their first job, their settings checked
at start-up (entrypoints/on_first_job.py)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from dependency_injector import providers

from jobworker.domain.errors import ConfigurationError
from jobworker.domain.model import Job, JobType
from jobworker.entrypoints.container import Container
from jobworker.entrypoints.on_first_job import BuiltOnFirstJob
from jobworker.entrypoints.settings import Settings

KAFKA_RUN = {
    "KAFKA_BROKERS": "k1:9092",
    "KAFKA_GROUP_ID": "g",
    "GRPC_SERVER_ADDRESS": "core:50051",
}


class CountingExecutor:
    def __init__(self) -> None:
        self.jobs: list[str] = []

    def execute(self, job: Job) -> str:
        self.jobs.append(job.id)
        return "{}"


def test_the_executor_is_built_once_at_the_first_job() -> None:
    built: list[CountingExecutor] = []

    def build() -> CountingExecutor:
        built.append(CountingExecutor())
        return built[-1]

    executor = BuiltOnFirstJob(build)
    assert built == []

    executor.execute(Job(id="a", type="T", payload=""))
    executor.execute(Job(id="b", type="T", payload=""))

    assert len(built) == 1
    assert built[0].jobs == ["a", "b"]
    assert executor.built() is built[0]


def test_a_run_loads_neither_requests_nor_pillow_until_a_job_needs_them() -> None:
    code = (
        "import sys\n"
        "from gevent import monkey; monkey.patch_all()\n"
        "from dependency_injector import providers\n"
        "from jobworker.entrypoints.container import Container\n"
        "from jobworker.entrypoints.settings import Settings\n"
        "import jobworker.entrypoints.commands, jobworker.entrypoints.worker\n"
        f"settings = Settings({KAFKA_RUN!r})\n"
        "settings.validate_for_run()\n"
        "container = Container(settings=providers.Object(settings))\n"
        "container.discover_plugins.override(False)\n"
        "assert container.registry().job_types() == ['HTTP', 'IMAGE_RESIZE', 'SLEEP']\n"
        "loaded = [m for m in ('requests', 'urllib3', 'PIL', 'tqdm') if m in sys.modules]\n"
        "assert not loaded, loaded\n"
        "container.shutdown_resources()\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_a_wrong_image_folder_still_stops_the_start(tmp_path: Path) -> None:
    not_a_folder = tmp_path / "file"
    not_a_folder.write_text("")
    settings = Settings(KAFKA_RUN | {"IMAGE_OUTPUT_ROOT": str(not_a_folder)})
    settings.validate_for_run()
    container = Container(settings=providers.Object(settings))
    container.discover_plugins.override(False)
    try:
        with pytest.raises(ConfigurationError) as raised:
            container.registry()
        assert raised.value.variable == "IMAGE_OUTPUT_ROOT"
    finally:
        container.shutdown_resources()


class TargetedExecutor(CountingExecutor):
    def targets(self, job: Job) -> list[str]:
        return [f"host:{job.id}"]


def test_the_wrapper_names_the_built_executors_targets_so_limits_and_breakers_apply() -> None:
    # Admission finds a run's hosts through ``executor.targets``: a wrapper without it
    # let a LIMITS entry for a host go unenforced (seen in the e2e controlled-load test).
    job = Job(id="a", type=JobType.HTTP, payload="{}")

    assert list(BuiltOnFirstJob(TargetedExecutor).targets(job)) == ["host:a"]
    assert list(BuiltOnFirstJob(CountingExecutor).targets(job)) == []
