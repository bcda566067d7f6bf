"""What a Kafka-like source knows about each partition it was assigned, without Kafka.

One ``AssignedPartitions`` holds, per partition: the assignment (its epoch, whether it
was revoked and awaits the next assignment), where reading began, the window of offsets
in flight, the finished offsets inherited from the last commit's metadata, and the last
commit. The source moves records in and out of it; every rule that decides what is
taken, skipped, paused or committed lives here and is tested without a broker.

Not thread-safe: the source holds one lock around every call.
"""

from __future__ import annotations

import itertools
from collections import deque
from collections.abc import Hashable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from jobworker.adapters.kafka.modes import Ordering
from jobworker.adapters.kafka.offsets import finished_offsets
from jobworker.adapters.kafka.offsets.delivery_tracker import DeliveryTracker

P = TypeVar("P", bound=Hashable)


class OrderingGate:
    """Holds a partition's jobs back while an earlier one of the same key is in flight.

    Jobs are offered in offset order; one whose key has a job in flight waits, and each
    ``done`` releases the next waiting job of that key (in offset order). A job without
    a key (None) is never held. Items are opaque (the source's jobs).
    """

    def __init__(self) -> None:
        self._running: dict[int, Hashable] = {}  # offset -> key, of released jobs
        self._busy: set[Hashable] = set()
        self._waiting: dict[Hashable, deque[tuple[int, Any]]] = {}
        self._held = 0

    def offer(self, offset: int, key: Hashable | None, item: Any) -> bool:
        """True when the job at ``offset`` may run now; else it is held."""
        if key is None:
            return True
        if key in self._busy:
            self._waiting.setdefault(key, deque()).append((offset, item))
            self._held += 1
            return False
        self._busy.add(key)
        self._running[offset] = key
        return True

    def done(self, offset: int) -> list[Any]:
        """The job at ``offset`` is done: the items it released (at most one)."""
        key = self._running.pop(offset, None)
        if key is None:
            return []
        waiting = self._waiting.get(key)
        if not waiting:
            self._busy.discard(key)
            return []
        next_offset, item = waiting.popleft()
        if not waiting:
            del self._waiting[key]
        self._held -= 1
        self._running[next_offset] = key
        return [item]

    def held(self) -> int:
        """How many jobs wait for an earlier one of their key."""
        return self._held


@dataclass(frozen=True, slots=True)
class Commit:
    """An offset to commit for one partition, its metadata, and the assignment it is for."""

    offset: int
    metadata: str
    epoch: int


@dataclass(slots=True)
class _Partition:
    epoch: int
    # Revoked, awaiting the assignment that follows: kept (acks still count) in case
    # the partition comes back, since the consumer keeps its position then.
    revoked: bool = False
    # The offset first read in this assignment: lag's baseline until a commit.
    start_offset: int | None = None
    # The consumer's first known position in this assignment.
    first_position: int | None = None
    # Done offsets read from the committed metadata; None until it was read.
    inherited: frozenset[int] | None = None
    committed_here: bool = False
    committed_metadata: str = ""
    gate: OrderingGate = field(default_factory=OrderingGate)


@dataclass(slots=True)
class Taken:
    """What became of records offered to ``AssignedPartitions.take``."""

    # How many of the offered records were taken (the rest are over the window).
    count: int = 0
    # Offsets among those taken that are already finished (inherited): no job for them.
    finished: set[int] = field(default_factory=set)


class AssignedPartitions(Generic[P]):
    """Per-partition state of one consumer: assignment, window, finished offsets, commits.

    ``window`` bounds a partition's span, from its lowest unfinished offset to its
    newest taken one: what a restart reads again, however few jobs are still running.
    ``metadata_max_bytes`` is the broker's ``offset.metadata.max.bytes``: finished
    offsets that do not fit are left out of the commit, counted in
    ``metadata_fallbacks``.

    ``ordering`` (``Ordering``: none, key or partition) gates the jobs of each partition: with
    "key", a job whose record key has a job in flight is held until that one is done
    (keyless jobs are not held); with "partition", one job of a partition runs at a
    time. Held jobs stay taken, so they count in the window: a partition whose window
    fills with them pauses like any other. Commits are not affected.
    """

    def __init__(
        self,
        window: int,
        metadata_max_bytes: int = finished_offsets.METADATA_MAX_BYTES,
        ordering: Ordering = Ordering.NONE,
    ) -> None:
        self._ordering = ordering
        # Jobs to hand out before any new record: those released by ``done`` and those
        # read ahead (``set_aside``), each with its partition and assignment.
        self._ready: deque[tuple[P, int, Any]] = deque()
        # Those of partitions revoked and awaiting the next assignment, kept apart: the
        # revoke committed before them, so run now they would run twice if the partition
        # moves. Back in ``_ready`` if it comes back; dropped if it goes.
        self._kept: dict[P, list[tuple[P, int, Any]]] = {}
        self._window = window
        self._metadata_max_bytes = metadata_max_bytes
        self._tracker = DeliveryTracker()
        self._partitions: dict[P, _Partition] = {}
        self._epochs = itertools.count(1)
        self.metadata_fallbacks = 0

    # -- assignment ---------------------------------------------------------------------

    def assigned(self, partitions: Iterable[P]) -> None:
        """A new assignment: revoked partitions not in it are forgotten, new ones start."""
        assigned = set(partitions)
        for tp in [tp for tp, p in self._partitions.items() if p.revoked and tp not in assigned]:
            self._forget(tp)
        for tp in assigned:
            state = self._partitions.get(tp)
            if state is None:
                self._partitions[tp] = _Partition(next(self._epochs))
            else:
                state.revoked = False
                self._ready.extendleft(reversed(self._kept.pop(tp, [])))

    def revoked(self, partitions: Iterable[P]) -> list[P]:
        """Mark ``partitions`` revoked; returns those that were owned."""
        revoked = [tp for tp in partitions if tp in self._partitions]
        for tp in revoked:
            self._partitions[tp].revoked = True
        if revoked and self._ready:
            kept = set(revoked)
            for entry in self._ready:
                if entry[0] in kept:
                    self._kept.setdefault(entry[0], []).append(entry)
            self._ready = deque(entry for entry in self._ready if entry[0] not in kept)
        return revoked

    def lost(self, partitions: Iterable[P]) -> None:
        """The group moved on without us: forget ``partitions`` at once."""
        for tp in list(partitions):
            self._forget(tp)

    def owned(self) -> set[P]:
        """The partitions assigned and not revoked."""
        return {tp for tp, p in self._partitions.items() if not p.revoked}

    def epoch(self, tp: P) -> int | None:
        """The assignment ``tp`` is in (revoked or not), or None when not assigned."""
        state = self._partitions.get(tp)
        return None if state is None else state.epoch

    def owned_epoch(self, tp: P) -> int | None:
        """Like ``epoch``, but None for a revoked partition too."""
        state = self._partitions.get(tp)
        return None if state is None or state.revoked else state.epoch

    # -- reading ------------------------------------------------------------------------

    def needs_finished(self) -> set[P]:
        """Owned partitions whose committed metadata was not read yet."""
        return {tp for tp, p in self._partitions.items() if not p.revoked and p.inherited is None}

    def inherit(self, tp: P, finished: Iterable[int]) -> None:
        """The finished offsets the last commit of ``tp`` recorded (empty when none)."""
        state = self._partitions.get(tp)
        if state is not None and state.inherited is None:
            state.inherited = frozenset(finished)

    def read(self, tp: P, first_offset: int) -> None:
        """Records of ``tp`` were read from ``first_offset`` (the first such note counts)."""
        state = self._partitions.get(tp)
        if state is not None and state.start_offset is None:
            state.start_offset = first_offset

    def position_known(self, tp: P, position: int) -> None:
        """The consumer's position in ``tp`` before a poll: the first one counts."""
        state = self._partitions.get(tp)
        if state is not None and state.first_position is None:
            state.first_position = position

    def take(self, tp: P, offsets: Sequence[int]) -> Taken:
        """Start the records at ``offsets`` (ascending) while the span stays in the window.

        Inherited finished offsets are taken and done at once: no job runs for them.
        Nothing is taken for a partition not assigned, or whose finished offsets were
        not read yet (``inherit``), or revoked and awaiting the next assignment (its
        revoke commit is before these records: run here, they would run again on its
        next owner): its records are to be read again.
        """
        taken = Taken()
        state = self._partitions.get(tp)
        if state is None or state.inherited is None or state.revoked:
            return taken
        inherited = state.inherited or frozenset()
        lowest = self._tracker.lowest_pending(tp)
        for offset in offsets:
            if lowest is None:
                lowest = offset
            if offset + 1 - lowest > self._window:
                break
            self._tracker.started(tp, offset)
            if offset in inherited:
                self._tracker.done(tp, offset)
                taken.finished.add(offset)
                lowest = self._tracker.lowest_pending(tp)
            taken.count += 1
        return taken

    def skipped_to(self, tp: P, position: int) -> None:
        """The consumer moved on to ``position`` past records it never returned."""
        state = self._partitions.get(tp)
        if state is None or state.revoked:
            return
        if state.first_position is None:
            state.first_position = position
        self._tracker.skipped_to(tp, position, state.first_position)

    def unreadable(self, tp: P, first: int, last: int) -> None:
        """A batch ``first``-``last`` is set aside: pending until both ends are done."""
        self._tracker.started(tp, first)
        self._tracker.started(tp, last)
        self.read(tp, first)

    def done(self, tp: P, offset: int, epoch: int) -> bool:
        """The job at ``offset`` is done; False if it belongs to an earlier assignment.

        A job of its key held back is then released: ``ready`` hands it out.
        """
        state = self._partitions.get(tp)
        if state is None or state.epoch != epoch:
            return False  # the partition went to another worker, which redoes the job
        if not self._tracker.done(tp, offset):
            return False
        released = state.gate.done(offset)
        if released:
            entries = ((tp, epoch, item) for item in released)
            if state.revoked:
                self._kept.setdefault(tp, []).extend(entries)
            else:
                self._ready.extend(entries)
        return True

    # -- ordering -----------------------------------------------------------------------

    def admit(self, tp: P, offset: int, key: Hashable | None, item: Any) -> bool:
        """Whether the job ``item`` at ``offset`` may run now; if not, it is held.

        ``key`` is the record's key (None: keyless). Call it in offset order, for the
        records ``take`` started that carry a job.
        """
        state = self._partitions.get(tp)
        if state is None or self._ordering == Ordering.NONE:
            return True
        gate_key = tp if self._ordering == Ordering.PARTITION else key
        return state.gate.offer(offset, gate_key, item)

    def set_aside(self, tp: P, epoch: int, items: Iterable[Any]) -> None:
        """Jobs admitted (``admit``) but read ahead of the room for them: ``ready`` hands
        them out, after the ones already waiting, while their assignment lasts."""
        self._ready.extend((tp, epoch, item) for item in items)

    def ready(self, limit: int) -> list[Any]:
        """Up to ``limit`` jobs released or set aside, oldest first.

        None of a partition revoked and awaiting the next assignment: those are kept
        apart, and handed out if it comes back (the next owner reads them again if not).
        """
        out: list[Any] = []
        while self._ready and len(out) < limit:
            entry = self._ready.popleft()
            state = self._partitions.get(entry[0])
            if state is not None and state.epoch == entry[1]:
                out.append(entry[2])
        return out

    def waiting_to_hand_out(self) -> int:
        """How many jobs ``ready`` would hand out now: those of partitions revoked and
        awaiting their next assignment are not counted (a fetch that counted them polled
        without waiting, again and again, while a rebalance went on)."""
        return len(self._ready)

    def holding(self) -> bool:
        """Whether any job is held, or released and not handed out yet, that an ack or
        a fetch can move on (not those kept for a revoked partition's return)."""
        return bool(self._ready) or any(p.gate.held() for p in self._partitions.values())

    # -- window -------------------------------------------------------------------------

    def span(self, tp: P) -> int:
        """Offsets from the lowest unfinished to the newest taken: what a restart rereads."""
        return self._tracker.span(tp)

    def in_flight(self, tp: P) -> int:
        """How many jobs of ``tp`` were taken and are not done yet."""
        return self._tracker.in_flight(tp)

    def handed_out(self, tp: P) -> int:
        """Jobs of ``tp`` not done, less those held for their key or not handed out yet:
        the ones that can finish without another fetch."""
        state = self._partitions.get(tp)
        if state is None:
            return 0
        ready = sum(1 for r in self._ready if r[0] == tp and r[1] == state.epoch)
        ready += len(self._kept.get(tp, ()))
        waiting = state.gate.held() + ready
        return max(0, self._tracker.in_flight(tp) - waiting)

    def held(self, tp: P) -> int:
        """How many offsets of ``tp`` are kept in memory: at most the window."""
        return self._tracker.held(tp)

    def full(self) -> set[P]:
        """Owned partitions whose span reached the window: to be paused."""
        return {tp for tp in self.owned() if self._tracker.span(tp) >= self._window}

    # -- commits ------------------------------------------------------------------------

    def committable(self, partitions: Iterable[P]) -> dict[P, Commit]:
        """What to commit for ``partitions``: those whose position or finished set moved."""
        commits = {}
        for tp in partitions:
            state = self._partitions.get(tp)
            position = self._tracker.position(tp)
            if state is None or position is None:
                continue
            committed = self._tracker.committed(tp)
            metadata, complete = self._metadata(state, tp, position)
            moved = committed is None or position > committed
            if moved or (position == committed and metadata != state.committed_metadata):
                commits[tp] = Commit(position, metadata, state.epoch)
                self.metadata_fallbacks += not complete
        return commits

    def _metadata(self, state: _Partition, tp: P, position: int) -> tuple[str, bool]:
        finished = set(self._tracker.finished_above(tp))
        finished.update(o for o in state.inherited or () if o >= position)
        return finished_offsets.encode_within(position, finished, self._metadata_max_bytes)

    def committed(self, tp: P, commit: Commit) -> None:
        """The broker confirmed ``commit`` (ignored if ``tp`` was assigned anew since)."""
        state = self._partitions.get(tp)
        if state is None or state.epoch != commit.epoch:
            return
        committed = self._tracker.committed(tp)
        if committed is not None and commit.offset < committed:
            return  # confirmed out of order: positions only grow
        self._tracker.mark_committed(tp, commit.offset)
        state.committed_here = True
        state.committed_metadata = commit.metadata

    def unfinished_from(self, tp: P) -> tuple[int, int] | None:
        """Where ``tp``'s records not yet taken begin, and how many taken ones are not
        done: a backlog is the records from there to the end, plus those. None when
        neither is known (not owned, nothing read)."""
        state = self._partitions.get(tp)
        if state is None:
            return None
        next_to_start = self._tracker.next_to_start(tp)
        if next_to_start is None:
            position = self.lag_position(tp)
            return None if position is None else (position, 0)
        return next_to_start, self._tracker.in_flight(tp)

    def lag_position(self, tp: P) -> int | None:
        """The group's position for lag: this worker's last commit, else where it began."""
        state = self._partitions.get(tp)
        if state is None:
            return None
        if state.committed_here:
            return self._tracker.committed(tp)
        return state.start_offset

    def _forget(self, tp: P) -> None:
        self._tracker.forget(tp)
        self._partitions.pop(tp, None)
        self._kept.pop(tp, None)
        if any(r[0] == tp for r in self._ready):
            self._ready = deque(r for r in self._ready if r[0] != tp)
