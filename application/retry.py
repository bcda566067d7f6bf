"""Backoff for retried jobs: exponential, capped, with full jitter."""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass

# Exponents past this already give delays far beyond any sensible cap; stopping here
# keeps ``base * 2**n`` a finite float however long an outage lasts.
_MAX_BACKOFF_EXPONENT = 32


def backoff_ceiling(attempt: int, base_s: float, cap_s: float) -> float:
    """The exponential step after failed attempt ``attempt`` (1-based), capped."""
    exponent = min(max(attempt - 1, 0), _MAX_BACKOFF_EXPONENT)
    return min(cap_s, base_s * float(2**exponent))


def full_jitter_delay(
    attempt: int,
    base_s: float,
    cap_s: float,
    uniform: Callable[[float, float], float] = random.uniform,
) -> float:
    """Seconds to wait after failed attempt ``attempt``: uniform in [0, ceiling].

    Spreading retries over the whole window keeps many callers that failed together
    (jobs against one flaky service, senders against a Core coming back) apart.
    """
    return uniform(0.0, backoff_ceiling(attempt, base_s, cap_s))


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How often and how patiently a job failing with a retryable error is retried.

    ``max_attempts`` counts the first try: 1 means never retry. Delays use "full jitter"
    (uniform between 0 and the exponential step) so that jobs failing together against
    one flaky dependency do not come back in lockstep.
    """

    max_attempts: int = 3
    backoff_base_s: float = 0.5
    backoff_max_s: float = 30.0

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        if self.backoff_base_s < 0 or self.backoff_max_s < 0:
            raise ValueError("backoff durations must not be negative")

    def should_retry(self, attempt: int) -> bool:
        return attempt < self.max_attempts

    def delay_s(self, attempt: int, rng: random.Random | None = None) -> float:
        """The pause before attempt ``attempt + 1``, after ``attempt`` failed."""
        uniform = (rng or random).uniform
        return full_jitter_delay(attempt, self.backoff_base_s, self.backoff_max_s, uniform)
