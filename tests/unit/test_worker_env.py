"""The test harness's child environment: nothing from the developer's shell that would
change what the worker does."""

from __future__ import annotations

import pytest

from tests.support.processes import worker_env


def test_otel_variables_from_the_outer_environment_are_dropped(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4317")
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "console")
    monkeypatch.setenv("WORKER_POOL_SIZE", "55")

    env = worker_env()

    assert not [name for name in env if name.startswith("OTEL_")]
    assert "WORKER_POOL_SIZE" not in env


def test_otel_variables_a_test_asks_for_are_kept(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "console")

    env = worker_env(OTEL_EXPORTER_OTLP_ENDPOINT="http://127.0.0.1:1")

    assert env["OTEL_EXPORTER_OTLP_ENDPOINT"] == "http://127.0.0.1:1"
    assert "OTEL_TRACES_EXPORTER" not in env
