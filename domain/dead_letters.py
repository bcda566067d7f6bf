"""What the worker set aside, as an operator reads it back: the letters of a dead-letter topic.

Three kinds are written by workers (``LetterKind``); anything else found in such a topic
is FOREIGN and is listed, never replayed. A letter is decoded once, by the adapter that
reads it; the application decides from these fields alone what to do with it.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from jobworker.domain.model import JobResult

Headers = tuple[tuple[str, bytes], ...]

# Headers a replayed record carries: where it was replayed from and when, and how many
# times its job has been replayed. A worker that dead-letters it again keeps them (it
# keeps a record's own headers), so the count goes on growing across round trips.
REPLAY_COUNT_HEADER = "x-replay-count"
REPLAY_HEADER_PREFIX = "x-replay-"
DEAD_LETTER_HEADER_PREFIX = "x-dlq-"


class LetterKind(enum.StrEnum):
    JOB = "job"  # a record of the jobs topic that held no job, byte for byte
    BATCH = "batch"  # a record batch the consumer could not decode, as the broker sent it
    RESULT = "result"  # a result Core refused for good
    FOREIGN = "foreign"  # no dead-letter headers: not written by a worker


@dataclass(frozen=True, slots=True)
class RecordCopy:
    """A record to write back to a jobs topic: a job letter's own, or one of a batch's."""

    key: bytes | None
    value: bytes | None
    headers: Headers
    source_offset: int


@dataclass(frozen=True, slots=True)
class Letter:
    """One record of a dead-letter topic, decoded as far as it can be.

    ``unreplayable`` says why replay cannot send it (its value was not kept, a batch's
    codec is missing, it is not a worker's letter), else None. ``records`` are what a
    JOB or BATCH letter replays as (their headers without the dead-letter ones);
    ``result`` what a RESULT letter does. ``content``
    is the decoded value for display (a JobTask's or JobResult's fields, a batch's
    records), ``replays`` how many times its job was replayed before it came back.
    """

    topic: str
    partition: int
    offset: int
    timestamp_ms: int
    kind: LetterKind
    reason: str
    cause: str  # the reason without what is particular to one letter: for counting
    size: int
    headers: Headers = ()
    source_topic: str | None = None
    source_partition: int | None = None
    source_offset: int | None = None
    job_id: str | None = None
    job_type: str | None = None
    replays: int = 0
    content: Any = None
    records: tuple[RecordCopy, ...] = ()
    result: JobResult | None = None
    unreplayable: str | None = None

    @property
    def where(self) -> str:
        """The letter's place in its topic, as the CLI names it: ``partition:offset``."""
        return f"{self.partition}:{self.offset}"


@dataclass(frozen=True, slots=True)
class LetterFilter:
    """Which letters an operation takes. Unset fields take every letter.

    ``reason`` matches a part of the reason, ignoring case, ``cause`` the whole cause
    (as letters are counted); ``since_ms`` and ``until_ms`` bound the letter's timestamp
    (the time it was dead-lettered); ``offset`` (with ``partition``) takes one letter.
    """

    reason: str | None = None
    cause: str | None = None
    partition: int | None = None
    offset: int | None = None
    job_type: str | None = None
    job_id: str | None = None
    since_ms: int | None = None
    until_ms: int | None = None
    limit: int | None = None

    def matches(self, letter: Letter) -> bool:
        return (
            (self.partition is None or letter.partition == self.partition)
            and (self.offset is None or letter.offset == self.offset)
            and (self.reason is None or self.reason.casefold() in letter.reason.casefold())
            and (self.cause is None or letter.cause == self.cause)
            and (self.job_type is None or (letter.job_type or "").upper() == self.job_type.upper())
            and (self.job_id is None or letter.job_id == self.job_id)
            and (self.since_ms is None or letter.timestamp_ms >= self.since_ms)
            and (self.until_ms is None or letter.timestamp_ms < self.until_ms)
        )


class DeadLetterTopicMissing(LookupError):  # noqa: N818 - reads as the fact it is
    """The dead-letter topic is not there: nothing was ever dead-lettered to it, or the
    name is wrong."""

    def __init__(self, topic: str) -> None:
        super().__init__(topic)
        self.topic = topic


@dataclass(slots=True)
class ReplayProgress:
    """What replay has sent of one partition: every offset below ``next_offset``, and
    those in ``done`` above it.

    Letters left behind (filtered out, skipped, refused again) are gaps: the next replay
    looks at them again, and never at a letter already sent. ``gaps`` counts them in
    runs, which is what the checkpoint's room is measured in.
    """

    next_offset: int | None = None
    done: set[int] = field(default_factory=set)
    _runs: int = field(init=False, default=0)

    def __post_init__(self) -> None:
        # Each run of done offsets above next_offset has a gap before it.
        self._runs = sum(1 for offset in self.done if offset - 1 not in self.done)

    @property
    def gaps(self) -> int:
        return self._runs

    def is_done(self, offset: int) -> bool:
        return (self.next_offset is not None and offset < self.next_offset) or offset in self.done

    def seen(self, offset: int) -> None:
        """A letter was read: a partition never replayed starts at its first letter."""
        if self.next_offset is None:
            self.next_offset = offset

    def gaps_after_marking(self, offset: int) -> int:
        """How many gaps there would be once ``offset`` is marked."""
        if self.is_done(offset):
            return self._runs
        if offset == self.next_offset:
            return self._runs - (offset + 1 in self.done)
        return self._runs + 1 - (offset - 1 in self.done) - (offset + 1 in self.done)

    def mark(self, offset: int) -> None:
        """The letter at ``offset`` was sent and acknowledged."""
        self.seen(offset)
        self._runs = self.gaps_after_marking(offset)
        if self.is_done(offset):
            return
        if offset != self.next_offset:
            self.done.add(offset)
            return
        offset += 1
        while offset in self.done:
            self.done.discard(offset)
            offset += 1
        self.next_offset = offset


ReplayPositions = Mapping[int, ReplayProgress]
