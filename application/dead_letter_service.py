"""Looking into a dead-letter topic, and sending what it holds back where it belongs.

Replay sends job and batch letters back to their jobs topic (their records, with
provenance headers) and result letters to Core. It never deletes a letter and never
sends one twice by accident: a letter counts as replayed once the broker or Core
acknowledged it, and the checkpoint records exactly those, after every chunk and
before returning, so a second replay (or one after Ctrl-C) goes on where the first
stopped. Letters left behind (filtered out, skipped, refused again) stay in the
checkpoint's gaps, to be looked at again by the next replay.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol, TypeVar

from jobworker.domain.dead_letters import (
    DEAD_LETTER_HEADER_PREFIX,
    REPLAY_COUNT_HEADER,
    REPLAY_HEADER_PREFIX,
    Letter,
    LetterFilter,
    LetterKind,
    RecordCopy,
    ReplayProgress,
)
from jobworker.domain.errors import (
    AccessRefused,
    BatchesUnsupported,
    JobWorkerError,
    ResultRefused,
    ResultTooLarge,
)
from jobworker.domain.ports import DeadLetterReader, RecordRepublisher, ReplayCheckpoint, ResultSink

_T = TypeVar("_T")

CORE = "Core"
# The target of a letter that copies one sent earlier in the same replay (``_COPY`` and
# the first one's place): nothing is sent for it.
_COPY = "(copy of) "
_EVERY_LETTER = LetterFilter()
# A chunk is sent, acknowledged and checkpointed before the next: at most this many
# letters, or what was sent within CHUNK_S. A process killed outright (SIGKILL) sends
# at most its last chunk again; any stop the process sees loses nothing.
CHUNK_LETTERS = 100
CHUNK_S = 0.5


@dataclass(frozen=True, slots=True)
class ReplayOptions:
    """``to_topic`` replaces job letters' source topics; ``rate_per_s`` caps records (or
    results) sent per second; ``force`` ignores ``max_replays``; ``from_start`` ignores
    what earlier replays sent."""

    max_replays: int
    to_topic: str | None = None
    rate_per_s: float | None = None
    dry_run: bool = False
    from_start: bool = False
    force: bool = False


class ReplayListener(Protocol):
    """Hears what replay does, letter by letter (the CLI prints it; a page could show it)."""

    def sent(self, letter: Letter, target: str) -> None:
        """``letter`` was acknowledged at ``target`` (or would be, in a dry run)."""
        ...

    def left(self, letter: Letter, why: str, *, refused: bool) -> None:
        """``letter`` was not replayed: skipped (``why``), or refused again by ``target``."""
        ...


@dataclass(slots=True)
class ReplaySummary:
    """What one replay did. ``stopped_by`` is why it ended early (an error), else None."""

    dry_run: bool
    replayed: Counter[str] = field(default_factory=Counter)  # by cause
    targets: Counter[str] = field(default_factory=Counter)  # by topic, or Core
    skipped: Counter[str] = field(default_factory=Counter)  # by why
    refused: list[tuple[Letter, str]] = field(default_factory=list)
    resumed: bool = False  # an earlier replay's checkpoint was taken into account
    interrupted: bool = False
    stopped_by: JobWorkerError | None = None

    @property
    def replayed_total(self) -> int:
        return sum(self.replayed.values())


class DeadLetterService:
    """The operations on one dead-letter topic: list, show, replay.

    The republisher and the sink are opened on first use: listing opens neither, and a
    dry run sends nothing. ``clock`` and ``sleep`` pace the replay (``--rate``).
    """

    def __init__(
        self,
        reader: DeadLetterReader,
        *,
        checkpoint: Callable[[], ReplayCheckpoint] | None = None,
        republisher: Callable[[], RecordRepublisher] | None = None,
        sink: Callable[[], ResultSink] | None = None,
        clock: Callable[[], float] = time.monotonic,
        wall_clock_ms: Callable[[], int] = lambda: time.time_ns() // 1_000_000,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.topic = reader.topic
        self._reader = reader
        self._open_checkpoint = checkpoint
        self._open_republisher = republisher
        self._open_sink = sink
        self._clock = clock
        self._wall_clock_ms = wall_clock_ms
        self._sleep = sleep

    def partitions(self) -> list[int]:
        """The topic's partitions."""
        return self._reader.partitions()

    def letters(self, which: LetterFilter = _EVERY_LETTER) -> Iterator[Letter]:
        """The letters ``which`` takes, first to last by partition, at most ``which.limit``."""
        partitions = None if which.partition is None else [which.partition]
        taken = 0
        for letter in self._reader.letters({}, partitions=partitions, since_ms=which.since_ms):
            if which.limit is not None and taken >= which.limit:
                return
            if which.matches(letter):
                taken += 1
                yield letter

    def letters_from(self, start_at: Mapping[int, int]) -> Iterator[Letter]:
        """Every letter from ``start_at[partition]`` on (a partition not named: from its
        first), up to where each partition ended when asked: for a reader keeping up
        with the topic, asking again from after the last letter it saw."""
        return self._reader.letters(start_at)

    def letter_at(self, partition: int, offset: int) -> Letter | None:
        """The letter at ``offset`` of ``partition``, or None if there is none."""
        for letter in self._reader.letters({partition: offset}, partitions=[partition]):
            return letter if letter.offset == offset else None
        return None

    def replay(
        self,
        which: LetterFilter,
        options: ReplayOptions,
        listener: ReplayListener,
        should_stop: Callable[[], bool] = lambda: False,
    ) -> ReplaySummary:
        """Send the letters ``which`` takes back where they belong (see module docstring).

        ``should_stop`` is asked before each letter: once it says so, what was sent is
        acknowledged and checkpointed, and the summary says ``interrupted``.
        """
        run = _Replay(self, which, options, listener)
        try:
            try:
                run.go(should_stop)
            except JobWorkerError as error:
                run.summary.stopped_by = error
            try:
                run.flush()  # what was sent before a stop is checkpointed all the same
            except JobWorkerError as error:
                run.summary.stopped_by = run.summary.stopped_by or error
        finally:
            run.close()
        return run.summary

    def close(self) -> None:
        self._reader.close()


class _Replay:
    """One replay: its progress, the chunk in flight, and what it opened."""

    def __init__(
        self,
        service: DeadLetterService,
        which: LetterFilter,
        options: ReplayOptions,
        listener: ReplayListener,
    ) -> None:
        self._service = service
        self._which = which
        self._options = options
        self._listener = listener
        self.summary = ReplaySummary(dry_run=options.dry_run)
        self._checkpoint: ReplayCheckpoint | None = None
        self._republisher: RecordRepublisher | None = None
        self._sink: ResultSink | None = None
        self._batches = True
        self._progress: dict[int, ReplayProgress] = {}
        self._touched: set[int] = set()
        # Source records sent in this replay, to the letter that carried them: a worker
        # that died between writing a dead letter and committing past its record wrote
        # it twice; the second copy is checkpointed with the first, never sent.
        self._sources: dict[tuple[str, int, int, int], str] = {}
        self._chunk: list[tuple[Letter, str]] = []
        # Each partition's progress as it will be once the chunk is acknowledged: the
        # checkpoint's room is checked as if it were, else letters between ones left
        # behind, each checked alone, open more gaps than it holds.
        self._projected: dict[int, ReplayProgress] = {}
        self._chunk_started = 0.0
        self._next_send_at = 0.0

    def go(self, should_stop: Callable[[], bool]) -> None:
        service, which = self._service, self._which
        if service._open_checkpoint is None:
            raise JobWorkerError("replay needs a checkpoint")  # a wiring mistake
        self._checkpoint = service._open_checkpoint()
        self._progress = {} if self._options.from_start else self._checkpoint.load()
        self.summary.resumed = bool(self._progress)
        if not self._options.dry_run:
            self._checkpoint.check_writable()
        start_at = {
            partition: progress.next_offset
            for partition, progress in self._progress.items()
            if progress.next_offset is not None
        }
        partitions = None if which.partition is None else [which.partition]
        if which.since_ms is not None:
            self._start_at_first_letters(partitions)
        taken = 0
        letters = service._reader.letters(start_at, partitions=partitions, since_ms=which.since_ms)
        for letter in letters:
            if should_stop():
                self.summary.interrupted = True
                break
            progress = self._progress.setdefault(letter.partition, ReplayProgress())
            progress.seen(letter.offset)
            if progress.is_done(letter.offset):
                continue
            if not which.matches(letter):
                continue
            if which.limit is not None and taken >= which.limit:
                break
            taken += 1
            self._take(letter, progress)

    def _start_at_first_letters(self, partitions: list[int] | None) -> None:
        """Start the progress of partitions never replayed at their first letter: read
        from ``since_ms``, the first letter read is not the first, and those before it
        are left behind for a later replay, not taken as sent."""
        reader = self._service._reader
        for partition in partitions or reader.partitions():
            if partition in self._progress:
                continue
            for first in reader.letters({}, partitions=[partition]):
                self._progress[partition] = ReplayProgress()
                self._progress[partition].seen(first.offset)
                break

    def _take(self, letter: Letter, progress: ReplayProgress) -> None:
        target, why = self._target(letter)
        if target is None:
            self._leave(letter, why)
            return
        assert self._checkpoint is not None
        first_left = letter.offset if progress.next_offset is None else progress.next_offset
        if letter.offset - first_left >= self._checkpoint.max_span:
            self._leave(
                letter,
                f"the checkpoint of partition {letter.partition} reaches"
                f" {self._checkpoint.max_span} letters past the first not replayed"
                f" ({progress.next_offset}): replay or filter that one first, or use"
                " --from-start",
            )
            return
        projected = self._projected.get(letter.partition)
        if projected is None:
            projected = ReplayProgress(progress.next_offset, set(progress.done))
            self._projected[letter.partition] = projected
        if projected.gaps_after_marking(letter.offset) > self._checkpoint.max_gaps:
            self._leave(
                letter,
                f"the checkpoint of partition {letter.partition} holds no more gaps"
                f" ({self._checkpoint.max_gaps} runs of letters left behind before it):"
                " replay or filter those first, or use --from-start",
            )
            return
        projected.mark(letter.offset)
        first = self._first_copy(letter)
        if first is not None and self._options.dry_run:
            self._leave(letter, _copy_of(first))
            return
        if self._options.dry_run:
            self._count_sent(letter, target)
            return
        if not self._chunk:
            self._chunk_started = self._service._clock()
        if first is None:
            self._send(letter, target)
        self._chunk.append((letter, target if first is None else _COPY + first))
        full = len(self._chunk) >= CHUNK_LETTERS
        if full or self._service._clock() - self._chunk_started >= CHUNK_S:
            self.flush()

    def _first_copy(self, letter: Letter) -> str | None:
        """The letter sent in this replay that ``letter`` copies; None (noting ``letter``
        as the first) if none."""
        if letter.kind is LetterKind.RESULT or letter.source_topic is None:
            return None  # Core takes a result twice as once (by job id)
        if letter.source_partition is None or letter.source_offset is None:
            return None
        source = (
            letter.source_topic,
            letter.source_partition,
            letter.source_offset,
            letter.replays,
        )
        first = self._sources.setdefault(source, letter.where)
        return None if first == letter.where else first

    def _target(self, letter: Letter) -> tuple[str | None, str]:
        options = self._options
        if letter.unreplayable is not None:
            return None, letter.unreplayable
        if letter.replays >= options.max_replays and not options.force:
            return None, (
                f"replayed {letter.replays} time(s) already (DLQ_MAX_REPLAYS="
                f"{options.max_replays}; --force sends it again)"
            )
        if letter.kind is LetterKind.RESULT:
            return CORE, ""
        target = options.to_topic or letter.source_topic
        if target is None:
            return None, "no source topic in its headers: say where with --to"
        return target, ""

    def _send(self, letter: Letter, target: str) -> None:
        if letter.kind is LetterKind.RESULT:
            self._pace()
            return  # results go to Core a chunk at a time, in flush
        if self._republisher is None:
            self._republisher = self._opened(self._service._open_republisher, "a republisher")
        for record in letter.records:
            self._pace()
            self._republisher.send(target, self._provenanced(record, letter))

    def _provenanced(self, record: RecordCopy, letter: Letter) -> RecordCopy:
        own = [
            (name, value)
            for name, value in record.headers
            if not name.startswith((REPLAY_HEADER_PREFIX, DEAD_LETTER_HEADER_PREFIX))
        ]
        ours = [
            (REPLAY_COUNT_HEADER, str(letter.replays + 1).encode()),
            ("x-replay-dlq-topic", letter.topic.encode()),
            ("x-replay-dlq-partition", str(letter.partition).encode()),
            ("x-replay-dlq-offset", str(letter.offset).encode()),
            ("x-replay-at-ms", str(self._service._wall_clock_ms()).encode()),
        ]
        if letter.kind is LetterKind.BATCH:
            ours.append(("x-replay-source-offset", str(record.source_offset).encode()))
        return RecordCopy(record.key, record.value, (*own, *ours), record.source_offset)

    def _pace(self) -> None:
        rate = self._options.rate_per_s
        if not rate:
            return
        now = self._service._clock()
        if self._next_send_at > now:
            self._service._sleep(self._next_send_at - now)
        self._next_send_at = max(now, self._next_send_at) + 1.0 / rate

    def flush(self) -> None:
        """Wait for the chunk's acknowledgements, then checkpoint what they cover; raise
        what stopped a letter of it from being sent, once the others are checkpointed."""
        chunk, self._chunk = self._chunk, []
        self._projected.clear()  # from here on, ``progress`` says what was acknowledged
        if not chunk:
            return
        outcomes = self._record_outcomes(chunk)
        try:
            outcomes.update(self._result_outcomes(chunk))
        except JobWorkerError as error:
            # Core (or its client) failed the chunk's results as a whole: the records
            # acknowledged above are still checkpointed, not sent again next time.
            results = [letter for letter, _ in chunk if letter.kind is LetterKind.RESULT]
            outcomes.update({(letter.partition, letter.offset): error for letter in results})
        stop: JobWorkerError | None = None
        for letter, target in chunk:
            outcome = outcomes.get((letter.partition, letter.offset))
            if outcome is None:
                self._progress[letter.partition].mark(letter.offset)
                self._touched.add(letter.partition)
                if target.startswith(_COPY):
                    self._leave(letter, _copy_of(target.removeprefix(_COPY)))
                else:
                    self._count_sent(letter, target)
            elif isinstance(outcome, _Refused):
                self.summary.refused.append((letter, outcome.why))
                self._listener.left(letter, outcome.why, refused=True)
            else:
                stop = stop or outcome
        self._save()
        if stop is not None:
            raise stop

    def _record_outcomes(
        self, chunk: Sequence[tuple[Letter, str]]
    ) -> dict[tuple[int, int], JobWorkerError | _Refused]:
        records = [
            letter
            for letter, target in chunk
            if letter.kind is not LetterKind.RESULT and not target.startswith(_COPY)
        ]
        if not records:
            return {}
        assert self._republisher is not None
        acks = iter(self._republisher.flush())
        outcomes: dict[tuple[int, int], JobWorkerError | _Refused] = {}
        for letter in records:
            for _record in letter.records:
                error = next(acks, None)
                if error is not None and (letter.partition, letter.offset) not in outcomes:
                    outcomes[(letter.partition, letter.offset)] = (
                        error
                        if isinstance(error, AccessRefused)
                        else JobWorkerError(f"Kafka did not take letter {letter.where}: {error}")
                    )
        return outcomes

    def _result_outcomes(
        self, chunk: Sequence[tuple[Letter, str]]
    ) -> dict[tuple[int, int], JobWorkerError | _Refused]:
        letters = [letter for letter, _ in chunk if letter.kind is LetterKind.RESULT]
        if not letters:
            return {}
        if self._sink is None:
            self._sink = self._opened(self._service._open_sink, "a Core client")
        if self._batches and len(letters) > 1:
            try:
                self._sink.send_batch([letter.result for letter in letters if letter.result])
                return {}
            except BatchesUnsupported:
                self._batches = False  # for good, as the worker does
            except (ResultRefused, ResultTooLarge):
                pass  # which one: sent one at a time below
        outcomes: dict[tuple[int, int], JobWorkerError | _Refused] = {}
        for index, letter in enumerate(letters):
            assert letter.result is not None
            try:
                self._sink.send(letter.result)
            except (ResultRefused, ResultTooLarge) as refusal:
                outcomes[(letter.partition, letter.offset)] = _Refused(str(refusal))
            except JobWorkerError as error:
                # Core went away: this and the rest of the chunk stay not replayed.
                for rest in letters[index:]:
                    outcomes[(rest.partition, rest.offset)] = error
                break
        return outcomes

    def _count_sent(self, letter: Letter, target: str) -> None:
        self.summary.replayed[letter.cause] += 1
        self.summary.targets[target] += 1
        self._listener.sent(letter, target)

    def _leave(self, letter: Letter, why: str) -> None:
        self.summary.skipped[why] += 1
        self._listener.left(letter, why, refused=False)

    def _save(self) -> None:
        if self._options.dry_run or not self._touched or self._checkpoint is None:
            return
        self._checkpoint.save({p: self._progress[p] for p in self._touched})
        self._touched.clear()

    def _opened(self, opener: Callable[[], _T] | None, what: str) -> _T:
        if opener is None:
            raise JobWorkerError(f"replay of {self._service.topic} needs {what}")
        return opener()

    def close(self) -> None:
        for part in (self._republisher, self._sink, self._checkpoint):
            if part is not None:
                part.close()


def _copy_of(first: str) -> str:
    return f"a copy of letter {first} (the same source record), sent in this replay"


@dataclass(frozen=True, slots=True)
class _Refused:
    why: str
