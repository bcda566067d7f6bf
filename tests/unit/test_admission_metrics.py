"""AdmissionMetrics: admission's listener, its labels bounded by what LIMITS names."""

from __future__ import annotations

from prometheus_client import CollectorRegistry

from jobworker.adapters.observability.metrics import AdmissionMetrics, new_registry
from jobworker.application.admission import BreakerState
from jobworker.domain.limits import TargetLimit

LIMITS = (
    TargetLimit("HTTP", per_second=500.0),
    TargetLimit("host:api.example.com", concurrent=50),
)


def value(registry: CollectorRegistry, name: str, **labels: str) -> float | None:
    return registry.get_sample_value(name, labels)


def states(registry: CollectorRegistry, host: str) -> dict[str, float | None]:
    return {
        state: value(registry, "jobworker_breaker_state", host=host, state=state)
        for state in ("closed", "open", "half-open")
    }


def test_a_host_limits_do_not_name_is_labelled_other() -> None:
    registry = new_registry()
    metrics = AdmissionMetrics(registry, LIMITS)
    metrics.parked("host:api.example.com", by_breaker=True)
    metrics.parked("host:a.example", by_breaker=True)
    metrics.parked("host:b.example", by_breaker=True)
    refused = "jobworker_breaker_refused_calls_total"
    assert value(registry, refused, host="host:api.example.com") == 1
    assert value(registry, refused, host="other") == 2
    assert value(registry, refused, host="host:a.example") is None


def test_waits_are_counted_by_limit() -> None:
    registry = new_registry()
    metrics = AdmissionMetrics(registry, LIMITS)
    metrics.parked("HTTP=500/s", by_breaker=False)
    metrics.parked("HTTP=500/s", by_breaker=False)
    assert value(registry, "jobworker_limit_waits_total", limit="HTTP=500/s") == 2


def test_breaker_changes_are_counted_and_the_state_gauge_is_one_hot() -> None:
    registry = new_registry()
    metrics = AdmissionMetrics(registry, LIMITS)
    for state in (BreakerState.OPEN, BreakerState.HALF_OPEN, BreakerState.OPEN):
        metrics.breaker_changed("host:api.example.com", state)
    metrics.breaker_changed("host:a.example", BreakerState.OPEN)
    metrics.breaker_changed("host:b.example", BreakerState.OPEN)
    metrics.breaker_changed("host:b.example", BreakerState.HALF_OPEN)

    transitions = "jobworker_breaker_transitions_total"
    named = "host:api.example.com"
    assert value(registry, transitions, host=named, state="open") == 2
    assert value(registry, transitions, host=named, state="half-open") == 1
    assert value(registry, transitions, host=named, state="closed") is None
    assert value(registry, transitions, host="other", state="open") == 2
    assert value(registry, transitions, host="other", state="half-open") == 1
    assert states(registry, named) == {"closed": 0, "open": 1, "half-open": 0}
    # Every other host shares one label: the last change of any of them shows.
    assert states(registry, "other") == {"closed": 0, "open": 0, "half-open": 1}
