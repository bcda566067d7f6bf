"""Turning tracing on from the standard ``OTEL_*`` variables, or leaving it off.

Off unless a variable asks for spans to go somewhere: ``OTEL_TRACES_EXPORTER`` (other
than ``none``), ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`` or ``OTEL_EXPORTER_OTLP_ENDPOINT``.
``OTEL_SDK_DISABLED=true`` keeps it off whatever else is set. Off means nothing of the
SDK is imported or set up, and no observer or sink wrapper is added: no cost per job.

When on, the SDK reads the rest of the standard variables itself (service name and
resource attributes, sampler, OTLP endpoint, headers, TLS, timeouts, batching).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from typing import Any

from jobworker.domain.errors import ConfigurationError

SDK_DISABLED = "OTEL_SDK_DISABLED"
TRACES_EXPORTER = "OTEL_TRACES_EXPORTER"
OTLP_ENDPOINTS = ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT")
OTLP_PROTOCOLS = ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "OTEL_EXPORTER_OTLP_PROTOCOL")
TRACES_SAMPLER = "OTEL_TRACES_SAMPLER"
TRACES_SAMPLER_ARG = "OTEL_TRACES_SAMPLER_ARG"
# The SDK's built-in samplers (its own list is private). An unknown name would only
# be logged by the SDK and replaced by the default: here it stops start-up instead.
SAMPLERS = frozenset(
    {
        "always_on",
        "always_off",
        "traceidratio",
        "parentbased_always_on",
        "parentbased_always_off",
        "parentbased_traceidratio",
    }
)
# Exporter names as the SDK's entry points spell them; "otlp" means OTLP over gRPC,
# the one OTLP transport this package depends on.
_EXPORTER_ALIASES = {"otlp": "otlp_proto_grpc"}
DEFAULT_SERVICE_NAME = "jobworker"


@dataclass(frozen=True)
class TracingPlan:
    """What the environment asks for: which exporters, by entry-point name."""

    exporters: tuple[str, ...] = field(default_factory=tuple)


def tracing_plan(environ: Mapping[str, str]) -> TracingPlan | None:
    """The exporters the ``OTEL_*`` variables in ``environ`` ask for; None when off.

    Raises ``ConfigurationError`` naming the variable when one is malformed.
    """
    if environ.get(SDK_DISABLED, "").strip().lower() == "true":
        return None
    names = [n.strip().lower() for n in environ.get(TRACES_EXPORTER, "").split(",") if n.strip()]
    if not names:
        if not any(environ.get(name, "").strip() for name in OTLP_ENDPOINTS):
            return None
        names = ["otlp"]
    if "none" in names:
        return None
    _check_sampler(environ)
    exporters = tuple(_EXPORTER_ALIASES.get(name, name) for name in names)
    if "otlp_proto_grpc" in exporters:
        _check_protocol(environ)
    known = {point.name for point in entry_points(group="opentelemetry_traces_exporter")}
    for name in exporters:
        if name not in known:
            choices = ", ".join(sorted({"otlp", "none", *known}))
            raise ConfigurationError(
                TRACES_EXPORTER, f"unknown span exporter {name!r}; this install has {choices}"
            )
    return TracingPlan(exporters)


def _check_sampler(environ: Mapping[str, str]) -> None:
    sampler = environ.get(TRACES_SAMPLER, "").strip().lower()
    if sampler and sampler not in SAMPLERS:
        raise ConfigurationError(
            TRACES_SAMPLER, f"unknown sampler {sampler!r}; one of {', '.join(sorted(SAMPLERS))}"
        )
    if sampler.endswith("traceidratio") and environ.get(TRACES_SAMPLER_ARG, "").strip():
        text = environ[TRACES_SAMPLER_ARG].strip()
        try:
            ratio = float(text)
        except ValueError:
            ratio = -1.0
        if not 0.0 <= ratio <= 1.0:
            raise ConfigurationError(
                TRACES_SAMPLER_ARG, f"{text!r} is not a sampling ratio between 0 and 1"
            )


def _check_protocol(environ: Mapping[str, str]) -> None:
    for name in OTLP_PROTOCOLS:
        protocol = environ.get(name, "").strip().lower()
        if protocol:
            if protocol != "grpc":
                raise ConfigurationError(
                    name, f"{protocol!r} is not supported: this worker exports OTLP over grpc"
                )
            return


def start_tracing(worker_id: str, version: str, environ: Mapping[str, str] | None = None) -> Any:
    """A started ``Tracing`` when the environment asks for it, else None.

    Installs the global tracer provider and the grpc and requests instrumentations, so
    it must run before the first gRPC channel to Core is opened.
    """
    plan = tracing_plan(os.environ if environ is None else environ)
    if plan is None:
        return None
    # Imported here: with tracing off, the SDK is never loaded.
    from jobworker.adapters.tracing.runtime import Tracing  # noqa: PLC0415

    return Tracing.start(plan.exporters, worker_id, version, DEFAULT_SERVICE_NAME)
