"""At most one log line per interval for a warning that may repeat per record or per job."""

from __future__ import annotations

import time
from collections.abc import Callable


class SparseWarning:
    """Says when a repeating warning may be logged again, and how many were held back.

    A producer's mistake repeats on every record; one line a minute, counting the rest,
    says as much as thousands of lines and cannot flood the log.
    """

    def __init__(self, every_s: float = 60.0, clock: Callable[[], float] = time.monotonic):
        self._every_s = every_s
        self._clock = clock
        self._next_at = float("-inf")
        self._held_back = 0

    def due(self) -> int | None:
        """None: hold this one back. Else log it now, with this many held back since."""
        now = self._clock()
        if now < self._next_at:
            self._held_back += 1
            return None
        self._next_at = now + self._every_s
        held_back, self._held_back = self._held_back, 0
        return held_back
