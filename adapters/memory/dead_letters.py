"""In-memory dead-letter topic, replay checkpoint and republisher: replay without a broker."""

from __future__ import annotations

from collections.abc import Collection, Iterator, Mapping

from jobworker.domain.dead_letters import DeadLetterTopicMissing, Letter, RecordCopy, ReplayProgress
from jobworker.domain.errors import AccessRefused


class InMemoryDeadLetterReader:
    """A ``DeadLetterReader`` over ``letters`` by partition (each list in offset order).

    ``None`` stands for a topic that is not there. ``letters`` is read once per call, up
    to its length at the call, as the port's "up to where the partition ended" asks:
    letters appended meanwhile wait for the next call.
    """

    def __init__(self, topic: str, letters: Mapping[int, list[Letter]] | None) -> None:
        self.topic = topic
        self.by_partition = None if letters is None else {p: list(ls) for p, ls in letters.items()}
        self.closed = False

    def partitions(self) -> list[int]:
        if self.by_partition is None:
            raise DeadLetterTopicMissing(self.topic)
        return sorted(self.by_partition)

    def letters(
        self,
        start_at: Mapping[int, int],
        *,
        partitions: Collection[int] | None = None,
        since_ms: int | None = None,
    ) -> Iterator[Letter]:
        existing = self.partitions()  # raises here, on the call, as the Kafka reader does
        assert self.by_partition is not None
        chosen = existing if partitions is None else sorted(partitions)
        ends = {p: len(self.by_partition.get(p, ())) for p in chosen}
        return self._read(chosen, ends, start_at, since_ms)

    def _read(
        self,
        partitions: list[int],
        ends: Mapping[int, int],
        start_at: Mapping[int, int],
        since_ms: int | None,
    ) -> Iterator[Letter]:
        assert self.by_partition is not None
        for partition in partitions:
            start = start_at.get(partition)
            # since_ms finds the first letter at that time or later; all after it follow,
            # whatever their own timestamps (as offsets_for_times does).
            found_since = since_ms is None
            for letter in self.by_partition.get(partition, [])[: ends[partition]]:
                if start is not None and letter.offset < start:
                    continue
                found_since = found_since or letter.timestamp_ms >= (since_ms or 0)
                if found_since:
                    yield letter

    def close(self) -> None:
        self.closed = True


class InMemoryReplayCheckpoint:
    """A ``ReplayCheckpoint`` keeping copies of what was saved in ``saved``, by partition.

    Copies both ways, as a real checkpoint stores and reads back: the service's progress
    changing after a save does not change what was saved. ``saves`` counts the calls.
    """

    def __init__(
        self,
        saved: Mapping[int, ReplayProgress] | None = None,
        *,
        max_gaps: int = 250,
        max_span: int = 4096 * 8 * 128,
    ) -> None:
        self.saved: dict[int, ReplayProgress] = {
            p: _copy(each) for p, each in (saved or {}).items()
        }
        self.max_gaps = max_gaps
        self.max_span = max_span
        # Set to an AccessRefused to refuse saving, as a group without READ does.
        self.refusal: AccessRefused | None = None
        self.saves = 0
        self.closed = False

    def load(self) -> dict[int, ReplayProgress]:
        return {partition: _copy(each) for partition, each in self.saved.items()}

    def check_writable(self) -> None:
        if self.refusal is not None:
            raise self.refusal

    def save(self, progress: Mapping[int, ReplayProgress]) -> None:
        self.check_writable()
        self.saves += 1
        for partition, each in progress.items():
            if each.next_offset is not None:
                self.saved[partition] = _copy(each)

    def close(self) -> None:
        self.closed = True


class InMemoryRecordRepublisher:
    """A ``RecordRepublisher`` appending each acknowledged ``(topic, record)`` to ``sent``.

    ``fail`` maps a record's ``source_offset`` to the error its ``flush`` outcome gives
    (a broker that refused it); such a record is not in ``sent``. ``flushes`` counts
    the calls that had records to wait for.
    """

    def __init__(self, fail: Mapping[int, BaseException] | None = None) -> None:
        self.sent: list[tuple[str, RecordCopy]] = []
        self.fail: dict[int, BaseException] = dict(fail or {})
        self.flushes = 0
        self.closed = False
        self._queued: list[tuple[str, RecordCopy]] = []

    def send(self, topic: str, record: RecordCopy) -> None:
        self._queued.append((topic, record))

    def flush(self) -> list[BaseException | None]:
        queued, self._queued = self._queued, []
        if queued:
            self.flushes += 1
        outcomes: list[BaseException | None] = []
        for topic, record in queued:
            error = self.fail.get(record.source_offset)
            if error is None:
                self.sent.append((topic, record))
            outcomes.append(error)
        return outcomes

    def close(self) -> None:
        self.flush()
        self.closed = True


def _copy(progress: ReplayProgress) -> ReplayProgress:
    return ReplayProgress(progress.next_offset, set(progress.done))
