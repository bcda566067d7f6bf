"""Taking each finished result to the sink, and settling its job once something keeps it.

A job is settled when its result is safe: accepted by the sink, or, when the sink
refuses it for good, kept by the refused-result store (a results dead-letter topic).
Only then is the source told (``ack``). A result that has to wait (a refusal to try
again, a store that is down) waits on a greenlet of its own, never on a sender: one
result the sink will not take must not hold up the others.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

import gevent
from gevent.event import Event
from gevent.lock import BoundedSemaphore

from jobworker.application.retry import backoff_ceiling
from jobworker.domain.errors import (
    BatchesUnsupported,
    ResultNotDelivered,
    ResultRefused,
    ResultTooLarge,
)
from jobworker.domain.model import Job, JobResult, JobStatus
from jobworker.domain.ports import JobObserver, RefusedResultStore, ResultSink

logger = logging.getLogger(__name__)

# A reason that replaces a result too large to send must itself fit anywhere.
_MAX_TOO_LARGE_REASON_CHARS = 1000


@dataclass(frozen=True, slots=True)
class RefusalPolicy:
    """What to do with a result the sink refuses for good.

    ``dead_letter``: after ``attempts`` offers, the result goes to the refused-result
    store and its job is acked. Otherwise it is held and offered again for ever: its
    partition stops committing, which some users prefer to a dead letter. Pauses
    between offers grow from ``retry_base_s`` to ``retry_max_s``.
    """

    dead_letter: bool = True
    attempts: int = 3
    retry_base_s: float = 1.0
    retry_max_s: float = 60.0

    def __post_init__(self) -> None:
        if self.attempts < 1:
            raise ValueError("attempts must be at least 1")
        if self.retry_base_s <= 0 or self.retry_max_s < self.retry_base_s:
            raise ValueError("retry pauses must be positive, the longest at least the first")


Settle = Callable[[Job, bool], None]
"""Called once per job when its result is settled: (job, kept) — kept False if abandoned."""


@dataclass(slots=True)
class _Delivery:
    job: Job
    result: JobResult
    stage: Literal["sink", "store"] = "sink"
    refusals: int = 0  # final answers from the sink
    failures: int = 0  # other failed tries (sink closed, store down, a bug)
    refusal: ResultRefused | None = None


class ResultCourier:
    """Delivers results for the engine's senders (see module docstring).

    ``deliver`` returns once the result is settled or parked. At most ``max_parked``
    results wait at once; beyond that ``deliver`` blocks, which stalls the senders and,
    through the bounded queues, intake: a sink refusing everything is backpressure,
    not unbounded memory.
    """

    def __init__(
        self,
        sink: ResultSink,
        store: RefusedResultStore | None,
        policy: RefusalPolicy,
        observer: JobObserver,
        settle: Settle,
        max_parked: int,
    ) -> None:
        self._sink = sink
        self._store = store
        self._policy = policy
        self._observer = observer
        self._settle = settle
        self._parking = BoundedSemaphore(max(1, max_parked))
        self._parked: set[gevent.Greenlet[..., object]] = set()
        self._stopping = Event()
        # Until the sink says it takes one result at a time. A sink written before the
        # port had send_batch keeps working, one result at a time.
        self._batches = callable(getattr(sink, "send_batch", None))
        self.refusals = 0  # final answers from the sink, each counted (metrics)
        self.dead_lettered = 0  # results the refused-result store kept (metrics)
        self.abandoned = 0  # results given up at stop: their jobs stay not done

    @property
    def takes_batches(self) -> bool:
        """False once the sink said it takes one result at a time."""
        return self._batches

    @property
    def parked(self) -> int:
        """Results waiting for another try."""
        return len(self._parked)

    def deliver_batch(self, items: Sequence[tuple[Job, JobResult]]) -> None:
        """``deliver`` for many results: one call to the sink when it takes batches.

        A batch the sink does not accept whole (a refusal, a result too large, a sink
        that takes one result at a time) is narrowed down: its results are delivered one
        by one, so one result the sink refuses never holds back the others.
        """
        pending = deque(items)
        try:
            if len(pending) > 1 and self._batches and self._sent_whole(pending):
                while pending:
                    job, result = pending.popleft()
                    self._observer.result_delivered(result)
                    self._settle(job, True)
                return
            while pending:
                job, result = pending.popleft()
                self.deliver(job, result)  # settles (or abandons) its own result
        except BaseException:
            for job, result in pending:
                self._abandon(_Delivery(job, result))
            raise

    def _sent_whole(self, items: Sequence[tuple[Job, JobResult]]) -> bool:
        try:
            self._sink.send_batch([result for _, result in items])
        except BatchesUnsupported:
            self._batches = False
            return False
        except Exception as error:
            logger.warning(
                "the sink did not take a batch whole; sending its results one at a time",
                exc_info=not isinstance(error, ResultNotDelivered),
                extra={"results": len(items), "reason": str(error)},
            )
            return False
        return True

    def deliver(self, job: Job, result: JobResult) -> None:
        delivery = _Delivery(job, result)
        try:
            delay = self._advance(delivery)
            if delay is None:
                return
            self._parking.acquire()
        except BaseException:
            # The sender was killed (a stop ran out of time) before the result settled.
            self._abandon(delivery)
            raise
        greenlet = gevent.spawn(self._wait_and_retry, delivery, delay)
        self._parked.add(greenlet)
        greenlet.link(self._unpark)

    def stop_waiting(self) -> None:
        """From now on, a parked result gets one last try at once instead of waiting.

        Refused results go to the store then under the dead-letter policy (they would
        after their last offer anyway); what still fails is abandoned, its job not
        acked, so the source hands it out again.
        """
        self._stopping.set()

    def flush(self, timeout_s: float) -> None:
        """``stop_waiting``, then wait up to ``timeout_s`` for parked results to settle."""
        self.stop_waiting()
        gevent.joinall(list(self._parked), timeout=timeout_s)
        left = list(self._parked)
        if left:
            gevent.killall(left, block=True, timeout=1)

    # -- one step at a time -----------------------------------------------------------

    def _wait_and_retry(self, delivery: _Delivery, delay: float) -> None:
        settled = False
        try:
            next_delay: float | None = delay
            while next_delay is not None:
                self._stopping.wait(next_delay)  # at once when stopping
                if self._stopping.is_set():
                    self._prepare_last_try(delivery)
                next_delay = self._advance(delivery)
                if next_delay is not None and self._stopping.is_set():
                    break  # the last try failed too
            settled = next_delay is None
        finally:
            if not settled:
                self._abandon(delivery)

    def _abandon(self, delivery: _Delivery) -> None:
        self.abandoned += 1
        logger.warning(
            "result not delivered before stop; its job is handed out again",
            extra={"job_id": delivery.job.id, "stage": delivery.stage},
        )
        self._settle(delivery.job, False)

    @property
    def _dead_letters_refusals(self) -> bool:
        return self._policy.dead_letter and self._store is not None

    def _prepare_last_try(self, delivery: _Delivery) -> None:
        if delivery.refusal is not None and self._dead_letters_refusals:
            delivery.stage = "store"

    def _unpark(self, greenlet: gevent.Greenlet[..., object]) -> None:
        self._parked.discard(greenlet)
        self._parking.release()

    def _advance(self, delivery: _Delivery) -> float | None:
        """One try at the delivery's stage; None once settled, else seconds to wait."""
        if delivery.stage == "store":
            return self._try_store(delivery)
        return self._try_sink(delivery)

    def _try_sink(self, delivery: _Delivery) -> float | None:
        try:
            self._send(delivery)
        except ResultRefused as refusal:
            return self._refused(delivery, refusal)
        except Exception as error:
            delivery.failures += 1
            delay = self._delay(delivery.failures)
            logger.error(
                "result not accepted by the sink; trying again",
                exc_info=not isinstance(error, ResultNotDelivered),
                extra={
                    "job_id": delivery.job.id,
                    "reason": str(error),
                    "attempt": delivery.failures,
                    "retry_in_s": delay,
                },
            )
            return delay
        self._observer.result_delivered(delivery.result)
        self._settle(delivery.job, True)
        return None

    def _send(self, delivery: _Delivery) -> None:
        try:
            self._sink.send(delivery.result)
        except ResultTooLarge as too_large:
            # Decided once: the job ends FAILED with a reason that fits, and that is
            # what the sink gets. Still too large is a refusal like any other.
            delivery.result = _failed_for_size(delivery.result, too_large)
            logger.error(
                "result too large for the sink; sending it as FAILED without its output",
                extra={"job_id": delivery.job.id, "reason": str(too_large)},
            )
            try:
                self._sink.send(delivery.result)
            except ResultTooLarge as still:
                raise ResultRefused(str(still), "TOO_LARGE", str(still)) from still

    def _refused(self, delivery: _Delivery, refusal: ResultRefused) -> float | None:
        self.refusals += 1
        delivery.refusals += 1
        delivery.refusal = refusal
        policy = self._policy
        to_store = self._dead_letters_refusals
        if to_store and delivery.refusals >= policy.attempts:
            delivery.stage = "store"
            return self._try_store(delivery)
        delay = self._delay(delivery.refusals)
        logger.warning(
            "the sink refused a result; offering it again",
            extra={
                "job_id": delivery.job.id,
                "code": refusal.code,
                "details": refusal.details,
                "offer": delivery.refusals,
                "offers_before_dead_letter": policy.attempts if to_store else None,
                "retry_in_s": delay,
            },
        )
        return delay

    def _try_store(self, delivery: _Delivery) -> float | None:
        assert self._store is not None and delivery.refusal is not None
        refusal = delivery.refusal
        try:
            self._store.store(delivery.job, delivery.result, refusal)
        except Exception as error:
            delivery.failures += 1
            delay = self._delay(delivery.failures)
            logger.error(
                "cannot store a refused result; its job stays not done, trying again",
                exc_info=not isinstance(error, ResultNotDelivered),
                extra={"job_id": delivery.job.id, "reason": str(error), "retry_in_s": delay},
            )
            return delay
        self.dead_lettered += 1
        logger.error(
            "result refused for good: dead-lettered, job acked",
            extra={
                "job_id": delivery.job.id,
                "status": delivery.result.status.value,
                "code": refusal.code,
                "details": refusal.details,
                "offers": delivery.refusals,
            },
        )
        self._settle(delivery.job, True)
        return None

    def _delay(self, attempt: int) -> float:
        return backoff_ceiling(attempt, self._policy.retry_base_s, self._policy.retry_max_s)


def _failed_for_size(result: JobResult, too_large: ResultTooLarge) -> JobResult:
    reason = (
        f"result of {too_large.size} bytes is above the {too_large.limit}-byte limit of the"
        f" result sink; its output was dropped (the job had ended {result.status.value})"
    )
    return result._replace(
        status=JobStatus.FAILED, output="", error=reason[:_MAX_TOO_LARGE_REASON_CHARS]
    )


def approximate_bytes(result: JobResult) -> int:
    """About how large ``result`` is on the wire: enough to bound a batch, cheaply."""
    size = len(result.output) + len(result.error) + len(result.job_id) + 64
    if result.metadata:  # most results have none: no generator for them
        size += sum(len(key) + len(value) + 4 for key, value in result.metadata.items())
    return size
