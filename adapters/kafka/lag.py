"""Consumer lag as the broker sees it, for partitions this worker owns.

The consumer alone cannot say how far behind it is: it learns a partition's end only
from fetches, so a partition it has not read yet, or one it paused while Core is down,
shows stale or no figures exactly when the backlog grows. A separate admin client asks
the broker instead, every few seconds, off the fetch loop.

The same requests say whether the broker answers at all: readiness reads the time of
the last answer (``seconds_since_answer``). A broker that is frozen keeps its TCP
connections open and answers nothing, so each request has a timeout well under the
readiness bound, and a request left hanging simply leaves that time behind.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

import gevent
import structlog
from kafka import TopicPartition
from kafka.admin import OffsetSpec

from jobworker.adapters.kafka.admin import LazyAdminClient
from jobworker.adapters.kafka.settings import KafkaClientSettings

if TYPE_CHECKING:
    from jobworker.adapters.kafka.book import SharedBook
    from jobworker.adapters.kafka.consumer import SourceConsumer

log = structlog.get_logger(__name__)


@dataclass(frozen=True, slots=True)
class PartitionOffsets:
    """A partition's end and the group's position in it, as the broker last said."""

    end: int
    position: int


def _fresher(consumer: int | None, broker: int | None) -> int | None:
    """Of two figures that only grow, the larger: the fresher one (None if neither)."""
    if consumer is None or broker is None:
        return broker if consumer is None else consumer
    return max(consumer, broker)


def partition_lag(
    highwater: int | None, position: int | None, broker: PartitionOffsets | None
) -> int | None:
    """Records left in a partition, from what the consumer and the broker last said.

    Both ends and both positions only grow, so the larger of each is the fresher: the
    consumer's after a fetch or a commit, the broker's for a partition paused or not
    read yet. None when neither knows the end or the position.
    """
    end = highwater
    if broker is not None:
        end, position = _fresher(end, broker.end), _fresher(position, broker.position)
    if end is None or position is None:
        return None
    return max(0, end - position)


def owned_lag(
    consumer: SourceConsumer, shared: SharedBook, broker: Mapping[TopicPartition, PartitionOffsets]
) -> dict[TopicPartition, int]:
    """Records per owned partition past the group's position: what is left to do.

    The position is the offset this worker last committed there; before its first
    commit in this assignment, the offset it first read (where the group's committed
    offset, or ``earliest`` without one, put the consumer). The end is the consumer's
    high-water mark, which it learns only from fetches: ``broker`` fills in partitions
    not read yet and new records on paused partitions, so the lag grows while Core is
    down. It is the LAG ``kafka-consumer-groups --describe`` shows, reaching zero only
    once every record was taken, finished, reported and committed. Partitions with
    neither figure are left out. Makes no request to the broker.
    """
    with shared as book:
        owned = book.partitions.owned()
    lags = {}
    for tp in owned:
        highwater = consumer.highwater(tp)
        with shared as book:
            position = book.partitions.lag_position(tp)
        lag = partition_lag(highwater, position, broker.get(tp))
        if lag is not None:
            lags[tp] = lag
    return lags


def owned_backlog(
    consumer: SourceConsumer, shared: SharedBook, broker: Mapping[TopicPartition, PartitionOffsets]
) -> dict[TopicPartition, int]:
    """Jobs truly not done per owned partition: the records not taken yet, plus those
    taken and not finished.

    Unlike the lag, this does not count the jobs finished beyond the committed offset
    (the ones the commit's metadata records): after a slow job holds a partition's
    commit back while later jobs finish, the lag stays high and the backlog does not.
    Makes no request to the broker.
    """
    with shared as book:
        owned = book.partitions.owned()
    backlogs = {}
    for tp in owned:
        end = _fresher(consumer.highwater(tp), broker[tp].end if tp in broker else None)
        with shared as book:
            unfinished = book.partitions.unfinished_from(tp)
        if unfinished is None and tp in broker:
            # Nothing read here yet: all from the group's position is not done.
            unfinished = (broker[tp].position, 0)
        if end is None or unfinished is None:
            continue
        not_taken_from, in_flight = unfinished
        backlogs[tp] = max(0, end - not_taken_from) + in_flight
    return backlogs


class GroupOffsetsProbe:
    """Asks the broker for the end of partitions and the group's committed offsets.

    For a partition the group has committed, end minus committed is the LAG that
    ``kafka-consumer-groups --describe`` shows; one it never committed counts from its
    earliest offset, where the worker (``auto_offset_reset=earliest``) starts reading
    (that tool shows ``-`` there).
    """

    def __init__(
        self, settings: KafkaClientSettings, group_id: str, timeout_s: float = 3.0
    ) -> None:
        self._group_id = group_id
        self._timeout_ms = int(timeout_s * 1000)
        self._admin = LazyAdminClient(settings, self._timeout_ms)

    def measure(
        self, partitions: Collection[TopicPartition]
    ) -> dict[TopicPartition, PartitionOffsets]:
        """Raises KafkaError when the broker cannot answer.

        With no partitions owned (a standby replica) it still asks the broker something
        cheap (DescribeCluster), so the answer still shows the broker is there.
        """
        admin = self._admin.get()
        if not partitions:
            admin.describe_cluster()
            return {}
        ends = admin.list_partition_offsets(
            dict.fromkeys(partitions, OffsetSpec.LATEST), timeout_ms=self._timeout_ms
        )
        committed = admin.list_group_offsets({self._group_id: list(partitions)}).get(
            self._group_id, {}
        )
        positions = {tp: meta.offset for tp, meta in committed.items() if meta.offset >= 0}
        never_committed = [tp for tp in partitions if tp not in positions]
        if never_committed:
            starts = admin.list_partition_offsets(
                dict.fromkeys(never_committed, OffsetSpec.EARLIEST), timeout_ms=self._timeout_ms
            )
            positions.update({tp: found.offset for tp, found in starts.items()})
        return {
            tp: PartitionOffsets(ends[tp].offset, positions[tp])
            for tp in partitions
            if tp in ends and tp in positions
        }

    def close(self) -> None:
        """Release the admin client; the next ``measure`` opens a new one."""
        self._admin.close()


# How often the monitor looks for owned partitions its last request did not ask for (a
# set lookup); it asks the broker for them after at least twice this.
NEW_PARTITION_CHECK_S = 0.5


class BrokerOffsetsMonitor:
    """Keeps the broker's offsets for the owned partitions fresh, on its own greenlet.

    ``latest()`` never blocks: a scrape reads the last answer. While the broker does
    not answer, the last answer stays and one warning says so; ``seconds_since_answer``
    grows meanwhile.
    """

    def __init__(
        self,
        probe: GroupOffsetsProbe,
        owned: Callable[[], Collection[TopicPartition]],
        interval_s: float = 5.0,
    ) -> None:
        self._probe = probe
        self._owned = owned
        self._interval_s = interval_s
        self._lock = threading.Lock()
        self._latest: dict[TopicPartition, PartitionOffsets] = {}
        self._greenlet: gevent.Greenlet | None = None
        self._failing = False
        self._answered_at: float | None = None
        self._asked_for: frozenset[TopicPartition] = frozenset()

    def start(self) -> None:
        if self._greenlet is None:
            self._greenlet = gevent.spawn(self._run)

    def stop(self) -> None:
        greenlet, self._greenlet = self._greenlet, None
        if greenlet is not None:
            greenlet.kill(block=True, timeout=5)
        self._probe.close()

    def latest(self) -> Mapping[TopicPartition, PartitionOffsets]:
        with self._lock:
            return dict(self._latest)

    def seconds_since_answer(self) -> float | None:
        """Seconds since the broker last answered this monitor; None if it never has."""
        answered_at = self._answered_at
        return None if answered_at is None else time.monotonic() - answered_at

    def refresh(self) -> None:
        """Ask once now (the greenlet does this every ``interval_s``)."""
        owned = sorted(self._owned())
        self._asked_for = frozenset(owned)
        try:
            measured = self._probe.measure(owned)
        except Exception as error:  # the broker may be away; the gauge keeps its last value
            # A new client next time: kafka-python's admin client caches the group's
            # coordinator for good, so a coordinator that moved would fail it forever.
            self._probe.close()
            if not self._failing:
                log.warning(
                    "cannot read partition offsets for the lag gauge; retrying",
                    error=str(error),
                    error_type=type(error).__name__,
                )
            self._failing = True
            return
        self._failing = False
        self._answered_at = time.monotonic()
        with self._lock:
            self._latest = measured

    def _run(self) -> None:
        while True:
            self.refresh()
            self._wait_for_next_refresh()

    def _wait_for_next_refresh(self) -> None:
        """``interval_s``, or less once a partition is owned that the last request did
        not ask for: a partition just assigned and not fetched yet has no figure but the
        broker's, and without one it is missing from the gauges until the next answer.
        (Not "the last answer did not cover": a partition the broker cannot answer for
        would be asked for every second.)"""
        waited_s = 0.0
        while waited_s < self._interval_s:
            gevent.sleep(NEW_PARTITION_CHECK_S)
            waited_s += NEW_PARTITION_CHECK_S
            if waited_s >= NEW_PARTITION_CHECK_S * 2 and self._uncovered():
                return

    def _uncovered(self) -> bool:
        return not self._asked_for.issuperset(self._owned())
