"""An engine's sizes and limits (EngineConfig), and what its stop left behind (StopReport)."""

from __future__ import annotations

from dataclasses import dataclass, field

from jobworker.application.job_limits import DEFAULT_LIMITS, JobLimits
from jobworker.application.result_delivery import RefusalPolicy
from jobworker.application.retry import RetryPolicy
from jobworker.domain.limits import BreakerPolicy, TargetLimit


@dataclass(frozen=True, slots=True)
class EngineConfig:
    """Sizes and limits of one engine. Defaults suit a small worker."""

    worker_id: str = "worker"
    pool_size: int = 10
    # 0: twice the pool (the settings' default too), so that a slot never waits for a job
    # and a finished job rarely waits for room in the results queue.
    jobs_queue_size: int = 0
    # Intake resumes once the jobs queue has drained to this depth (hysteresis, so a
    # Kafka source is not paused and resumed on every single job).
    jobs_queue_low_water: int | None = None
    results_queue_size: int = 0  # 0: twice the pool
    result_senders: int = 4
    max_job_timeout_s: float = 30.0
    fetch_timeout_s: float = 0.5
    # Larger outputs end the job FAILED: a result Core can never accept (gRPC's message
    # limit) would otherwise be redelivered for ever.
    max_output_bytes: int = 1_048_576
    # What happens to a result the sink refuses for good (see ResultCourier).
    refusals: RefusalPolicy = field(default_factory=RefusalPolicy)
    # The largest job that is run; bigger ones end REJECTED before any executor sees them.
    limits: JobLimits = DEFAULT_LIMITS
    # Results per call to the sink, how long a part-filled batch waits for more, and
    # about how many bytes a batch may carry (under Core's 4 MiB message limit).
    result_batch_size: int = 100
    result_batch_linger_s: float = 0.005
    result_batch_max_bytes: int = 3 * 1024 * 1024
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    # Bounds per job type and target, and each target's circuit breaker (admission.py).
    # The default breaker is off: an engine built by hand calls what it is told to.
    target_limits: tuple[TargetLimit, ...] = ()
    breaker: BreakerPolicy = field(default_factory=lambda: BreakerPolicy(failures=0))

    def __post_init__(self) -> None:
        for name in ("jobs_queue_size", "results_queue_size"):
            if getattr(self, name) == 0:
                object.__setattr__(self, name, 2 * self.pool_size)
        for name in (
            "pool_size",
            "jobs_queue_size",
            "results_queue_size",
            "result_senders",
            "result_batch_size",
            "result_batch_max_bytes",
        ):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1")
        if self.max_job_timeout_s <= 0:
            raise ValueError("max_job_timeout_s must be positive")
        if self.result_batch_linger_s < 0:
            raise ValueError("result_batch_linger_s must not be negative")

    @property
    def low_water(self) -> int:
        if self.jobs_queue_low_water is None:
            return self.jobs_queue_size // 2
        return max(0, min(self.jobs_queue_low_water, self.jobs_queue_size - 1))


@dataclass(frozen=True, slots=True)
class StopReport:
    """What ``stop`` left behind; all zero after a clean drain."""

    jobs_abandoned_in_flight: int
    jobs_not_started: int
    results_not_delivered: int
    # Jobs that were waiting for their next attempt: given back, not waited for.
    jobs_given_back_waiting: int = 0

    @property
    def clean(self) -> bool:
        return not (
            self.jobs_abandoned_in_flight
            or self.jobs_not_started
            or self.results_not_delivered
            or self.jobs_given_back_waiting
        )
