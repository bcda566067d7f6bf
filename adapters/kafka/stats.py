"""The Kafka source's totals since it started, as one typed snapshot for metrics."""

from __future__ import annotations

import time
from dataclasses import dataclass, replace


def unix_ms() -> int:
    """Now, in Unix milliseconds (the times ``SourceStats`` keeps)."""
    return int(time.time() * 1000)


@dataclass(frozen=True, slots=True)
class SourceStats:
    """What the source has done since it started (``KafkaJobSource.stats``).

    Frozen: the source swaps in a new snapshot under its lock, and a reader on another
    greenlet (a metrics scrape) takes the current one whole, without the lock.
    """

    # Offset commits the broker confirmed.
    offset_commits: int = 0
    # Records written to the dead-letter topic: poison records and unreadable batches.
    dlq_records: int = 0
    # Record batches the consumer could not decode.
    unreadable_batches: int = 0
    # Records skipped because the last commit's metadata records them as done.
    finished_skipped: int = 0
    # Commits whose finished offsets did not all fit the metadata size limit.
    commit_metadata_fallbacks: int = 0
    # When a poll last returned (records or none) and the broker last confirmed a
    # commit, in Unix milliseconds; None: not yet. A poll that failed does not count.
    last_poll_at_ms: int | None = None
    last_commit_at_ms: int | None = None

    def plus(
        self,
        *,
        offset_commits: int = 0,
        dlq_records: int = 0,
        unreadable_batches: int = 0,
        finished_skipped: int = 0,
    ) -> SourceStats:
        """These totals with the given counts added."""
        return replace(
            self,
            offset_commits=self.offset_commits + offset_commits,
            dlq_records=self.dlq_records + dlq_records,
            unreadable_batches=self.unreadable_batches + unreadable_batches,
            finished_skipped=self.finished_skipped + finished_skipped,
        )

    def polled(self, at_ms: int) -> SourceStats:
        """These totals, with a poll that returned at ``at_ms``."""
        return replace(self, last_poll_at_ms=at_ms)

    def committed(self, at_ms: int) -> SourceStats:
        """These totals, with one more commit confirmed at ``at_ms``."""
        return replace(self, offset_commits=self.offset_commits + 1, last_commit_at_ms=at_ms)
