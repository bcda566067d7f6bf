"""kafka-python's log lines that say nothing to act on, kept out of the worker's logs.

Each filter matches kafka-python's own message texts (checked against 3.0.12, the
version pyproject.toml pins) or our adapter's class names, so it lives here, beside
``quirks.py``, the other place that knows kafka-python's internals. ``quiet_kafka_python``
installs them; the logging setup calls it once the root level is set.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager


def quiet_kafka_python(level: int) -> None:
    """kafka-python's loggers at what is worth reading when the root logs at ``level``.

    Safe to call again (tests configure logging many times): filters are replaced, not
    added twice, and what a previous call's filters saw is forgotten.
    """
    # kafka-python is chatty at INFO (every rebalance step); its warnings still show.
    logging.getLogger("kafka").setLevel(max(logging.WARNING, level))
    # A new group's first assignment is often made before the topic's metadata arrived;
    # the group rejoins at once with the partitions. The warning says nothing to act on.
    logging.getLogger("kafka.coordinator.assignors.range").setLevel(max(logging.ERROR, level))
    coordinator = logging.getLogger("kafka.coordinator.consumer")
    if not any(isinstance(f, _OurSlowRevokeIsExpected) for f in coordinator.filters):
        coordinator.addFilter(_OurSlowRevokeIsExpected())
    for name in KafkaNoteAloneIsNoNews.LOGGERS:
        logger = logging.getLogger(name)
        for old in [f for f in logger.filters if isinstance(f, KafkaNoteAloneIsNoNews)]:
            logger.removeFilter(old)
        logger.addFilter(KafkaNoteAloneIsNoNews())


class _OurSlowRevokeIsExpected(logging.Filter):
    """Drops kafka-python's "Rebalance listener ... took Ns. Sync listeners block ..."
    warning for our own listener: it is a coroutine that waits up to the revoke grace
    (KafkaJobSource's ``revoke_grace_s``) on the consumer's I/O loop, which keeps serving
    heartbeats meanwhile, so the warning's advice does not apply. Other listeners' slow
    calls still show."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (
            isinstance(record.msg, str)
            and record.msg.startswith("Rebalance listener")
            and bool(record.args)
            and isinstance(record.args, tuple)
            and record.args[0] == "_RebalanceListener"
        )


class KafkaNoteAloneIsNoNews(logging.Filter):
    """Drops kafka-python's warnings and errors about what it recovers from at once
    when they come alone, and lets them through when they recur within a minute.

    - ``Topic … not found in cluster metadata`` (and ``… not available during
      auto-create initialization``): a topic the broker creates on its first write, as a
      dead-letter topic is by its first letter; one that is really missing is asked for
      again and again, and shows from the second time.
    - ``Marking the coordinator dead … NotCoordinatorError`` (or
      ``CoordinatorNotAvailableError``): the group's coordinator moved or was still
      loading (a fresh broker's first group); the client finds the new one at once. One
      that stays unavailable (an offsets topic the cluster cannot create) recurs.
    """

    LOGGERS = ("kafka.cluster", "kafka.coordinator.base")
    _TOPIC_NOTES = frozenset(
        (
            "Topic %s not found in cluster metadata",
            "Topic %s is not available during auto-create initialization",
        )
    )
    _COORDINATOR_MOVED = frozenset(("NotCoordinatorError", "CoordinatorNotAvailableError"))
    RECUR_WITHIN_S = 60.0

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__()
        self._clock = clock
        self._last_seen: dict[tuple[str, str], float] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        key = self._key(record)
        if key is None:
            return True
        now = self._clock()
        last = self._last_seen.get(key)
        self._last_seen[key] = now
        return last is not None and now - last < self.RECUR_WITHIN_S

    def _key(self, record: logging.LogRecord) -> tuple[str, str] | None:
        args = record.args if isinstance(record.args, tuple) else ()
        if record.msg in self._TOPIC_NOTES and len(args) == 1:
            return (str(record.msg), str(args[0]))
        if (
            isinstance(record.msg, str)
            and record.msg.startswith("Marking the coordinator dead")
            and len(args) == 3  # (node, group, error)
            and type(args[2]).__name__ in self._COORDINATOR_MOVED
        ):
            return (record.msg, str(args[1]))
        return None


# Where kafka-python logs each failed connection attempt (four lines per try; two more
# from the transport when an address takes the connection and drops it).
_KAFKA_CONNECTION_LOGGERS = (
    "kafka.net.manager",
    "kafka.net.connection",
    "kafka.net.transport",
    "kafka.conn",
)


@contextmanager
def held_back_connection_errors() -> Iterator[list[str]]:
    """Hold back kafka-python's per-attempt connection lines while the worker first
    reaches the brokers, keeping their messages (the list yielded) for one line of our own.

    Unreachable brokers would otherwise print some 70 lines in the 30 s before the
    worker gives up; once connected, outages are logged as they come.
    """
    held: list[str] = []

    class _Hold(logging.Filter):
        def filter(self, record: logging.LogRecord) -> bool:
            if record.levelno >= logging.WARNING:
                held.append(record.getMessage())
            return False

    hold = _Hold()
    loggers = [logging.getLogger(name) for name in _KAFKA_CONNECTION_LOGGERS]
    for logger in loggers:
        logger.addFilter(hold)
    try:
        yield held
    finally:
        for logger in loggers:
            logger.removeFilter(hold)


@contextmanager
def quiet_topic_lookup(topic: str) -> Iterator[None]:
    """Drop kafka-python's ``Topic … not found in cluster metadata`` lines about
    ``topic`` while the caller waits for its metadata: they come about ten a second
    (a hundred for a missing topic), and the caller says once what it found."""

    class _Drop(logging.Filter):
        def filter(self, record: logging.LogRecord) -> bool:
            args = record.args if isinstance(record.args, tuple) else ()
            return not (record.msg in KafkaNoteAloneIsNoNews._TOPIC_NOTES and args == (topic,))

    drop = _Drop()
    logger = logging.getLogger("kafka.cluster")
    logger.addFilter(drop)
    try:
        yield
    finally:
        logger.removeFilter(drop)


def first_error(held: list[str]) -> str | None:
    """The first connection failure among held-back lines (the cause, not the give-up)."""
    return next((line for line in held if line.startswith("Connection failed")), None) or (
        held[0] if held else None
    )
