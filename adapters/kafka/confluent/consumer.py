"""The source's consumer on confluent-kafka (librdkafka): KAFKA_CLIENT=confluent.

The same verbs as ``consumer.Consumer`` (the ``SourceConsumer`` seam), in the same
shapes: kafka-python's ``TopicPartition`` and records with its attribute names
(``records.py``).

librdkafka's calls block the calling thread, and the Python binding lets one call at a
time into a consumer: a call from a second thread waits for the first to return. So
every call that may wait (a poll, a synchronous commit, a committed-offset look-up,
close) runs on this consumer's own native thread (a gevent ``ThreadPool`` of one), and
the calling greenlet waits for it cooperatively: the hub goes on serving meanwhile.
Calls that never wait (pause, resume, seek, position, an asynchronous commit) are made
from the caller directly, and only between polls: the source makes them from the same
greenlet that polls, so they never meet a poll in progress. But a call the caller
stopped waiting for (a commit or look-up past its timeout: the broker is away) goes on
on the native thread, and until it returns a direct call would wait for it, holding the
hub: so meanwhile seek, pause and resume are queued behind it, position is unknown and
an asynchronous commit is refused (sent again at the next one). What other greenlets read
(the high-water marks, the assignment, the group generation) is a copy this class
keeps, never a call into the client.

Callbacks (on_assign, on_revoke, on_lost, on_commit, errors) are invoked by librdkafka
from inside a poll, on the native thread: the rebalance handler runs there, as it runs
on kafka-python's I/O thread, so its commit is a synchronous one on the same thread and
its waits are native sleeps that leave the hub free.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Coroutine, Iterable, Mapping
from typing import Any

import structlog
from confluent_kafka import Consumer as RdKafkaConsumer
from confluent_kafka import KafkaError, KafkaException, libversion, version
from confluent_kafka import TopicPartition as RdTopicPartition
from gevent import Timeout, monkey
from gevent.threadpool import ThreadPool
from kafka import TopicPartition
from kafka.errors import (
    SaslAuthenticationFailedError,
    UnsupportedSaslMechanismError,
    for_code,
)

from jobworker.adapters.kafka.bootstrap import offered_sasl_mechanisms
from jobworker.adapters.kafka.confluent.config import consumer_config
from jobworker.adapters.kafka.confluent.records import HeldRecords, Sorted, sort_messages
from jobworker.adapters.kafka.consumer import ConsumerError, RebalanceHandler, Records
from jobworker.adapters.kafka.offsets.partitions import Commit
from jobworker.adapters.kafka.quirks import UnreadableBatch
from jobworker.adapters.kafka.refusals import connection_refusal_message, fatal_error_message
from jobworker.adapters.kafka.settings import KafkaClientSettings, SecurityProtocol
from jobworker.domain.errors import AccessRefused, SourceFailed

# The source's lines keep the logger name they had before it was split in pieces.
log = structlog.get_logger("jobworker.adapters.kafka.source")

# The rebalance handler waits on the native thread: a real sleep, not gevent's (after
# patch_all that one would need a hub of the thread's own).
_native_sleep = monkey.get_original("time", "sleep")
_native_thread_id = monkey.get_original("_thread", "get_ident")

# librdkafka reports the TLS handshakes it failed as _SSL; one that could not verify
# the broker's certificate fails the same way every time, others may pass (a broker
# restarting mid-handshake).
_UNVERIFIED_TLS = ("certificate verify failed", "unable to get local issuer certificate")


def _rd(tp: TopicPartition, offset: int = -1001, metadata: str | None = None) -> Any:
    if metadata is None:
        return RdTopicPartition(tp.topic, tp.partition, offset)
    return RdTopicPartition(tp.topic, tp.partition, offset, metadata=metadata)


def _ours(partitions: Iterable[Any]) -> set[TopicPartition]:
    return {TopicPartition(tp.topic, tp.partition) for tp in partitions}


class ConfluentConsumer:
    """A librdkafka consumer in a group, subscribed to one topic, committing by hand.

    Making it connects to nothing yet (librdkafka connects in the background): a
    refused connection surfaces at the first polls as ``SourceFailed``.
    """

    def __init__(self, settings: KafkaClientSettings, topic: str, group_id: str) -> None:
        self.topic = topic
        self._group_id = group_id
        self._settings = settings
        self._session_timeout_ms = settings.session_timeout_ms
        if SecurityProtocol(settings.security_protocol).uses_sasl:
            _refuse_unoffered_mechanism(settings)
        self._thread = ThreadPool(1)
        # The hub's thread (where this is made), and the last call sent to the native
        # thread: while it runs, a direct call from the hub would wait for it.
        self._hub_thread = _native_thread_id()
        self._on_native: Any = None
        # Errors librdkafka reported through its error callback since the last poll.
        self._errors: list[KafkaError] = []
        # The answer callbacks of asynchronous commits, in the order sent: librdkafka
        # answers a consumer's commits in that order.
        self._commit_answers: deque[Callable[[BaseException | None], None]] = deque()
        self._handler: RebalanceHandler | None = None
        self._assignment: frozenset[TopicPartition] = frozenset()
        # Paused by the source (records held back), and paused in librdkafka (too many
        # held): see records.HeldRecords.
        self._paused: set[TopicPartition] = set()
        self._held = HeldRecords(limit=max(1_000, 2 * settings.max_poll_records))
        self._fetch_paused: set[TopicPartition] = set()
        self._highwater: dict[TopicPartition, int] = {}
        self._unreadable: list[UnreadableBatch] = []
        # Per partition, the offset just past an unreadable batch librdkafka already
        # skipped: the poison policy's seek there would be a step back into it.
        self._already_past: dict[TopicPartition, int] = {}
        self._generation = -1
        self._closed = False
        # Where each partition of the last revoke was: read on from there if it comes back.
        self._revoked_positions: dict[TopicPartition, int] = {}
        config = consumer_config(settings, group_id) | {
            "error_cb": self._on_error,
            "on_commit": self._on_commit,
        }
        try:
            self._client = RdKafkaConsumer(config)
        except KafkaException as error:
            raise SourceFailed(f"Kafka client settings refused: {error}") from None
        log.info(
            "consuming with confluent-kafka (KAFKA_CLIENT=confluent)",
            confluent_kafka=version()[0],
            librdkafka=libversion()[0],
        )

    @property
    def api_version(self) -> Any:
        """None: the dead-letter producer (kafka-python) asks the broker itself."""
        return None

    def subscribe(self, handler: RebalanceHandler) -> None:
        self._handler = handler
        self._client.subscribe(
            [self.topic],
            on_assign=self._on_assign,
            on_revoke=self._on_revoke,
            on_lost=self._on_lost,
        )

    # -- reading --------------------------------------------------------------------

    def poll(self, timeout_s: float, max_records: int) -> Records:
        """Records per partition, read on the native thread while the hub serves on.
        Raises ``SourceFailed`` for a refusal retrying cannot fix, ``ConsumerError``
        for any other error of the client."""
        max_records = max(1, max_records)
        ready = sum(
            self._held.count(tp) for tp in self._held.held_partitions() if tp not in self._paused
        )
        # Records already held go out at once; librdkafka is still polled (its callbacks
        # run only then), without waiting, for what is missing.
        wait_s = 0.0 if ready else max(0.0, timeout_s)
        try:
            sorted_ = self._on_thread(self._consume, wait_s, max(1, max_records - ready))
        except KafkaException as error:
            raise self._error(error.args[0]) from error
        self._errors += sorted_.errors
        self._raise_reported_errors()
        assignment = self._assignment
        self._held.add({tp: e for tp, e in sorted_.entries.items() if tp in assignment})
        taken = self._held.take(max_records, self._paused)
        for batch in taken.unreadable:
            tp = TopicPartition(batch.topic, batch.partition)
            self._already_past[tp] = batch.last_offset + 1
        self._unreadable += taken.unreadable
        self._bound_read_ahead()
        return taken.records

    def _bound_read_ahead(self) -> None:
        """Pause librdkafka's fetching of partitions with ``limit`` records held, and
        resume it once half of them are taken (see records.HeldRecords)."""
        limit = self._held.limit
        for tp in self._assignment:
            held = self._held.count(tp)
            if held >= limit and tp not in self._fetch_paused:
                self._direct(self._client.pause, [_rd(tp)])
                self._fetch_paused.add(tp)
            elif held < limit // 2 and tp in self._fetch_paused:
                self._direct(self._client.resume, [_rd(tp)])
                self._fetch_paused.discard(tp)

    def _consume(self, timeout_s: float, max_records: int) -> Sorted:
        # On the native thread, the copying into records too. consume() waits for a full
        # batch or the timeout; a poll returns at the first record, so waiting is done
        # by poll, the rest taken after.
        messages: list[Any] = self._client.consume(max_records, 0)
        if not messages and timeout_s > 0:
            first = self._client.poll(timeout_s)
            if first is None:
                return Sorted()
            messages = [first]
            if max_records > 1:
                messages += self._client.consume(max_records - 1, 0)
        sorted_ = sort_messages(messages)
        for tp in sorted_.entries:
            self._note_highwater(tp)
        return sorted_

    def _note_highwater(self, tp: TopicPartition) -> None:
        try:
            _, high = self._client.get_watermark_offsets(_rd(tp), cached=True)
        except KafkaException:
            return
        if high >= 0:
            self._highwater[tp] = high

    def unreadable_batches(self) -> list[UnreadableBatch]:
        """The batches librdkafka could not decode since the last call."""
        batches, self._unreadable = self._unreadable, []
        return batches

    # -- the assignment -------------------------------------------------------------

    def assignment(self) -> set[TopicPartition]:
        return set(self._assignment)

    def paused(self) -> set[TopicPartition]:
        return set(self._paused)

    def pause(self, partitions: Iterable[TopicPartition]) -> None:
        """Pause those of ``partitions`` still assigned: their records are held back."""
        self._paused.update(tp for tp in partitions if tp in self._assignment)

    def resume(self, partitions: Iterable[TopicPartition]) -> None:
        """Resume those of ``partitions`` still assigned."""
        self._paused.difference_update(partitions)

    def seek(self, tp: TopicPartition, offset: int) -> None:
        """Read ``tp`` from ``offset`` next (see ``Consumer.seek``); nothing for a
        partition revoked since the poll. Back to a record just handed out, or to the
        next one held, costs nothing; past an unreadable batch librdkafka skipped
        already, neither. Anywhere else, librdkafka seeks (and fetches again)."""
        if tp not in self._assignment or self._held.rewind(tp, offset):
            return
        if self._already_past.get(tp) == offset and not self._held.count(tp):
            del self._already_past[tp]
            return
        self._held.drop([tp])
        self._direct(self._seek_now, tp, offset)

    def _seek_now(self, tp: TopicPartition, offset: int) -> None:
        try:
            self._client.seek(_rd(tp, offset))
        except KafkaException as error:
            log.warning("seek failed", partition=tp.partition, offset=offset, error=str(error))

    def position(self, tp: TopicPartition) -> int | None:
        """The next offset the source reads in ``tp`` (the first record held, else
        librdkafka's position), if known; no request."""
        if tp not in self._assignment:
            return None
        if (held := self._held.next_offset(tp)) is not None:
            return held
        if self._hub_must_not_call():
            return None
        try:
            (found,) = self._client.position([_rd(tp)])
        except KafkaException:
            return None
        offset: int = found.offset
        return offset if offset >= 0 else None

    def highwater(self, tp: TopicPartition) -> int | None:
        """The end of ``tp`` as the last fetch saw it; None when not assigned or unknown.
        A copy kept at each poll: safe from any greenlet, even while a poll runs."""
        if tp not in self._assignment:
            return None
        return self._highwater.get(tp)

    def group_generation(self) -> int:
        """How many assignments this member has had (-1 before the first, after losing
        its partitions and after close). librdkafka does not expose the group's own
        generation id; this one grows with each rebalance as that one does."""
        return self._generation

    # -- commits --------------------------------------------------------------------

    def committed(self, tp: TopicPartition, timeout_s: float) -> tuple[int, str] | None:
        """The group's committed offset of ``tp`` and its metadata (None without one)."""
        try:
            (found,) = self._on_thread(
                self._client.committed, [_rd(tp)], timeout_s, timeout_s=timeout_s + 1
            )
        except KafkaException as error:
            raise ConsumerError(error) from error
        if found.error is not None:
            raise ConsumerError(KafkaException(found.error))
        if found.offset < 0:
            return None
        return found.offset, found.metadata or ""

    def commit(self, commits: Mapping[TopicPartition, Commit], timeout_s: float) -> None:
        """Commit and wait for the broker's answer (on the native thread)."""
        self._on_thread(self._commit_now, commits, timeout_s=timeout_s)

    def _commit_now(self, commits: Mapping[TopicPartition, Commit]) -> None:
        offsets = [_rd(tp, c.offset, c.metadata) for tp, c in commits.items()]
        try:
            answered = self._client.commit(offsets=offsets, asynchronous=False)
        except KafkaException as error:
            raise ConsumerError(error) from error
        for tp in answered or ():
            if tp.error is not None:
                raise ConsumerError(KafkaException(tp.error))

    def commit_async(
        self,
        commits: Mapping[TopicPartition, Commit],
        answered: Callable[[BaseException | None], None],
    ) -> None:
        """Send a commit; ``answered`` gets its error, or None, on the native thread
        (from a later poll)."""
        if self._hub_must_not_call():
            raise ConsumerError(RuntimeError("an earlier commit still waits for the broker"))
        offsets = [_rd(tp, c.offset, c.metadata) for tp, c in commits.items()]
        self._commit_answers.append(answered)
        try:
            self._client.commit(offsets=offsets, asynchronous=True)
        except KafkaException as error:
            self._commit_answers.pop()
            raise ConsumerError(error) from error

    async def commit_in_rebalance(self, commits: Mapping[TopicPartition, Commit]) -> None:
        """Commit from a rebalance handler: on the native thread, inside the poll that
        runs the handler, so synchronously (librdkafka heartbeats on its own threads)."""
        self._commit_now(commits)

    async def sleep_in_rebalance(self, seconds: float) -> bool:
        """Wait in a rebalance handler: a native sleep, the hub serves on meanwhile."""
        _native_sleep(seconds)
        return True

    # -- closing --------------------------------------------------------------------

    def close(self, timeout_s: float) -> None:
        """Leave the group (the revoke handler runs first, on the native thread);
        commits nothing itself. Waits at most ``timeout_s`` (librdkafka may take up to
        the session timeout with the broker away: it goes on alone)."""
        if self._closed:
            return
        self._closed = True
        try:
            self._on_thread(self._client.close, timeout_s=timeout_s, closing=True)
        except KafkaException as error:
            raise ConsumerError(error) from error
        finally:
            self._generation = -1
            self._thread.kill()

    # -- callbacks, on the native thread, from inside a poll ------------------------

    def _on_assign(self, client: Any, partitions: list[Any]) -> None:
        assigned = _ours(partitions)
        # A partition that comes back reads on where it was, as with kafka-python (the
        # source kept its bookkeeping: rebalance.py); librdkafka would start it again
        # from the committed offset.
        kept, self._revoked_positions = self._revoked_positions, {}
        partitions = [_rd(tp, kept[tp]) if tp in kept else _rd(tp) for tp in sorted(assigned)]
        client.assign(partitions)
        # A partition assigned again starts unpaused; flow control pauses it if needed.
        if partitions:
            client.resume(partitions)
        self._assignment = frozenset(assigned)
        self._paused -= assigned
        self._fetch_paused -= assigned
        self._generation = max(0, self._generation + 1)
        self._run_handler("on_partitions_assigned", assigned)

    def _on_revoke(self, client: Any, partitions: list[Any]) -> None:
        revoked = _ours(partitions)
        kept = {tp: self.position(tp) for tp in revoked}
        self._revoked_positions = {tp: at for tp, at in kept.items() if at is not None}
        try:
            self._run_handler("on_partitions_revoked", revoked)
        finally:
            self._forget(revoked)

    def _on_lost(self, client: Any, partitions: list[Any]) -> None:
        lost = _ours(partitions)
        self._generation = -1
        self._revoked_positions = {}
        try:
            self._run_handler("on_partitions_lost", lost)
        finally:
            self._forget(lost)

    def _forget(self, partitions: set[TopicPartition]) -> None:
        self._assignment = self._assignment - partitions
        self._paused -= partitions
        self._fetch_paused -= partitions
        self._held.drop(partitions)
        for tp in partitions:
            self._highwater.pop(tp, None)
            self._already_past.pop(tp, None)

    def _run_handler(self, event: str, partitions: set[TopicPartition]) -> None:
        # The handler's coroutines await only this class's rebalance methods, which
        # finish without suspending: one send runs each to its end.
        if self._handler is None:
            return
        coroutine: Coroutine[Any, Any, None] = getattr(self._handler, event)(partitions)
        try:
            coroutine.send(None)
        except StopIteration:
            return
        except Exception:
            log.exception("rebalance handler failed", rebalance_event=event)
            return
        coroutine.close()
        log.error("rebalance handler suspended: left unfinished", rebalance_event=event)

    def _on_commit(self, error: KafkaError | None, partitions: list[Any]) -> None:
        if not self._commit_answers:
            return  # a synchronous commit's (the binding answers those itself)
        answered = self._commit_answers.popleft()
        failed = error or next((tp.error for tp in partitions if tp.error is not None), None)
        answered(None if failed is None else KafkaException(failed))

    def _on_error(self, error: KafkaError) -> None:
        self._errors.append(error)

    # -- errors ---------------------------------------------------------------------

    def _raise_reported_errors(self) -> None:
        """Raise the first error retrying cannot fix; log the others once per poll."""
        errors, self._errors = self._errors, []
        transient = []
        for error in errors:
            failure = self._error(error)
            if isinstance(failure, SourceFailed):
                raise failure
            transient.append(error)
        if transient:
            log.warning(
                "kafka client reported errors; it retries",
                errors=sorted({e.str() for e in transient}),
            )

    def _error(self, error: Any) -> SourceFailed | ConsumerError:
        if not isinstance(error, KafkaError):
            return ConsumerError(KafkaException(error))
        if (reason := self._fatal(error)) is not None:
            return SourceFailed(reason)
        return ConsumerError(KafkaException(error))

    def _fatal(self, error: KafkaError) -> str | None:
        code, text = error.code(), error.str()
        broker = self._settings.bootstrap_servers[0]
        if code == KafkaError._AUTHENTICATION:
            # The same line as kafka-python's refusal (refusals.py).
            refusal = SaslAuthenticationFailedError(text)
            return connection_refusal_message(refusal, self._settings, broker)
        if code == KafkaError._SSL and any(words in text for words in _UNVERIFIED_TLS):
            where = (
                f"KAFKA_SSL_CAFILE ({self._settings.ssl_cafile}) did not sign it"
                if self._settings.ssl_cafile
                else "KAFKA_SSL_CAFILE is not set, so only the system's CAs were tried"
            )
            return (
                f"cannot verify the TLS certificate of Kafka: {text}; {where} — set"
                " KAFKA_SSL_CAFILE to the CA file that signed the broker's certificate"
            )
        if code == KafkaError._INVALID_ARG:
            return f"Kafka client settings refused: {text}"
        if error.fatal():
            return f"the Kafka client stopped: {text}"
        if code <= 0:
            return None
        # A broker's error code is Kafka's, the same for both clients.
        as_kafka_python = for_code(code)(text)
        return fatal_error_message(
            as_kafka_python, self.topic, self._group_id, self._session_timeout_ms
        )

    # -- the native thread ----------------------------------------------------------

    def _on_thread(
        self,
        call: Callable[..., Any],
        *args: Any,
        timeout_s: float | None = None,
        closing: bool = False,
    ) -> Any:
        """``call(*args)`` on the native thread; the calling greenlet waits, the hub
        serves on. ``timeout_s``: a ``ConsumerError`` after that long (the call goes on)."""
        if self._closed and not closing:
            raise ConsumerError(RuntimeError("the consumer is closed"))
        result = self._on_native = self._thread.spawn(call, *args)
        try:
            return result.get(timeout=timeout_s)
        except Timeout as error:
            raise ConsumerError(TimeoutError(f"no answer in {timeout_s} s")) from error

    def _hub_must_not_call(self) -> bool:
        """Whether this is the hub's thread while the native thread still runs a call:
        the client would make a direct call wait for that one."""
        busy = self._on_native is not None and not self._on_native.ready()
        return busy and _native_thread_id() == self._hub_thread

    def _direct(self, call: Callable[..., Any], *args: Any) -> None:
        """``call(*args)`` now, or, while the native thread runs a call the hub must not
        wait for, after it there (in order: before any later poll)."""
        if self._hub_must_not_call():
            self._on_native = self._thread.spawn(call, *args)
        else:
            call(*args)


def _refuse_unoffered_mechanism(settings: KafkaClientSettings) -> None:
    """``AccessRefused`` naming what the broker offers, when it does not offer
    KAFKA_SASL_MECHANISM: librdkafka reports that only as a failed authentication. The
    broker is asked as kafka-python's consumer asks it (``bootstrap.py``)."""
    offered = offered_sasl_mechanisms(settings)
    if offered is not None and settings.sasl_mechanism not in offered:
        refusal = UnsupportedSaslMechanismError()
        broker = settings.bootstrap_servers[0]
        raise AccessRefused(connection_refusal_message(refusal, settings, broker, offered))
