"""When a source commits its done offsets: on a clock, or after so many acks.

On the clock (every ``interval_s``) done work is committed without waiting for the
broker's answer: a short interval then costs the poll loop nothing, and finished work is
on record soon after Core took it (what a crash redoes). A clock tick with no acks since
(a position moved by skipped records alone) commits and waits. After ``every`` acks in
between, a commit is sent without waiting too: waiting there held up every job behind
the poll loop for a round trip, ``every`` acks at a time. One commit without waiting is
in flight at a time (the next carries what was done meanwhile); one unanswered for
``patience_s`` is taken as lost, so that they cannot stop for good.

Not thread-safe: the source holds its lock around ``acked`` and ``committing``.
"""

from __future__ import annotations

from collections.abc import Callable
from enum import Enum


class Due(Enum):
    """What commit, if any, is due now."""

    NONE = "none"
    WAITING = "waiting"  # on the clock: wait for the answer
    SENT = "sent"  # after enough acks: send and go on


class CommitCadence:
    """The commit clock and ack count of one source, and its commit sent without waiting."""

    def __init__(
        self,
        interval_s: float,
        every: int,
        clock: Callable[[], float],
        patience_s: float = 60.0,
    ) -> None:
        self._interval_s = interval_s
        self._every = every
        self._clock = clock
        self._patience_s = patience_s
        self._acks = 0
        self._last = clock()
        self._in_flight: object | None = None
        self._sent_at = 0.0

    def acked(self) -> None:
        """A job was done since the last commit."""
        self._acks += 1

    def due(self) -> Due:
        """The commit due now: on the clock first, then after enough acks."""
        if self._clock() - self._last >= self._interval_s:
            return Due.SENT if self._acks else Due.WAITING
        if self._acks >= self._every:
            return Due.SENT
        return Due.NONE

    def seconds_until_due(self) -> float | None:
        """How soon the clock commit is due, if anything was done since the last one:
        a poll should wait no longer, so that done work is committed on time."""
        if not self._acks or not self.may_send():
            return None  # nothing to commit, or the last commit is still unanswered
        return max(0.0, self._interval_s - (self._clock() - self._last))

    def committing(self) -> None:
        """The offsets to commit were just taken: count and clock start again."""
        self._acks = 0
        self._last = self._clock()

    def may_send(self) -> bool:
        """Whether a commit without waiting may go (none in flight, or one given up on)."""
        return self._in_flight is None or self._clock() - self._sent_at >= self._patience_s

    def sending(self) -> object:
        """A commit without waiting is sent: the token its answer gives back."""
        token = object()
        self._in_flight, self._sent_at = token, self._clock()
        return token

    def answered(self, token: object) -> None:
        """The commit ``token`` was answered (or failed to go): the next may go."""
        if self._in_flight is token:
            self._in_flight = None
