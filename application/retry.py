"""Backoff for retried jobs: exponential, capped, with full jitter."""

from __future__ import annotations

import random
from dataclasses import dataclass


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
        step = min(self.backoff_max_s, self.backoff_base_s * 2 ** (attempt - 1))
        return (rng or random).uniform(0, step)
