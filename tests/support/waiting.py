"""Waiting in tests: on a condition, with a generous deadline, never for a fixed time.

A slow machine makes a test slower, never red: the wait returns as soon as the
condition holds, and the deadline is only there so that a test that will never pass
says so instead of hanging.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

import gevent

T = TypeVar("T")


def wait_until(
    condition: Callable[[], T],
    timeout_s: float = 10.0,
    message: str | None = None,
    *,
    interval_s: float = 0.2,
) -> T:
    """Calls ``condition`` until it returns something truthy, and returns that.

    When ``timeout_s`` passes first: with a ``message``, raises ``AssertionError`` with
    it; without one, returns the last (falsy) value, for a caller that says itself what
    it saw (``assert wait_until(...), f"..."``).

    It checks again at once at first, then backs off to one check every
    ``interval_s`` (a condition that reads a whole log should not be read 1000 times a
    second). It sleeps with ``gevent.sleep``, so the greenlets under test run meanwhile;
    in a thread or a process without gevent's patching that is an ordinary sleep.
    """
    deadline = time.monotonic() + timeout_s
    pause_s = 0.001
    while True:
        value = condition()
        if value or time.monotonic() >= deadline:
            break
        gevent.sleep(min(pause_s, max(0.0, deadline - time.monotonic())))
        pause_s = min(pause_s * 2, interval_s)
    if not value and message is not None:
        raise AssertionError(f"{message} (waited {timeout_s:g} s)")
    return value
