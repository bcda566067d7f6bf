"""One timer for the deadlines of every attempt running at once.

A ``gevent.Timeout`` per attempt made, started and cancelled a libev timer for every job:
1.8 µs, against 0.1 µs for noting the attempt in a dict (docs/benchmarks.md, issue 21),
though almost every job ends long before its deadline. Here an attempt only notes its
greenlet and deadline; one timer, set for the earliest deadline noted, throws the
exception into each greenlet whose deadline has passed when it fires, as gevent.Timeout
does, and is set again for the earliest one left.
"""

from __future__ import annotations

import math
import time
from typing import Any

import gevent
from greenlet import getcurrent


class DeadlineWatch:
    """Throws ``exception`` into a greenlet between ``start`` and ``end`` once its
    deadline (``time.monotonic()`` seconds) has passed. Hub-thread only, like the
    greenlets it watches."""

    def __init__(self, exception: type[BaseException]) -> None:
        self._exception = exception
        self._deadlines: dict[Any, float] = {}  # greenlet -> deadline
        self._timer: Any = None
        self._timer_at = math.inf

    def start(self, deadline: float) -> Any:
        """Watch the calling greenlet until ``end(token)``; returns that token.

        The exception is thrown wherever the greenlet waits in between, so nothing
        between the two may wait that is not part of the watched work.
        """
        me = getcurrent()
        self._deadlines[me] = deadline
        if deadline < self._timer_at:
            self._set_timer(deadline)
        return me

    def end(self, token: Any) -> None:
        # The timer stays set: most deadlines are never reached, and it finds nothing
        # due when it fires.
        self._deadlines.pop(token, None)

    def watching(self) -> int:
        return len(self._deadlines)

    def _set_timer(self, deadline: float) -> None:
        if self._timer is not None:
            self._timer.close()
        self._timer_at = deadline
        self._timer = gevent.get_hub().loop.timer(max(0.0, deadline - time.monotonic()))
        self._timer.start(self._fire)

    def _fire(self) -> None:
        self._timer.close()
        self._timer, self._timer_at = None, math.inf
        now = time.monotonic()
        due = [glet for glet, deadline in self._deadlines.items() if deadline <= now]
        for glet in due:
            # Each greenlet runs on until it waits again, and may end its watch or start
            # the next meanwhile: only one still due is thrown into.
            if self._deadlines.get(glet, math.inf) <= now:
                del self._deadlines[glet]
                glet.throw(self._exception)
        if self._deadlines:
            earliest = min(self._deadlines.values())
            if earliest < self._timer_at:
                self._set_timer(earliest)
