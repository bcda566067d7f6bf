"""LIMITS and the breaker's settings: what parses, what is refused and how it is said."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
from dependency_injector import providers

from jobworker.adapters.executors.http import HttpExecutor
from jobworker.adapters.executors.safe_http import SafeHttpClient
from jobworker.application.engine_config import EngineConfig
from jobworker.domain.errors import ConfigurationError
from jobworker.domain.limits import TargetLimit
from jobworker.domain.model import Job
from jobworker.entrypoints.container import Container, engine_config
from jobworker.entrypoints.settings import Settings
from jobworker.entrypoints.settings.limits import parse_limits

KAFKA_RUN = {
    "KAFKA_BROKERS": "k1:9092",
    "KAFKA_GROUP_ID": "g",
    "GRPC_SERVER_ADDRESS": "core:50051",
}


def test_the_readme_example_parses() -> None:
    assert parse_limits(
        "HTTP=500/s; host:api.example.com=50 concurrent,100/s; IMAGE_RESIZE=8 concurrent"
    ) == (
        TargetLimit("HTTP", per_second=500.0),
        TargetLimit("host:api.example.com", concurrent=50, per_second=100.0),
        TargetLimit("IMAGE_RESIZE", concurrent=8),
    )


def test_spaces_and_case_do_not_matter() -> None:
    assert parse_limits("  http = 500 / S ;HOST:API.Example.COM = 50 Concurrent , 100/s ;; ") == (
        TargetLimit("HTTP", per_second=500.0),
        TargetLimit("host:api.example.com", concurrent=50, per_second=100.0),
    )


def test_a_rate_per_minute_is_kept_per_second() -> None:
    assert parse_limits("SLEEP=30/m; HTTP=1.5/s") == (
        TargetLimit("SLEEP", per_second=0.5),
        TargetLimit("HTTP", per_second=1.5),
    )


def test_nothing_limits_nothing() -> None:
    assert parse_limits("") == ()
    assert parse_limits(" ; ") == ()


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("HTTP 500/s", r"'HTTP 500/s' is not KEY=BOUNDS"),
        ("HTTP=5 parallel", r"'5 parallel' is neither '<N> concurrent' nor '<N>/s'"),
        ("HTTP=", r"'' is neither '<N> concurrent'"),
        ("HTTP=5/h", r"'5/h' is neither"),
        ("HTTP=0/s", r"'HTTP=0/s': a rate must be greater than zero"),
        ("HTTP=0/m", r"a rate must be greater than zero"),
        ("HTTP=-5/s", r"'-5/s' is neither"),
        ("HTTP=0 concurrent", r"'HTTP=0 concurrent': concurrency must be at least 1"),
        ("HTTP=5/s,10/m", r"'HTTP=5/s,10/m' gives two rates"),
        ("HTTP=1 concurrent,2 concurrent", r"gives two concurrency bounds"),
        ("HTTP=5/s; http=6/s", r"^HTTP is limited twice$"),
        ("host:a.example=5/s; HOST:A.example=1/s", r"^host:a.example is limited twice$"),
        ("host:api.example.com:443=5/s", r"'host:api.example.com:443' does not name a host"),
        ("host:api_example.com=5/s", r"does not name a host \(host:api.example.com, no port\)"),
        ("host:=5/s", r"'host:' does not name a host"),
        ("host:https://a.example=5/s", r"does not name a host"),
        ("HTTP-2=5/s", r"'HTTP-2' is neither a job type \(HTTP\) nor host:<name>"),
        ("2HTTP=5/s", r"is neither a job type"),
        ("=5/s", r"'' is neither a job type"),
    ],
)
def test_a_wrong_spec_is_refused_saying_what_is_wrong(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_limits(text)


@pytest.fixture
def http_executor() -> Iterator[HttpExecutor]:
    client = SafeHttpClient(pool_size=1)
    yield HttpExecutor(client)
    client.close()


@pytest.mark.parametrize(
    ("spec", "url"),
    [
        ("host:API.Example.com=1 concurrent", "https://api.EXAMPLE.com:8443/x?y=1"),
        ("host:10.0.0.7=1 concurrent", "http://10.0.0.7/"),
        ("host:[::1]=1 concurrent", "http://[::1]:8080/"),
    ],
)
def test_a_host_limit_names_what_the_http_executor_calls(
    http_executor: HttpExecutor, spec: str, url: str
) -> None:
    [limit] = parse_limits(spec)
    job = Job(id="j", type="HTTP", payload=json.dumps({"url": url}))
    assert http_executor.targets(job) == [limit.key]


def settings(**values: str) -> Settings:
    checked = Settings(KAFKA_RUN | values)
    checked.validate_for_run()
    return checked


def test_limits_default_to_none() -> None:
    assert settings().limits == ()


def test_a_wrong_limits_setting_is_a_configuration_error_naming_limits() -> None:
    with pytest.raises(ConfigurationError, match="a rate must be greater than zero") as caught:
        settings(LIMITS="HTTP=0/s")
    assert caught.value.variable == "LIMITS"
    assert str(caught.value).startswith("LIMITS: ")


def test_the_breaker_failures_may_be_zero_but_not_negative() -> None:
    assert settings(HTTP_BREAKER_FAILURES="0").http_breaker_failures == 0
    assert settings().http_breaker_failures == 5
    with pytest.raises(ConfigurationError) as caught:
        settings(HTTP_BREAKER_FAILURES="-1")
    assert caught.value.variable == "HTTP_BREAKER_FAILURES"


def test_the_breaker_cool_down_is_a_duration() -> None:
    assert settings(HTTP_BREAKER_COOLDOWN="250ms").http_breaker_cooldown == 0.25
    with pytest.raises(ConfigurationError) as caught:
        settings(HTTP_BREAKER_COOLDOWN="soon")
    assert caught.value.variable == "HTTP_BREAKER_COOLDOWN"


def engine_config_of(values: dict[str, str]) -> EngineConfig:
    checked = settings(**values)
    container = Container(
        settings=providers.Object(checked), discover_plugins=providers.Object(False)
    )
    try:
        return engine_config(checked, container.registry())
    finally:
        container.shutdown_resources()


def test_the_engine_is_given_the_limits_and_the_breaker() -> None:
    config = engine_config_of(
        {
            "LIMITS": "SLEEP=2 concurrent; host:a.example=1/s",
            "HTTP_BREAKER_FAILURES": "3",
            "HTTP_BREAKER_COOLDOWN": "2s",
        }
    )
    assert config.target_limits == (
        TargetLimit("SLEEP", concurrent=2),
        TargetLimit("host:a.example", per_second=1.0),
    )
    assert (config.breaker.failures, config.breaker.cooldown_s) == (3, 2.0)


def test_a_job_type_no_executor_runs_is_refused_naming_limits_and_the_known_types() -> None:
    with pytest.raises(ConfigurationError) as caught:
        engine_config_of({"LIMITS": "HTTP=5/s; RESIZE=1 concurrent"})
    assert caught.value.variable == "LIMITS"
    assert str(caught.value) == (
        "LIMITS: no executor runs job type 'RESIZE' (known: HTTP, IMAGE_RESIZE, SLEEP)"
    )
