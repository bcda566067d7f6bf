"""The resource every span carries: ``WORKER_ID`` names the instance, unless the
operator names it in ``OTEL_RESOURCE_ATTRIBUTES``."""

from __future__ import annotations

import pytest
from opentelemetry.sdk.resources import SERVICE_INSTANCE_ID, SERVICE_NAME

from jobworker.adapters.tracing.runtime import _resource


@pytest.fixture(autouse=True)
def _no_otel_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("OTEL_RESOURCE_ATTRIBUTES", "OTEL_SERVICE_NAME"):
        monkeypatch.delenv(name, raising=False)


def test_worker_id_is_the_service_instance_id() -> None:
    attributes = _resource("worker-7", "1.2.3", "jobworker").attributes

    assert attributes[SERVICE_INSTANCE_ID] == "worker-7"
    assert attributes["service.version"] == "1.2.3"
    assert attributes[SERVICE_NAME] == "jobworker"


def test_an_instance_id_in_otel_resource_attributes_wins(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_RESOURCE_ATTRIBUTES", "service.instance.id=pod-a,deployment=x")
    monkeypatch.setenv("OTEL_SERVICE_NAME", "billing-worker")

    attributes = _resource("worker-7", "1.2.3", "jobworker").attributes

    assert attributes[SERVICE_INSTANCE_ID] == "pod-a"
    assert attributes["deployment"] == "x"
    assert attributes[SERVICE_NAME] == "billing-worker"
