"""HTTP_IDEMPOTENCY_HEADER: which header carries the job id on HTTP requests, or none."""

from __future__ import annotations

import pytest
from dependency_injector import providers

from jobworker.adapters.executors.http import HttpExecutor
from jobworker.domain.errors import ConfigurationError
from jobworker.domain.model import JobType
from jobworker.entrypoints.container import Container
from jobworker.entrypoints.on_first_job import BuiltOnFirstJob
from jobworker.entrypoints.settings import Settings

KAFKA_RUN = {
    "KAFKA_BROKERS": "k1:9092",
    "KAFKA_GROUP_ID": "g",
    "GRPC_SERVER_ADDRESS": "core:50051",
}


def header_setting(**values: str) -> str:
    settings = Settings(KAFKA_RUN | values)
    settings.validate_for_run()
    return settings.http_idempotency_header


def test_the_default_is_idempotency_key() -> None:
    assert header_setting() == "Idempotency-Key"


@pytest.mark.parametrize("value", ["none", "None", " NONE "])
def test_none_turns_it_off(value: str) -> None:
    assert header_setting(HTTP_IDEMPOTENCY_HEADER=value) == ""


@pytest.mark.parametrize("value", ["X-Request-Id", "x-request-id", " X-Request-Id "])
def test_another_header_name_is_kept_as_written(value: str) -> None:
    assert header_setting(HTTP_IDEMPOTENCY_HEADER=value) == value.strip()


@pytest.mark.parametrize("value", ["Idempotency Key", "Idempotency-Key:", "X-Id: 1", "Clé"])
def test_a_value_that_is_no_header_name_is_refused_and_named(value: str) -> None:
    with pytest.raises(ConfigurationError, match="is not a header name") as caught:
        header_setting(HTTP_IDEMPOTENCY_HEADER=value)

    assert caught.value.variable == "HTTP_IDEMPOTENCY_HEADER"
    assert str(caught.value).startswith("HTTP_IDEMPOTENCY_HEADER: ")


@pytest.mark.parametrize("value", ["Host", "content-length", "Authorization"])
def test_a_header_every_request_needs_for_itself_is_refused(value: str) -> None:
    with pytest.raises(ConfigurationError, match="a header HTTP itself needs") as caught:
        header_setting(HTTP_IDEMPOTENCY_HEADER=value)

    assert caught.value.variable == "HTTP_IDEMPOTENCY_HEADER"


@pytest.mark.parametrize(("value", "header"), [("X-Request-Id", "X-Request-Id"), ("none", "")])
def test_the_http_executor_is_built_with_the_setting(value: str, header: str) -> None:
    settings = Settings(KAFKA_RUN | {"HTTP_IDEMPOTENCY_HEADER": value})
    settings.validate_for_run()
    container = Container(settings=providers.Object(settings))
    try:
        registered = container.executors()[JobType.HTTP]
        assert isinstance(registered, BuiltOnFirstJob)
        executor = registered.built()
        assert isinstance(executor, HttpExecutor)
        assert executor.idempotency_header == header
    finally:
        container.shutdown_resources()
