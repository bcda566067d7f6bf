"""The ports: what the application needs from the world, as small Protocols."""

from __future__ import annotations

from collections.abc import Collection, Iterator, Mapping, Sequence
from typing import Protocol

from jobworker.domain.dead_letters import Letter, RecordCopy, ReplayProgress
from jobworker.domain.errors import ResultRefused
from jobworker.domain.fleet import GroupPartition, WorkerStatus
from jobworker.domain.model import Job, JobResult


class JobSource(Protocol):
    """Where jobs come from (Kafka, a file, memory)."""

    def fetch(self, max_jobs: int, timeout_s: float) -> Sequence[Job]:
        """Return up to ``max_jobs`` new jobs, waiting at most ``timeout_s`` for them.

        The engine calls this in a loop from one greenlet. ``max_jobs == 0`` means the
        engine has no room: the source must keep its connection alive (a Kafka source
        pauses its partitions and still polls, to stay in its group) and return
        nothing. Undeliverable input never raises here; a source deals with it itself.
        Raises ``SourceFailed`` only when it cannot go on at all (credentials refused,
        invalid group settings); any other error is taken as passing and fetch is retried.
        """
        ...

    def ack(self, job: Job) -> None:
        """Mark ``job`` done: its result was accepted by the sink.

        Only acked jobs may be forgotten by the source (for Kafka: move the committed
        offset). Never raises for a job whose delivery the source no longer owns.
        """
        ...

    def exhausted(self) -> bool:
        """Return True when no job will ever come again (end of a file); else False."""
        ...

    def close(self) -> None:
        """Save progress of acked jobs and release connections. Idempotent."""
        ...


class ResultSink(Protocol):
    """Where results go (Core over gRPC, a file, memory)."""

    def send(self, result: JobResult) -> None:
        """Deliver ``result``, blocking (cooperatively) until the sink accepted it.

        Transient failures are retried inside. Raises ``ResultRefused`` when the sink
        answers that it will not take this result, ``ResultTooLarge`` when it never
        could, and ``ResultNotDelivered`` for any other give-up (the sink closed);
        the job then stays not done.
        """
        ...

    def send_batch(self, results: Sequence[JobResult]) -> None:
        """Deliver all of ``results`` at once, blocking (cooperatively) until accepted.

        All or nothing: on any raise, none counts as delivered. Transient failures are
        retried inside. Raises what ``send`` raises, for the batch as a whole (which
        result a refusal is about is found by sending them one at a time), and
        ``BatchesUnsupported`` when the sink takes results one at a time only.
        """
        ...

    def close(self) -> None:
        """Release connections. Idempotent."""
        ...


class RefusedResultStore(Protocol):
    """Where results go that the sink refused for good (a results dead-letter topic)."""

    def store(self, job: Job, result: JobResult, refusal: ResultRefused) -> None:
        """Keep ``result`` with why it was refused, blocking until it is safely stored.

        Only then may ``job`` be acked. Raises ``ResultNotDelivered`` when it cannot be
        stored now; the job then stays not done and storing is tried again later.
        """
        ...

    def close(self) -> None:
        """Flush and release connections. Idempotent."""
        ...


class Executor(Protocol):
    """Runs jobs of one type."""

    def execute(self, job: Job) -> str:
        """Run ``job`` and return its output (JSON by convention).

        Raises ``InvalidPayload`` (REJECTED), ``RetryableJobError`` (retried),
        ``JobFailed`` or any other exception (FAILED). Must be cooperative (gevent):
        the engine interrupts it with a timeout.
        """
        ...


class JobObserver(Protocol):
    """Hears about each job's life; logs and metrics implement it."""

    def job_received(self, job: Job) -> None:
        """Called when the engine took ``job`` from the source. Must not raise or block."""
        ...

    def job_started(self, job: Job, attempt: int) -> None:
        """Called when an attempt begins. Must not raise or block."""
        ...

    def job_retrying(self, job: Job, attempt: int, error: str, delay_s: float) -> None:
        """Called when a failed attempt will be retried after ``delay_s``."""
        ...

    def job_finished(self, job: Job, result: JobResult) -> None:
        """Called once per job when its result is known (before it is sent)."""
        ...

    def result_delivered(self, result: JobResult) -> None:
        """Called when the sink accepted ``result``."""
        ...


class DeadLetterReader(Protocol):
    """Reads one dead-letter topic without joining a group or committing anything."""

    topic: str

    def partitions(self) -> list[int]:
        """The topic's partitions. Raises as ``letters`` does."""
        ...

    def letters(
        self,
        start_at: Mapping[int, int],
        *,
        partitions: Collection[int] | None = None,
        since_ms: int | None = None,
    ) -> Iterator[Letter]:
        """Every letter of ``partitions`` (default: all), one partition after the other in
        offset order, from ``start_at[partition]`` (else its first letter, or its first
        at ``since_ms`` or later) up to where the partition ended when this was called.

        Raises ``DeadLetterTopicMissing`` when the topic is not there and
        ``AccessRefused`` when reading it is not allowed.
        """
        ...

    def close(self) -> None:
        """Release the connection. Idempotent."""
        ...


class ReplayCheckpoint(Protocol):
    """Where replay keeps, per partition of a dead-letter topic, what it has sent."""

    max_gaps: int
    """How many gaps (runs of letters left behind) one partition's checkpoint can hold."""

    max_span: int
    """How far above a partition's first letter not replayed a replayed one may be."""

    def load(self) -> dict[int, ReplayProgress]:
        """What earlier replays sent, by partition (empty: nothing yet)."""
        ...

    def check_writable(self) -> None:
        """Raise ``AccessRefused`` now if ``save`` would be refused: replay asks before
        it sends anything, since a letter sent but not recorded goes again next time."""
        ...

    def save(self, progress: Mapping[int, ReplayProgress]) -> None:
        """Record ``progress`` of these partitions, blocking until it is stored."""
        ...

    def close(self) -> None:
        """Release the connection. Idempotent."""
        ...


class RecordRepublisher(Protocol):
    """Writes records back to a jobs topic, as replay does with job and batch letters."""

    def send(self, topic: str, record: RecordCopy) -> None:
        """Queue ``record`` for ``topic`` (which must exist; else ``ConfigurationError``)."""
        ...

    def flush(self) -> list[BaseException | None]:
        """Wait for every record queued since the last flush: for each, in the order
        sent, None if the broker acknowledged it, else why not. Raises
        ``AccessRefused`` when writing to a topic is not allowed."""
        ...

    def close(self) -> None:
        """Flush and release the connection. Idempotent."""
        ...


class StatusFeed(Protocol):
    """The status records the workers publish (docs/operations.md, "Fleet status on
    Kafka"), read as they come."""

    def read(self, max_wait_s: float) -> list[tuple[str, WorkerStatus | None]]:
        """The records published since the last call (the first call: every record
        still kept), oldest first, as (worker id, status); None for a worker that
        stopped cleanly. Waits at most ``max_wait_s`` for one. A record that cannot be
        read is skipped. Raises ``JobWorkerError`` when the records cannot be read."""
        ...

    def close(self) -> None: ...


class GroupProgressProbe(Protocol):
    """The consumer group's progress through the jobs topic, as the broker says."""

    def measure(self) -> list[GroupPartition]:
        """Every partition of the jobs topic; raises ``JobWorkerError`` when the broker
        cannot say."""
        ...

    def close(self) -> None: ...
