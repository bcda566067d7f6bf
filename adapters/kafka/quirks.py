"""Workarounds for kafka-python 3.0 bugs, all in one place.

Each one reaches into kafka-python's internals, says which bug it works around, and
does nothing when those internals are not there (another version): the contract tests
then show whether the bug is back. They were checked against kafka-python 3.0.12 (the
version pyproject.toml pins); ``missing_internals`` lists what a consumer (or a
producer) lacks of what they touch, and a unit test fails when it lists anything.
"""

from __future__ import annotations

import struct
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from kafka.admin import KafkaAdminClient
from kafka.future import Future

# The private attributes the workarounds below touch, as paths from a KafkaConsumer.
CONSUMER_INTERNALS = (
    "_fetcher._next_partition_records",
    "_fetcher._parse_fetched_data",
    "_coordinator._join_task",
    "_coordinator.rejoin_needed",
    "_coordinator.request_rejoin",
    "_subscription.assignment",
    "_net.sleep",
    "_cluster.unauthorized_topics",
    "_cluster.set_topics",
    "_cluster.config",
    "_net.run",
    "_manager.wait_for",
    "_coordinator.time_to_next_poll",
    "_coordinator.config",
)
# Those ``open_admin_client`` touches on a KafkaAdminClient that failed to start.
ADMIN_INTERNALS = ("_client", "_net")
# Those ``pace_unready_sends`` touches on a KafkaProducer.
PRODUCER_INTERNALS = ("_sender._client.connection_delay", "config")


def missing_internals(
    client: KafkaConsumer | KafkaProducer, paths: tuple[str, ...] = CONSUMER_INTERNALS
) -> list[str]:
    """The attributes of ``paths`` (``CONSUMER_INTERNALS`` unless told, or
    ``PRODUCER_INTERNALS``) that ``client`` lacks: [] when all are there."""
    missing = []
    for path in paths:
        target: Any = client
        for name in path.split("."):
            if not hasattr(target, name):
                missing.append(path)
                break
            target = getattr(target, name)
    return missing


async def sleep_on_io_loop(consumer: KafkaConsumer, delay_s: float) -> bool:
    """Sleep inside a rebalance listener without stopping the consumer's I/O loop.

    kafka-python 3.0 runs listeners as coroutines on its I/O loop, and offers no public
    way for one to wait: its selector's ``sleep`` event keeps the loop serving other
    requests meanwhile. Returns False at once (no sleep) if the internals differ.
    """
    sleep = getattr(getattr(consumer, "_net", None), "sleep", None)
    if not callable(sleep):
        return False
    await sleep(delay_s)
    return True


def wait_out_unanswered_heartbeats(consumer: KafkaConsumer) -> None:
    """Work around kafka-python 3.0's poll spinning while a heartbeat goes unanswered.

    Each round of ``poll`` waits for records at most until the next heartbeat is due
    (the coordinator's ``time_to_next_poll``), a leftover of the days the polling
    thread sent heartbeats: in 3.0 a loop on the I/O thread sends them, and a poll has
    nothing to do when one is due. One sent and not answered (a frozen broker: its
    connections stay open and say nothing) stays due until its request times out, so
    every round waits 0 ms and ``poll`` goes round for its whole timeout, a few
    hand-offs to the I/O thread a time: most of a core, and a starved gevent hub.

    With this a round waits at least ``retry_backoff_ms`` (100 ms) for the heartbeat's
    sake; records, and the answers it waits on, still end the wait at once. A round
    that would have waited less only did so in the moment a heartbeat fell due (its
    loop sends it at once), or while one was backing off after a failure: nothing the
    poll itself acts on. Does nothing if the internals differ.
    """
    coordinator: Any = getattr(consumer, "_coordinator", None)
    time_to_next_poll = getattr(coordinator, "time_to_next_poll", None)
    config = getattr(coordinator, "config", None)
    if not callable(time_to_next_poll) or not isinstance(config, dict):
        return
    floor_s = float(config.get("retry_backoff_ms", 100)) / 1000

    def at_least_a_backoff() -> float:
        return max(floor_s, float(time_to_next_poll()))

    coordinator.time_to_next_poll = at_least_a_backoff


def pace_unready_sends(producer: KafkaProducer) -> None:
    """Work around kafka-python 3.0's producer spinning while a broker does not answer.

    When a batch is ready for a broker whose connection cannot take it (five requests
    unanswered, or the connection still setting up), the producer's I/O loop waits for
    the broker's ``connection_delay``, read as milliseconds where the connection
    manager gives seconds, and 0 for a connection that is open: against a frozen
    broker, whose connections stay open, it goes round without waiting until the
    requests time out (a status record every few seconds is enough).

    With this it waits, in milliseconds, the reconnect backoff or ``retry_backoff_ms``
    (100 ms), whichever is longer. An answer, or the connection being made, still
    wakes it at once (it waits on the broker's sockets), so a broker that answers sees
    no difference. Does nothing if the internals differ.
    """
    client: Any = getattr(getattr(producer, "_sender", None), "_client", None)
    connection_delay = getattr(client, "connection_delay", None)
    config = getattr(producer, "config", None)
    if not callable(connection_delay) or not isinstance(config, dict):
        return
    floor_ms = config.get("retry_backoff_ms", 100)

    def delay_ms(node_id: Any) -> float:
        return max(float(floor_ms), float(connection_delay(node_id)) * 1000)

    client.connection_delay = delay_ms


def open_admin_client(**config: Any) -> KafkaAdminClient:
    """A KafkaAdminClient, or the error that kept it from starting, leaving no thread behind.

    kafka-python 3.0 starts the client's I/O thread before it bootstraps and leaves
    it running when bootstrapping fails (no broker answers): one leaked thread per
    try of a probe that retries through a broker outage.
    """
    admin = KafkaAdminClient.__new__(KafkaAdminClient)
    try:
        admin.__init__(**config)
    except BaseException:
        for part, stop in (("_client", "close"), ("_net", "stop")):
            halt = getattr(getattr(admin, part, None), stop, None)
            if callable(halt):
                halt()
        raise
    return admin


def unauthorized_topics(consumer: KafkaConsumer) -> frozenset[str]:
    """The topics the last metadata answer refused this client (no DESCRIBE on them).

    kafka-python 3.0 notes them and logs "Topic … is not authorized" at every metadata
    refresh, but a subscribed consumer never raises: it waits for ever with no
    partition assigned. Empty if the internals differ.
    """
    cluster = getattr(consumer, "_cluster", None)
    return frozenset(getattr(cluster, "unauthorized_topics", None) or ())


def never_create_topics(client: KafkaConsumer | KafkaProducer) -> None:
    """Keep the client's metadata requests from creating the topics they name.

    A broker with auto.create.topics.enable (its default) creates a topic a metadata
    request names: a mistyped topic would be made on the spot. kafka-python 3.0 asks
    with allow_auto_topic_creation=True whatever the client's
    ``allow_auto_create_topics`` says (its connection manager does not pass the setting
    on to the cluster metadata), so it is set there. Does nothing if the internals differ.
    """
    cluster = getattr(client, "_metadata", None) or getattr(client, "_cluster", None)
    config = getattr(cluster, "config", None)
    if isinstance(config, dict) and "allow_auto_create_topics" in config:
        config["allow_auto_create_topics"] = False


def topic_metadata_error(
    consumer: KafkaConsumer, topic: str, timeout_ms: int
) -> BaseException | None:
    """What the broker answers a metadata request naming ``topic`` with: None when it
    describes the topic (or the internals differ), else its error.

    kafka-python 3.0's ``partitions_for_topic`` asks for every topic, and the broker
    leaves out of that answer a topic the principal may not DESCRIBE exactly as one
    that does not exist; only a request naming the topic gets the refusal
    (TopicAuthorizationFailedError) back. Such a request would create the topic on a
    broker with auto.create.topics.enable (its default): kafka-python asks with
    allow_auto_topic_creation=True whatever the consumer says, so it is turned off
    (``never_create_topics``) for good.
    """
    cluster, net, manager = (
        getattr(consumer, name, None) for name in ("_cluster", "_net", "_manager")
    )
    config = getattr(cluster, "config", None)
    if cluster is None or net is None or manager is None or not isinstance(config, dict):
        return None
    never_create_topics(consumer)
    try:
        net.run(manager.wait_for, cluster.set_topics([topic]), timeout_ms)
    except Exception as error:  # the answer, whatever it is, is the result
        return error
    return None


def keep_bytes_before_disconnect(transport: Any) -> None:
    """Work around kafka-python 3.0 dropping the bytes that came with a disconnect.

    Its transport reads until the socket would block; when the peer closed the
    connection right after its last answer, that read ends in EOF and the answer read
    before it is thrown away with the error. A broker refusing a SASL mechanism or the
    credentials does exactly that, so the refusal is lost about half of the time and
    retried as "socket disconnected". With this, the bytes are handed on first and the
    EOF is found by the next read. Does nothing if the internals differ.
    """
    receive = getattr(transport, "_sock_recv", None)
    if not callable(receive):
        return

    def bytes_first() -> tuple[bytes, Any]:
        data, error = receive()
        return (data, None) if error is not None and data else (data, error)

    transport._sock_recv = bytes_first


def wrapped_cluster_refusal(error: BaseException) -> bool:
    """True for kafka-python 3.0's wrapping of an InitProducerId refused as a cluster
    operation: a plain KafkaError ("Unexpected error in InitProducerIdResponse: …
    ClusterAuthorizationFailedError"), not the error class itself."""
    return "ClusterAuthorizationFailedError" in str(error)


def release_parked_records(consumer: KafkaConsumer) -> None:
    """Work around a kafka-python 3.0 fetcher bug that stalls a resumed partition for good.

    Records buffered for a partition when it is paused are parked; the fetcher restores
    them only when its current-records slot is None, and never fetches the partition
    while they are parked. But a slot whose records were all returned stays set (empty,
    falsy) until another partition is paused, so with two or more partitions a
    partition paused for a full window may never be read again. An empty slot holds
    nothing, so emptying it changes nothing else. Does nothing if the internals differ.
    """
    fetcher: Any = getattr(consumer, "_fetcher", None)
    current = getattr(fetcher, "_next_partition_records", None)
    if current is not None and not current:
        fetcher._next_partition_records = None


def resume_interrupted_join(consumer: KafkaConsumer) -> None:
    """Work around two kafka-python 3.0 coordinator bugs around a join a poll gave up on.

    When a poll's timeout ends mid-join, the join goes on as a task for the next poll
    to await. Two things then go wrong:

    - A rebalance started by a metadata change (a topic's partitions appear or grow)
      is not flagged ``rejoin_needed``: the coordinator rejoins because its assignment
      snapshot differs from the metadata, and the leader's assignment makes them equal
      again. The next poll sees nothing to rejoin and never applies the assignment:
      the member owns nothing and stops heartbeating until the group expels it.
    - A join that finished between polls is thrown away and a new one started: a new
      rebalance for the whole group. Members that do not poll all the time (two in one
      thread, a busy worker) can then make each other rejoin for ever.

    So while a join task is held, the rejoin is flagged, and a finished one is handed
    back as pending, which makes the next poll take its result. Does nothing if the
    internals differ.
    """
    coordinator: Any = getattr(consumer, "_coordinator", None)
    task = getattr(coordinator, "_join_task", None)
    if task is None:
        return
    if isinstance(task, Future) and task.succeeded():
        coordinator._join_task = _FinishedJoin(task)
    if getattr(coordinator, "rejoin_needed", True) is False:
        coordinator.request_rejoin()


class _FinishedJoin(Future):  # type: ignore[misc]
    """A join task that succeeded while no poll awaited it, made to look pending.

    kafka-python starts a new join when its task is done; awaiting this one instead
    gives the finished task's result at once.
    """

    __slots__ = ("_finished",)

    def __init__(self, finished: Future) -> None:
        super().__init__()
        self._finished = finished

    def add_callback(self, f: Callable[..., Any], *args: Any, **kwargs: Any) -> _FinishedJoin:
        self._finished.add_callback(f, *args, **kwargs)
        return self

    def add_errback(self, f: Callable[..., Any], *args: Any, **kwargs: Any) -> _FinishedJoin:
        self._finished.add_errback(f, *args, **kwargs)
        return self

    def __await__(self) -> Any:
        return self._finished.__await__()


def fetch_position(consumer: KafkaConsumer, tp: TopicPartition) -> int | None:
    """The consumer's next fetch offset for ``tp``, read without any request to the broker.

    ``KafkaConsumer.position`` may block on offset look-ups; this only reads what the
    consumer knows. It is past transaction markers and aborted records the consumer
    skipped (``read_committed``). None when unknown or if the internals differ.
    """
    subscription: Any = getattr(consumer, "_subscription", None)
    state = getattr(subscription, "assignment", {}).get(tp)
    position = getattr(state, "position", None)
    offset = getattr(position, "offset", None)
    return offset if isinstance(offset, int) else None


# -- record batches the consumer cannot decode ------------------------------------------

_Buffer = bytes | bytearray | memoryview


@dataclass(frozen=True, slots=True)
class UnreadableBatch:
    """A record batch the consumer cannot decode, and where it lies in its partition.

    ``first_offset`` to ``last_offset`` is what a consumer skips to move on: the batch
    from its first record not yet returned. ``raw`` is the batch exactly as the broker
    sent it (Kafka's record-batch format, still compressed), or None when kafka-python
    did not keep it or the batch was cut off.
    """

    topic: str
    partition: int
    first_offset: int
    last_offset: int
    error: str
    raw: bytes | None


class UnreadableBatchDetector:
    """Works around a kafka-python 3.0 fetcher bug that spins for ever on an undecodable batch.

    When decoding a batch raises (a codec library missing, a CRC mismatch, a corrupt
    record), the partition's record generator dies with the error, but the fetcher
    keeps it as its current records (``Fetcher._next_partition_records``, still truthy:
    it is drained only when the generator ends normally). The error reaches ``poll``
    once; from then on every ``fetched_records`` takes nothing from the dead generator
    and goes round its ``while records_remaining > 0`` loop for ever, never returning,
    never yielding to the gevent hub.

    Installed on one consumer, this wraps each partition's record iterator as the
    fetcher parses a fetch response. When decoding fails it notes the batch (offsets,
    raw bytes, error) for ``take``, drains those records so the fetcher moves on to
    other partitions' responses, and lets the error go on to ``poll`` as before, which
    makes ``poll`` return at once. The consumer's position stays at the batch: moving
    past it or stopping is the caller's choice. ``installed`` is False, and nothing is
    changed, if the internals differ.
    """

    def __init__(self, consumer: KafkaConsumer) -> None:
        self._lock = threading.Lock()
        self._found: dict[TopicPartition, UnreadableBatch] = {}
        fetcher: Any = getattr(consumer, "_fetcher", None)
        parse = getattr(fetcher, "_parse_fetched_data", None)
        self.installed = False
        if callable(parse) and hasattr(fetcher, "_next_partition_records"):
            fetcher._parse_fetched_data = self._parsing_with(parse)
            self.installed = True

    def found(self) -> bool:
        """Whether batches were found since the last ``take``."""
        with self._lock:
            return bool(self._found)

    def take(self) -> list[UnreadableBatch]:
        """The batches found since the last call, at most one per partition (the latest)."""
        with self._lock:
            found, self._found = list(self._found.values()), {}
        return found

    def _parsing_with(self, parse: Callable[[Any], Any]) -> Callable[[Any], Any]:
        def parse_guarded(completed_fetch: Any) -> Any:
            raw = _fetched_bytes(completed_fetch)
            try:
                parsed = parse(completed_fetch)
            except Exception as error:
                # The broker said the data is fine (no error code): reading it failed.
                if raw and getattr(completed_fetch.partition_data, "error_code", None) == 0:
                    tp = completed_fetch.topic_partition
                    self._note(tp, completed_fetch.fetched_offset, raw, error)
                raise
            iterator = getattr(parsed, "record_iterator", None)
            if iterator is not None:
                parsed.record_iterator = self._guarded(iterator, parsed, raw)
            return parsed

        return parse_guarded

    def _guarded(self, records: Iterator[Any], parsed: Any, raw: _Buffer | None) -> Iterator[Any]:
        try:
            yield from records
        except Exception as error:
            self._note(parsed.topic_partition, parsed.next_fetch_offset, raw, error)
            # Emptied, the slot no longer holds the fetcher: it takes the next response.
            parsed.drain()
            raise

    def _note(
        self,
        tp: TopicPartition,
        offset: int,
        raw: _Buffer | None,
        error: Exception,
    ) -> None:
        first, last, batch = offset, offset, None
        located = _batch_holding(raw, offset) if raw else None
        if located is not None:
            base, last, batch = located
            first = max(offset, base)
        name, text = type(error).__name__, str(error)
        # kafka-python's errors name themselves; others do not.
        reason = text if name in text else f"{name}: {text}"
        found = UnreadableBatch(tp.topic, tp.partition, first, last, reason, batch)
        with self._lock:
            self._found[tp] = found


def _fetched_bytes(completed_fetch: Any) -> _Buffer | None:
    # The response's own buffer, not a copy: this runs for every fetch response.
    records = getattr(getattr(completed_fetch, "partition_data", None), "records", None)
    return records if isinstance(records, bytes | bytearray | memoryview) else None


# Kafka's log format, the same framing for every message format version: each entry
# starts with its offset (int64; the base offset from v2 on) and its length (int32).
# From v2 on the magic byte is at 16 and the last offset delta (int32) at 23.
_ENTRY_HEADER = struct.Struct(">qi")
_MAGIC_AT = 16
_LAST_OFFSET_DELTA = struct.Struct(">i")
_LAST_OFFSET_DELTA_AT = 23


def _batch_holding(raw: _Buffer, offset: int) -> tuple[int, int, bytes] | None:
    """The first whole batch in ``raw`` that ends at or after ``offset``: (base, last, bytes).

    None when there is none (the batch was cut off by the fetch size, or the framing is
    corrupt). Reads only the batch headers: nothing is decompressed.
    """
    view = memoryview(raw)
    pos = 0
    while pos + _ENTRY_HEADER.size <= len(view):
        base, length = _ENTRY_HEADER.unpack_from(view, pos)
        end = pos + _ENTRY_HEADER.size + length
        if length <= 0 or end > len(view):
            return None
        last = base  # v0/v1: an entry's offset is its last (a compressed wrapper's too)
        has_delta = pos + _LAST_OFFSET_DELTA_AT + _LAST_OFFSET_DELTA.size <= end
        if has_delta and view[pos + _MAGIC_AT] >= 2:
            (delta,) = _LAST_OFFSET_DELTA.unpack_from(view, pos + _LAST_OFFSET_DELTA_AT)
            last = base + delta
        if last >= offset:
            return base, last, bytes(view[pos:end])
        pos = end
    return None
