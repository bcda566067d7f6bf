"""Shared test settings. Each tier has its own folder and marker (see pyproject)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support.kafka import kafka_bootstrap

# Core and worker-process fixtures, shared by the e2e and faults tiers.
pytest_plugins = ["tests.support.fixtures"]


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # The folder is the tier: a test in tests/contract is a contract test even if its
    # module forgot the marker, so `-m "not contract"` can never run it by accident.
    for item in items:
        for tier in ("integration", "contract", "e2e", "faults"):
            if f"/tests/{tier}/" in str(item.path):
                item.add_marker(tier)


@pytest.fixture(scope="session")
def kafka_servers(pytestconfig: pytest.Config) -> Iterator[str]:
    """A real broker's bootstrap address (env, Docker, the jar broker, or fail on CI /
    skip locally)."""
    reporter = pytestconfig.pluginmanager.get_plugin("terminalreporter")
    capture = pytestconfig.pluginmanager.get_plugin("capturemanager")

    def say(line: str) -> None:
        # Past the capture: which broker the run uses is for the reader to see.
        with capture.global_and_fixture_disabled():
            reporter.write_line(line)

    with kafka_bootstrap(*([say] if reporter and capture else [])) as servers:
        yield servers
