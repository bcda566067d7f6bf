"""The web console's use cases: the fleet at a glance, the dead letters, and replaying them.

Everything comes from Kafka (no database): the status topic (``StatusFeed``), the
group's offsets (``GroupProgressProbe``) and the dead-letter topics (one
``DeadLetterService`` each). Each is read on a greenlet of its own, on its own cadence,
and a page reads only what they last found: a page never waits for the broker, and a
broker that does not answer shows as a problem on the page, with the last figures kept.
"""

from __future__ import annotations

import dataclasses
import itertools
import time
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import gevent
import gevent.lock

from jobworker.application.dead_letter_service import (
    DeadLetterService,
    ReplayOptions,
    ReplaySummary,
)
from jobworker.application.fleet import (
    FailureCount,
    Fleet,
    PartitionRow,
    ThroughputBucket,
    WorkerView,
)
from jobworker.domain.dead_letters import DeadLetterTopicMissing, Letter, LetterFilter
from jobworker.domain.fleet import GroupPartition
from jobworker.domain.ports import GroupProgressProbe, StatusFeed

# How often each source is read. Status records arrive as they are published (the feed
# waits up to a second for one); offsets and dead letters are asked for.
GROUP_EVERY_S = 5.0
LETTERS_EVERY_S = 10.0
MISSING_TOPIC_EVERY_S = 60.0
# A source that failed is read again after this long at the soonest.
RETRY_AFTER_S = 5.0
# A page lists at most this many letters of one cause.
LETTERS_SHOWN = 200
# Replays remembered for their pages, and the lines about letters left behind each keeps.
ACTIONS_KEPT = 50
LEFT_LINES_KEPT = 200


@dataclass(slots=True)
class LetterCounts:
    """The letters of one dead-letter topic, counted as they were read."""

    topic: str
    by_cause: Counter[str] = field(default_factory=Counter)
    by_kind: Counter[str] = field(default_factory=Counter)
    next_offsets: dict[int, int] = field(default_factory=dict)
    exists: bool = True

    @property
    def total(self) -> int:
        return sum(self.by_cause.values())

    def add(self, letter: Letter) -> None:
        self.by_cause[letter.cause] += 1
        self.by_kind[str(letter.kind)] += 1
        self.next_offsets[letter.partition] = letter.offset + 1


@dataclass(frozen=True, slots=True)
class Overview:
    """Everything the fleet page shows, as of ``now_ms``."""

    now_ms: int
    workers: list[WorkerView]
    partitions: list[PartitionRow]
    throughput: list[ThroughputBucket]
    failures: list[FailureCount]
    letters: dict[str, LetterCounts]
    problems: dict[str, str]

    @property
    def backlog(self) -> int:
        return sum(row.backlog or 0 for row in self.partitions)

    @property
    def lag(self) -> int:
        return sum(row.lag or 0 for row in self.partitions)


@dataclass(slots=True)
class ReplayAction:
    """One replay started from the console, and how it is going."""

    id: int
    dead_letters: str  # which topic: a key of the console's dead-letter services
    which: LetterFilter
    started_ms: int
    sent: int = 0
    left: list[str] = field(default_factory=list)  # the first LEFT_LINES_KEPT, for the page
    left_count: int = 0
    summary: ReplaySummary | None = None
    error: str | None = None

    @property
    def done(self) -> bool:
        return self.summary is not None or self.error is not None


class ReplayRunning(Exception):  # noqa: N818 - reads as the fact it is
    """A replay of the same dead-letter topic is running: ``action``."""

    def __init__(self, action: ReplayAction) -> None:
        super().__init__(f"replay {action.id} of the {action.dead_letters} dead letters is running")
        self.action = action


class _ActionListener:
    """Hears a replay (``ReplayListener``) for its action's page."""

    def __init__(self, action: ReplayAction) -> None:
        self._action = action

    def sent(self, letter: Letter, target: str) -> None:
        self._action.sent += 1

    def left(self, letter: Letter, why: str, *, refused: bool) -> None:
        verb = "refused again" if refused else "skipped"
        self._action.left_count += 1
        if len(self._action.left) < LEFT_LINES_KEPT:
            self._action.left.append(f"{verb} {letter.where}: {why}")


class FleetConsole:
    """Reads the fleet's sources in the background; answers pages from what it read.

    ``dead_letters`` maps a name ("jobs", "results") to an opener of that topic's
    service: one service is kept open for reading, and each replay opens its own, so a
    long replay does not hold the pages up.
    """

    def __init__(
        self,
        feed: StatusFeed,
        group: GroupProgressProbe,
        dead_letters: Mapping[str, Callable[[], DeadLetterService]],
        max_replays: int,
        wall_clock_ms: Callable[[], int] = lambda: time.time_ns() // 1_000_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.fleet = Fleet()
        self._feed = feed
        self._group = group
        self._open_dead_letters = dict(dead_letters)
        self._readers: dict[str, DeadLetterService] = {}
        self._max_replays = max_replays
        self._now_ms = wall_clock_ms
        self._clock = clock
        self._missing_until: dict[str, float] = {}
        self._group_partitions: list[GroupPartition] = []
        self._counts = {name: LetterCounts(topic="") for name in dead_letters}
        self._problems: dict[str, str] = {}
        self._actions: dict[int, ReplayAction] = {}
        self._action_ids = itertools.count(1)
        self._greenlets: list[gevent.Greenlet[..., object]] = []
        self._reading = {name: gevent.lock.BoundedSemaphore() for name in dead_letters}

    # -- reading, in the background ----------------------------------------------------

    def start(self) -> None:
        self._greenlets = [
            gevent.spawn(self._forever, "status topic", lambda: self.follow_statuses(1.0), 0),
            gevent.spawn(self._forever, "group offsets", self.refresh_group, GROUP_EVERY_S),
            gevent.spawn(self._forever, "dead letters", self.refresh_letters, LETTERS_EVERY_S),
        ]

    def stop(self) -> None:
        gevent.killall(self._greenlets, timeout=5)
        for name in list(self._readers):
            self._readers.pop(name).close()
        self._feed.close()
        self._group.close()

    def follow_statuses(self, max_wait_s: float) -> int:
        """Take the status records published since the last call; how many there were."""
        records = self._feed.read(max_wait_s)
        for worker_id, status in records:
            self.fleet.saw(worker_id, status)
        return len(records)

    def refresh_group(self) -> None:
        self._group_partitions = self._group.measure()

    def refresh_letters(self) -> None:
        """Count the letters written since the last count, topic by topic."""
        for name in self._counts:
            with self._reading[name]:
                self._count_new_letters(name)

    def _count_new_letters(self, name: str) -> None:
        if self._clock() < self._missing_until.get(name, 0.0):
            return
        service = self._reader(name)
        counts = self._counts[name]
        counts.topic = service.topic
        try:
            for letter in service.letters_from(counts.next_offsets):
                counts.add(letter)
        except DeadLetterTopicMissing:
            counts.exists = False  # nothing dead-lettered there yet
            # Closed, and looked for again a while later: a client that looked for a
            # missing topic goes on asking the broker for it, ten times a second.
            self._readers.pop(name).close()
            self._missing_until[name] = self._clock() + MISSING_TOPIC_EVERY_S
        else:
            counts.exists = True

    def _forever(self, what: str, read: Callable[[], object], every_s: float) -> None:
        while True:
            try:
                read()
            except Exception as error:  # shown on the page; the last figures stay
                self._problems[what] = f"{type(error).__name__}: {error}"
                gevent.sleep(max(every_s, RETRY_AFTER_S))
                continue
            self._problems.pop(what, None)
            gevent.sleep(every_s)

    # -- what pages show ---------------------------------------------------------------

    def overview(self) -> Overview:
        now_ms = self._now_ms()
        return Overview(
            now_ms=now_ms,
            workers=self.fleet.workers(now_ms),
            partitions=self.fleet.partitions(now_ms, self._group_partitions),
            throughput=self.fleet.throughput(now_ms),
            failures=self.fleet.failures(now_ms),
            letters=dict(self._counts),
            problems=dict(self._problems),
        )

    def letter_counts(self, name: str) -> LetterCounts | None:
        """What the last count of ``name``'s dead letters found."""
        return self._counts.get(name)

    def dead_letter_names(self) -> list[str]:
        return list(self._counts)

    def letters(self, name: str, which: LetterFilter) -> tuple[str, list[Letter]]:
        """The topic's name and the letters ``which`` takes (at most ``LETTERS_SHOWN``)."""
        limited = dataclasses.replace(which, limit=min(which.limit or LETTERS_SHOWN, LETTERS_SHOWN))
        with self._reading[name]:
            service = self._reader(name)
            try:
                return service.topic, list(service.letters(limited))
            except DeadLetterTopicMissing:
                return service.topic, []

    def letter(self, name: str, partition: int, offset: int) -> Letter | None:
        with self._reading[name]:
            try:
                return self._reader(name).letter_at(partition, offset)
            except DeadLetterTopicMissing:
                return None

    # -- replaying ---------------------------------------------------------------------

    def replay(self, name: str, which: LetterFilter) -> ReplayAction:
        """Start replaying the letters ``which`` takes; the action tells how it goes.

        Raises ``ReplayRunning`` while a replay of the same topic runs: two at once
        would share one checkpoint, and could send a letter twice.
        """
        if name not in self._open_dead_letters:
            raise KeyError(name)
        running = next(
            (a for a in self._actions.values() if a.dead_letters == name and not a.done), None
        )
        if running is not None:
            raise ReplayRunning(running)
        action = ReplayAction(next(self._action_ids), name, which, self._now_ms())
        self._actions[action.id] = action
        for old in sorted(self._actions)[:-ACTIONS_KEPT]:
            del self._actions[old]
        gevent.spawn(self._replay, action)
        return action

    def action(self, action_id: int) -> ReplayAction | None:
        return self._actions.get(action_id)

    def actions(self) -> list[ReplayAction]:
        return sorted(self._actions.values(), key=lambda a: -a.id)

    def _replay(self, action: ReplayAction) -> None:
        service = None
        try:
            service = self._open_dead_letters[action.dead_letters]()
            summary = service.replay(
                action.which, ReplayOptions(max_replays=self._max_replays), _ActionListener(action)
            )
            if summary.stopped_by is not None:
                action.error = str(summary.stopped_by)
            action.summary = summary
        except Exception as error:  # shown on the action's page
            action.error = f"{type(error).__name__}: {error}"
        finally:
            if service is not None:
                service.close()

    def _reader(self, name: str) -> DeadLetterService:
        if name not in self._readers:
            self._readers[name] = self._open_dead_letters[name]()
        return self._readers[name]
