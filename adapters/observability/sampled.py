"""The latest answer of a check that may wait on the network, kept fresh off the probes.

A probe handler that asks Core itself waits as long as Core takes to (not) answer: with
Core down, every ``/readyz`` and ``/metrics`` took the ping's whole timeout. Here one
greenlet asks every ``interval_s`` and the handlers read what it last found.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Generic, TypeVar

import gevent
import structlog

T = TypeVar("T")

log = structlog.get_logger(__name__)


class Sampled(Generic[T]):
    """``latest()`` never calls ``read``: a greenlet does, every ``interval_s``."""

    def __init__(self, read: Callable[[], T], initial: T, interval_s: float = 1.0) -> None:
        self._read = read
        self._latest = initial
        self._interval_s = interval_s
        self._greenlet: gevent.Greenlet | None = None

    def latest(self) -> T:
        return self._latest

    def start(self) -> None:
        if self._greenlet is None:
            self._greenlet = gevent.spawn(self._run)

    def stop(self) -> None:
        greenlet, self._greenlet = self._greenlet, None
        if greenlet is not None:
            greenlet.kill(block=True, timeout=2)

    def _run(self) -> None:
        while True:
            try:
                self._latest = self._read()
            except Exception:  # a check that fails keeps its last answer; logged
                log.exception("a background readiness check failed")
            gevent.sleep(self._interval_s)
