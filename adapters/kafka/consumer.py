"""The one module that touches kafka-python's ``KafkaConsumer``: a thin wrapper.

It speaks the client's own verbs (poll, pause, resume, seek, commit, committed, close),
applies the workarounds of ``quirks.py`` where the client needs them, and turns the
client's errors into ours: ``SourceFailed`` for what retrying cannot fix (credentials,
ACLs, group settings the broker rejects), ``ConsumerError`` for the rest. The source and
its policies (rebalances, poison, flow control, commits) use only the verbs of
``SourceConsumer``, the seam this class and the confluent-kafka one
(``confluent/consumer.py``, KAFKA_CLIENT=confluent) both fit.

Partitions are kafka-python's ``TopicPartition``, a named tuple of topic and partition.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any, Protocol

import structlog
from kafka import KafkaConsumer, TopicPartition
from kafka.consumer.subscription_state import AsyncConsumerRebalanceListener
from kafka.errors import KafkaError, TopicAuthorizationFailedError
from kafka.structs import OffsetAndMetadata

from jobworker.adapters.kafka.bootstrap import open_client
from jobworker.adapters.kafka.offsets.partitions import Commit
from jobworker.adapters.kafka.quirks import (
    UnreadableBatch,
    UnreadableBatchDetector,
    fetch_position,
    missing_internals,
    release_parked_records,
    resume_interrupted_join,
    sleep_on_io_loop,
    unauthorized_topics,
    wait_out_unanswered_heartbeats,
)
from jobworker.adapters.kafka.refusals import fatal_error_message
from jobworker.adapters.kafka.settings import KafkaClientSettings
from jobworker.domain.errors import SourceFailed

__all__ = [
    "Consumer",
    "ConsumerError",
    "RebalanceHandler",
    "SourceConsumer",
    "TopicPartition",
    "printable",
]

# The source's lines keep the logger name they had before it was split in pieces.
log = structlog.get_logger("jobworker.adapters.kafka.source")

Records = dict[TopicPartition, list[Any]]


class ConsumerError(Exception):
    """A request the consumer could not complete; a later one may. ``cause`` is the
    client's own error."""

    def __init__(self, cause: BaseException) -> None:
        super().__init__(str(cause))
        self.cause = cause


class RebalanceHandler(Protocol):
    """Rebalance events, awaited on the client's I/O loop (where a blocking commit
    raises: see ``Consumer.commit_in_rebalance``)."""

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None: ...

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None: ...

    async def on_partitions_lost(self, lost: set[TopicPartition]) -> None: ...


class SourceConsumer(Protocol):
    """The verbs the source and its pieces use, in kafka-python's shapes: partitions are
    its ``TopicPartition``, records have its ``ConsumerRecord``'s attributes (topic,
    partition, offset, key, value, headers, timestamp). ``Consumer`` (kafka-python) and
    ``confluent.consumer.ConfluentConsumer`` fit it; each says which thread its
    rebalance handler and commit answers run on."""

    topic: str

    @property
    def api_version(self) -> Any: ...

    def subscribe(self, handler: RebalanceHandler) -> None: ...

    def poll(self, timeout_s: float, max_records: int) -> Records: ...

    def unreadable_batches(self) -> list[UnreadableBatch]: ...

    def assignment(self) -> set[TopicPartition]: ...

    def paused(self) -> set[TopicPartition]: ...

    def pause(self, partitions: Iterable[TopicPartition]) -> None: ...

    def resume(self, partitions: Iterable[TopicPartition]) -> None: ...

    def seek(self, tp: TopicPartition, offset: int) -> None: ...

    def position(self, tp: TopicPartition) -> int | None: ...

    def highwater(self, tp: TopicPartition) -> int | None: ...

    def committed(self, tp: TopicPartition, timeout_s: float) -> tuple[int, str] | None: ...

    def commit(self, commits: Mapping[TopicPartition, Commit], timeout_s: float) -> None: ...

    def commit_async(
        self,
        commits: Mapping[TopicPartition, Commit],
        answered: Callable[[BaseException | None], None],
    ) -> None: ...

    async def commit_in_rebalance(self, commits: Mapping[TopicPartition, Commit]) -> None: ...

    async def sleep_in_rebalance(self, seconds: float) -> bool: ...

    def group_generation(self) -> int: ...

    def close(self, timeout_s: float) -> None: ...


class Consumer:
    """A kafka-python consumer in a group, subscribed to one topic, committing by hand.

    Opening it makes the first connection: a refused one (credentials, mechanism, TLS)
    raises ``AccessRefused``.
    """

    def __init__(self, settings: KafkaClientSettings, topic: str, group_id: str) -> None:
        self.topic = topic
        self._group_id = group_id
        self._session_timeout_ms = settings.session_timeout_ms
        self._client = open_client(
            KafkaConsumer,
            settings,
            **settings.consumer_kwargs(),
            group_id=group_id,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
        )
        if missing := missing_internals(self._client):
            log.warning(
                "this kafka-python version lacks internals its workarounds touch: they do"
                " nothing (checked against kafka-python 3.0.12)",
                missing=missing,
            )
        wait_out_unanswered_heartbeats(self._client)
        self._unreadable = UnreadableBatchDetector(self._client)
        if not self._unreadable.installed:
            log.warning(
                "this kafka-python version is not the one the unreadable-batch workaround"
                " knows: a batch the consumer cannot decode may stall it"
            )

    @property
    def api_version(self) -> Any:
        """The broker API version the client settled on (the dead-letter producer's too)."""
        return self._client.config["api_version"]

    def subscribe(self, handler: RebalanceHandler) -> None:
        self._client.subscribe([self.topic], listener=_Listener(handler))

    def poll(self, timeout_s: float, max_records: int) -> Records:
        """Records per partition; {} when a batch could not be decoded (see
        ``unreadable_batches``). Raises ``SourceFailed`` for a refusal retrying cannot
        fix, ``ConsumerError`` for any other error of the client."""
        release_parked_records(self._client)
        resume_interrupted_join(self._client)
        try:
            records: Records = self._client.poll(
                timeout_ms=max(0, int(timeout_s * 1000)), max_records=max_records
            )
        except Exception as error:
            # Decoding errors are not all KafkaErrors (a codec library's own, struct's).
            # The source sets the batch aside; the next poll reads on without waiting.
            if self._unreadable.found():
                return {}
            if not isinstance(error, KafkaError):
                raise
            if (reason := self._fatal(error)) is not None:
                raise SourceFailed(reason) from error
            raise ConsumerError(error) from error
        if self.topic in unauthorized_topics(self._client):
            # The client itself would wait for ever, with no partition ever assigned.
            refused = TopicAuthorizationFailedError({self.topic})
            raise SourceFailed(self._fatal(refused) or str(refused))
        return records

    def unreadable_batches(self) -> list[UnreadableBatch]:
        """The batches the client could not decode since the last call."""
        return self._unreadable.take()

    def assignment(self) -> set[TopicPartition]:
        return set(self._client.assignment())

    def paused(self) -> set[TopicPartition]:
        return set(self._client.paused())

    def pause(self, partitions: Iterable[TopicPartition]) -> None:
        """Pause those of ``partitions`` still assigned."""
        assignment = self._client.assignment()
        if wanted := [tp for tp in partitions if tp in assignment]:
            self._client.pause(*wanted)

    def resume(self, partitions: Iterable[TopicPartition]) -> None:
        """Resume those of ``partitions`` still assigned."""
        assignment = self._client.assignment()
        if wanted := [tp for tp in partitions if tp in assignment]:
            self._client.resume(*wanted)

    def seek(self, tp: TopicPartition, offset: int) -> None:
        """Read ``tp`` from ``offset`` next. Nothing for a partition revoked since the
        poll (the next owner reads those records); a failure is logged, not raised: the
        records are then read on from the old position, which only repeats work."""
        if tp not in self._client.assignment():
            return
        try:
            self._client.seek(tp, offset)
        except KafkaError as error:
            log.warning("seek failed", partition=tp.partition, offset=offset, error=str(error))

    def position(self, tp: TopicPartition) -> int | None:
        """The next offset the client reads in ``tp``, if it knows it; no request."""
        return fetch_position(self._client, tp)

    def highwater(self, tp: TopicPartition) -> int | None:
        """The end of ``tp`` as the last fetch saw it; None when not assigned or unknown."""
        if tp not in self._client.assignment():
            return None
        highwater: int | None = self._client.highwater(tp)
        return highwater

    def committed(self, tp: TopicPartition, timeout_s: float) -> tuple[int, str] | None:
        """The group's committed offset of ``tp`` and its metadata (None without one)."""
        try:
            committed = self._client.committed(tp, metadata=True, timeout_ms=int(timeout_s * 1000))
        except KafkaError as error:
            raise ConsumerError(error) from error
        return None if committed is None else (committed.offset, committed.metadata)

    def commit(self, commits: Mapping[TopicPartition, Commit], timeout_s: float) -> None:
        """Commit and wait for the broker's answer."""
        try:
            self._client.commit(_offsets(commits), timeout_ms=int(timeout_s * 1000))
        except KafkaError as error:
            raise ConsumerError(error) from error

    def commit_async(
        self,
        commits: Mapping[TopicPartition, Commit],
        answered: Callable[[BaseException | None], None],
    ) -> None:
        """Send a commit; ``answered`` gets its error, or None, on the I/O thread."""

        def callback(_: object, response: object) -> None:
            answered(response if isinstance(response, BaseException) else None)

        try:
            self._client.commit_async(_offsets(commits), callback=callback)
        except KafkaError as error:
            raise ConsumerError(error) from error

    async def commit_in_rebalance(self, commits: Mapping[TopicPartition, Commit]) -> None:
        """Commit from a rebalance handler: a blocking commit there raises, so this
        awaits the async one, which keeps heartbeats going."""
        try:
            await self._client.commit_async(_offsets(commits))
        except Exception as error:
            raise ConsumerError(error) from error

    async def sleep_in_rebalance(self, seconds: float) -> bool:
        """Wait in a rebalance handler while the I/O loop serves on; False (at once) if
        the client's internals offer no way to."""
        return await sleep_on_io_loop(self._client, seconds)

    def group_generation(self) -> int:
        """The group generation this member is in (-1 before it joined); no request."""
        return int(self._client.group_metadata().generation_id)

    def close(self, timeout_s: float) -> None:
        """Leave the group; the revoke handler runs first. Commits nothing itself."""
        try:
            self._client.close(autocommit=False, timeout_ms=int(timeout_s * 1000))
        except KafkaError as error:
            raise ConsumerError(error) from error

    def _fatal(self, error: KafkaError) -> str | None:
        return fatal_error_message(error, self.topic, self._group_id, self._session_timeout_ms)


class _Listener(AsyncConsumerRebalanceListener):  # type: ignore[misc]
    """Hands the client's rebalance events to ours. Async on purpose: the revoke
    handler awaits its commit (see ``Consumer.commit_in_rebalance``)."""

    def __init__(self, handler: RebalanceHandler) -> None:
        self._handler = handler

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        await self._handler.on_partitions_revoked(revoked)

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        await self._handler.on_partitions_assigned(assigned)

    async def on_partitions_lost(self, lost: set[TopicPartition]) -> None:
        await self._handler.on_partitions_lost(lost)


def _offsets(commits: Mapping[TopicPartition, Commit]) -> dict[TopicPartition, OffsetAndMetadata]:
    return {tp: OffsetAndMetadata(c.offset, c.metadata, -1) for tp, c in commits.items()}


def printable(partitions: Iterable[Any]) -> list[str]:
    """Partitions as log lines show them: ``topic[partition]``, sorted."""
    return sorted(f"{tp.topic}[{tp.partition}]" for tp in partitions)
