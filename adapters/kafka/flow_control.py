"""Flow control of the Kafka source: which partitions are paused, how long a poll waits.

A partition whose window is full (its span, from the lowest unfinished offset to the
newest taken one, reached ``max_in_flight_per_partition``) is paused until its lowest
unfinished job is done; with no room at all (the engine's queue is full) every owned
partition is. Polling goes on meanwhile: that is what keeps the worker in its group.

A poll waits less than the engine offers while something it cannot see may change:
acks arriving from other greenlets open windows, release held jobs and make commits due.
"""

from __future__ import annotations

from collections.abc import Iterable

from jobworker.adapters.kafka.book import SharedBook
from jobworker.adapters.kafka.consumer import SourceConsumer, TopicPartition

# While jobs are held for their key, polls are this short, so that a released job waits
# for a poll no longer than this.
_HELD_POLL_S = 0.02
# While jobs are out (taken, not yet acked), polls are at most this long.
_JOBS_OUT_POLL_S = 0.05


class FlowControl:
    """Pauses and resumes ``consumer``'s partitions from what ``shared`` says is full."""

    def __init__(self, consumer: SourceConsumer, shared: SharedBook) -> None:
        self._consumer = consumer
        self._shared = shared
        # Set by each fetch: partitions assigned meanwhile are paused at once.
        self._no_room = False

    def no_room(self) -> None:
        """The engine takes no jobs now: pause every owned partition."""
        self._no_room = True
        with self._shared as book:
            owned = book.partitions.owned()
        self._consumer.pause(owned)

    def poll_timeout(self, timeout_s: float, *, jobs_ready: bool) -> float:
        """How long the next poll may wait, at most ``timeout_s``, after pausing the
        partitions whose window is full and resuming the others. ``jobs_ready``: jobs
        are already there to hand out."""
        self._no_room = False
        paused_for_window = self._pause_full_partitions()
        with self._shared as book:
            holding = book.partitions.holding()
            commit_in = book.cadence.seconds_until_due()
            jobs_out = any(book.partitions.in_flight(tp) for tp in book.partitions.owned())
        if jobs_out:
            # Their acks come from other greenlets while this poll waits: the commit
            # they make due should not wait out a whole poll (what a crash redoes).
            timeout_s = min(timeout_s, _JOBS_OUT_POLL_S)
        if jobs_ready or holding or paused_for_window:
            # Released jobs go out at once; held ones are released, and full
            # windows opened, by acks, which a long poll would not see.
            timeout_s = 0.0 if jobs_ready else min(timeout_s, _HELD_POLL_S)
        if commit_in is not None:
            timeout_s = min(timeout_s, commit_in)  # done work is committed on time
        return timeout_s

    def on_assigned(self, assigned: Iterable[TopicPartition]) -> None:
        """Partitions just assigned (on the I/O thread): paused if there is no room."""
        if self._no_room:
            self._consumer.pause(assigned)

    def _pause_full_partitions(self) -> bool:
        """Pause the partitions whose window is full, resume the others; True if any
        owned partition is paused for its window."""
        with self._shared as book:
            owned = book.partitions.owned()
            full = book.partitions.full()
        paused = self._consumer.paused()
        self._consumer.pause(full - paused)
        self._consumer.resume((owned - full) & paused)
        return bool(full & owned)
