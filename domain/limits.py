"""Limits on what jobs call: per job type or per target (an HTTP host), and the breaker.

A target is named ``<kind>:<name>`` (``host:api.example.com``); a job type by its name
(``HTTP``). These are values only: ``application/admission.py`` enforces them.
"""

from __future__ import annotations

from dataclasses import dataclass

HOST_PREFIX = "host:"


@dataclass(frozen=True, slots=True)
class TargetLimit:
    """At most ``concurrent`` attempts at once and ``per_second`` attempts a second for
    the jobs of ``key`` (a job type, or a target such as ``host:api.example.com``),
    in this worker process. None: no such bound."""

    key: str
    concurrent: int | None = None
    per_second: float | None = None

    def __post_init__(self) -> None:
        if self.concurrent is None and self.per_second is None:
            raise ValueError(f"limit {self.key!r} bounds nothing")
        if self.concurrent is not None and self.concurrent < 1:
            raise ValueError(f"limit {self.key!r}: concurrency must be at least 1")
        if self.per_second is not None and not self.per_second > 0:
            raise ValueError(f"limit {self.key!r}: a rate must be greater than zero")

    def __str__(self) -> str:
        bounds = []
        if self.concurrent is not None:
            bounds.append(f"{self.concurrent} concurrent")
        if self.per_second is not None:
            bounds.append(f"{self.per_second:g}/s")
        return f"{self.key}={','.join(bounds)}"


@dataclass(frozen=True, slots=True)
class BreakerPolicy:
    """A target's breaker opens after ``failures`` failed calls in a row (connection
    errors, timeouts, 5xx) and lets one probe call through after ``cooldown_s``.
    ``failures`` 0: no breaker."""

    failures: int = 5
    cooldown_s: float = 10.0

    def __post_init__(self) -> None:
        if self.failures < 0:
            raise ValueError("breaker failures must not be negative")
        if self.cooldown_s <= 0:
            raise ValueError("a breaker cool-down must be greater than zero")
