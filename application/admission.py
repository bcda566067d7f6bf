"""Whether a job's next attempt may start now: limits per job type and target, and a
circuit breaker per target (an HTTP host).

A run that may not start yet is *parked* here, holding no pool slot, in the FIFO of the
gate that holds it; a gate that frees room (an attempt ends, a token comes, a breaker's
cool-down ends) takes its room on behalf of its first waiter and hands the run back to
the engine (``wake``). A parked run's deadline still holds: at it, the run leaves the
queue and the engine ends it TIMED_OUT naming the gate (``expire``). Everything here is
per worker process, and runs on the gevent hub's one thread.
"""

from __future__ import annotations

import contextlib
import enum
import logging
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from typing import Any, Protocol

import gevent

from jobworker.application.run_job import JobRun
from jobworker.domain.limits import HOST_PREFIX, BreakerPolicy, TargetLimit

logger = logging.getLogger(__name__)


_NO_GATES: list[Any] = []  # shared, never changed: a run nothing limits


class BreakerState(enum.StrEnum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half-open"


class AdmissionListener(Protocol):
    """Hears what admission does (metrics implement it). Must not raise or block."""

    def parked(self, gate: str, by_breaker: bool) -> None:
        """A run waits behind ``gate`` (a limit's key, or a breaker's target)."""
        ...

    def breaker_changed(self, target: str, state: BreakerState) -> None: ...


class _Gate:
    """What one key lets through: attempts at once, attempts a second, or a breaker."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.waiters: deque[JobRun] = deque()
        self.timer: gevent.Greenlet[..., object] | None = None

    def has_room(self, now: float) -> bool:
        raise NotImplementedError

    def take(self, now: float, run: JobRun) -> None:
        raise NotImplementedError

    def give(self, run: JobRun, used: bool) -> None:
        """Give back what ``take`` took; ``used``: an attempt ran with it."""

    def next_room_at(self, now: float) -> float | None:
        """When room comes by the clock alone (a rate's next token); None: by events."""
        return None

    def why(self) -> str:
        return f"limit {self.name}"


class _Limit(_Gate):
    def __init__(self, limit: TargetLimit, clock: Callable[[], float]) -> None:
        super().__init__(str(limit))
        self.concurrent = limit.concurrent
        self.in_use = 0
        self.per_second = limit.per_second
        # A tenth of a second's worth of burst at most, at least one call.
        self.capacity = max(1.0, (limit.per_second or 0) / 10)
        self.tokens = self.capacity
        self.refilled_at = clock()

    def _refill(self, now: float) -> None:
        if self.per_second is not None:
            self.tokens = min(
                self.capacity, self.tokens + (now - self.refilled_at) * self.per_second
            )
            self.refilled_at = now

    def has_room(self, now: float) -> bool:
        self._refill(now)
        if self.concurrent is not None and self.in_use >= self.concurrent:
            return False
        return self.per_second is None or self.tokens >= 1.0

    def take(self, now: float, run: JobRun) -> None:
        self._refill(now)
        self.in_use += 1
        if self.per_second is not None:
            self.tokens -= 1.0

    def give(self, run: JobRun, used: bool) -> None:
        self.in_use -= 1
        if not used and self.per_second is not None:
            self.tokens = min(self.capacity, self.tokens + 1.0)

    def next_room_at(self, now: float) -> float | None:
        if self.per_second is None or self.tokens >= 1.0:
            return None
        if self.concurrent is not None and self.in_use >= self.concurrent:
            return None  # an attempt ending makes room first
        return now + (1.0 - self.tokens) / self.per_second


class _Breaker(_Gate):
    """Closed: calls go. Open (after ``failures`` failed calls in a row): calls wait
    until the cool-down ends; then one probe call goes (half-open) and decides."""

    def __init__(
        self,
        target: str,
        policy: BreakerPolicy,
        listener: AdmissionListener | None,
        clock: Callable[[], float],
    ) -> None:
        super().__init__(target)
        self.policy = policy
        self.clock = clock
        self.listener = listener
        self.state = BreakerState.CLOSED
        self.failures = 0
        self.opened_at = 0.0
        self.probe: JobRun | None = None  # the one call let through while half-open

    def has_room(self, now: float) -> bool:
        if self.state is BreakerState.CLOSED:
            return True
        if self.state is BreakerState.OPEN and now >= self.opened_at + self.policy.cooldown_s:
            self._become(BreakerState.HALF_OPEN, "cool-down over: one probe call decides")
        return self.state is BreakerState.HALF_OPEN and self.probe is None

    def take(self, now: float, run: JobRun) -> None:
        if self.state is BreakerState.HALF_OPEN:
            self.probe = run

    def give(self, run: JobRun, used: bool) -> None:
        is_probe = self.probe is run
        if is_probe:
            self.probe = None  # whatever it tells, the next waiter may probe after it
        if not used or run.target_down is None:
            return  # no call made, or no verdict (the job's own deadline cut it short)
        if self.state is BreakerState.CLOSED:
            self.failures = self.failures + 1 if run.target_down else 0
            if self.failures >= self.policy.failures:
                self._open(f"{self.failures} failed call(s) in a row")
            return
        if not is_probe:
            return  # a call from before it opened: only the probe decides
        if run.target_down:
            self._open("the probe call failed")
        else:
            self.failures = 0
            self._become(BreakerState.CLOSED, "the probe call succeeded")

    def _open(self, why: str) -> None:
        self.opened_at = self.clock()
        self._become(
            BreakerState.OPEN,
            f"{why}: its jobs wait {self.policy.cooldown_s:g} s, holding no slot",
        )

    def next_room_at(self, now: float) -> float | None:
        if self.state is BreakerState.OPEN:
            return self.opened_at + self.policy.cooldown_s
        return None

    def why(self) -> str:
        return f"the circuit breaker of {self.name} ({self.state})"

    def _become(self, state: BreakerState, why: str) -> None:
        self.state = state
        logger.warning(
            "circuit breaker %s for %s: %s",
            state,
            self.name,
            why,
            extra={"target": self.name, "breaker_state": str(state)},
        )
        if self.listener is not None:
            try:
                self.listener.breaker_changed(self.name, state)
            except Exception:
                logger.exception("admission listener failed")


class Admission:
    """Admits runs to their next attempt, or parks them (see module docstring).

    ``wake(run)``: the run may try again (the engine queues it); ``expire(run, why)``:
    its deadline came while it waited for ``why``. Both are called from timers or from
    ``release``, and must not block.
    """

    def __init__(
        self,
        limits: Sequence[TargetLimit],
        breaker: BreakerPolicy,
        *,
        wake: Callable[[JobRun], None],
        expire: Callable[[JobRun, str], None],
        listener: AdmissionListener | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._clock = clock
        self._limits: dict[str, _Gate] = {limit.key: _Limit(limit, clock) for limit in limits}
        self._policy = breaker
        self._breakers: dict[str, _Breaker] = {}
        self._wake = wake
        self._expire = expire
        self._listener = listener
        # Where each parked run waits, and the timer of its deadline.
        self._parked: dict[int, tuple[JobRun, _Gate, gevent.Greenlet[..., object]]] = {}

    @property
    def idle(self) -> bool:
        """Nothing limits or breaks: every run is admitted at once, and cheaply."""
        return not self._limits and self._policy.failures == 0

    def breaker_states(self) -> dict[str, str]:
        """Each HTTP host's breaker state (``closed``, ``open``, ``half-open``), by target
        (``host:<name>``): the hosts called since start. A read-only copy."""
        return {target: str(breaker.state) for target, breaker in self._breakers.items()}

    def limit_states(self) -> dict[str, dict[str, int]]:
        """Each ``LIMITS`` entry (its text): attempts running under it (``in_use``) and
        runs waiting for it (``waiting``). A read-only copy."""
        return {
            gate.name: {"in_use": gate.in_use, "waiting": len(gate.waiters)}
            for gate in self._limits.values()
            if isinstance(gate, _Limit)
        }

    def admit(self, run: JobRun) -> bool:
        """True: the attempt may start (room taken; ``release`` it after). False: the
        run is parked, to be woken or expired later."""
        gates = run.gates
        if gates is None:
            gates = run.gates = self._gates_of(run)
        if not gates:
            return True
        now = self._clock()
        for gate in gates:
            if gate in run.held:
                continue
            if gate.waiters or not gate.has_room(now):
                # What it holds goes back first: a run waiting on one host's breaker
                # must not sit on a job type's concurrency that other hosts' jobs need.
                self.release(run, used=False)
                self._park(run, gate, now)
                return False
        for gate in gates:
            if gate not in run.held:
                gate.take(now, run)
                run.held.append(gate)
        return True

    def release(self, run: JobRun, used: bool = True) -> None:
        """The attempt ended (``run.target_down`` says how it went for its target)."""
        if not run.held:
            return  # most runs: nothing limits them
        held, run.held = run.held, []
        for gate in held:
            gate.give(run, used)
        for gate in held:
            self._pump(gate)

    def parked(self) -> int:
        return len(self._parked)

    def close(self) -> list[JobRun]:
        """Stop every timer; the parked runs, given back."""
        runs = []
        for run, gate, deadline in list(self._parked.values()):
            deadline.kill(block=False)
            runs.append(run)
            gate.waiters.clear()
        self._parked.clear()
        for gate in [*self._limits.values(), *self._breakers.values()]:
            if gate.timer is not None:
                gate.timer.kill(block=False)
        return runs

    # -- inside ----------------------------------------------------------------------

    def _gates_of(self, run: JobRun) -> list[_Gate]:
        """The run's gates, the narrowest first: its targets' breakers, their limits,
        then its job type's limit (so a run held by one host takes nothing shared)."""
        targets: Callable[..., Iterable[str]] | None = getattr(run.executor, "targets", None)
        if targets is None and not self._limits:
            return _NO_GATES
        breakers: list[_Gate] = []
        limits: list[_Gate] = []
        try:
            names = [] if targets is None else list(targets(run.job))
        except Exception:  # a payload the attempt will reject: nothing to limit
            names = []
        for name in names:
            if self._policy.failures and name.startswith(HOST_PREFIX):
                breakers.append(self._breaker(name))
            if (limit := self._limits.get(name)) is not None:
                limits.append(limit)
        if (limit := self._limits.get(run.job.type)) is not None:
            limits.append(limit)
        return breakers + limits

    def _breaker(self, target: str) -> _Breaker:
        breaker = self._breakers.get(target)
        if breaker is None:
            breaker = _Breaker(target, self._policy, self._listener, self._clock)
            self._breakers[target] = breaker
        return breaker

    def _park(self, run: JobRun, gate: _Gate, now: float) -> None:
        gate.waiters.append(run)
        deadline = gevent.spawn_later(max(0.0, run.deadline - now), self._expired, run)
        self._parked[id(run)] = (run, gate, deadline)
        if self._listener is not None:
            try:
                self._listener.parked(gate.name, isinstance(gate, _Breaker))
            except Exception:
                logger.exception("admission listener failed")
        self._schedule(gate, now)

    def _schedule(self, gate: _Gate, now: float) -> None:
        """A timer for when ``gate`` has room by the clock, while it has waiters."""
        if gate.timer is not None or not gate.waiters:
            return
        at = gate.next_room_at(now)
        if at is not None:
            gate.timer = gevent.spawn_later(max(0.0, at - now), self._on_time, gate)

    def _on_time(self, gate: _Gate) -> None:
        gate.timer = None
        self._pump(gate)

    def _pump(self, gate: _Gate) -> None:
        """Hand ``gate``'s room to its waiters, first come first served."""
        now = self._clock()
        while gate.waiters and gate.has_room(now):
            run = gate.waiters.popleft()
            entry = self._parked.pop(id(run), None)
            if entry is not None:
                entry[2].kill(block=False)
            gate.take(now, run)
            run.held.append(gate)  # kept for it while it tries its other gates
            self._wake(run)
        self._schedule(gate, now)

    def _expired(self, run: JobRun) -> None:
        entry = self._parked.pop(id(run), None)
        if entry is None:
            return
        _, gate, _ = entry
        with contextlib.suppress(ValueError):  # handed its room meanwhile
            gate.waiters.remove(run)
        self.release(run, used=False)
        self._expire(run, gate.why())
