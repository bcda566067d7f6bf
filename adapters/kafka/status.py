"""The fleet's status topic: each worker's status record, keyed by its worker id.

The topic is compacted, so it holds the last record of every worker (a console reads it
from the start); a worker stopping writes a tombstone (a null value), which compaction
turns into no record. Nothing here may affect jobs: the publisher runs on a greenlet of
its own, a send waits ``MAX_BLOCK_MS`` at most, and every failure is logged (sparsely)
and swallowed.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import gevent
import orjson
import structlog
from gevent.event import Event
from kafka import KafkaProducer
from kafka.errors import TopicAlreadyExistsError

from jobworker.adapters.kafka.quirks import (
    never_create_topics,
    open_admin_client,
    pace_unready_sends,
)
from jobworker.adapters.kafka.settings import KafkaClientSettings
from jobworker.adapters.sparse_warnings import SparseWarning

log = structlog.get_logger(__name__)

# How long a send may wait for the topic's metadata or room in the producer's buffer.
MAX_BLOCK_MS = 500
# How long asking the broker to create the topic may take, at start (on our greenlet).
CREATE_TIMEOUT_MS = 5_000
# The topic as the worker creates it: compacted, so it keeps each worker's last record;
# segments roll hourly, so that compaction (which skips the active segment) runs.
TOPIC_CONFIGS = {"cleanup.policy": "compact", "segment.ms": "3600000"}


def create_status_topic(settings: KafkaClientSettings, topic: str) -> None:
    """Create ``topic`` compacted (one partition, the broker's replication factor),
    unless it exists. A broker that refuses (no CREATE on the topic, an old broker) gets
    one warning saying how to create it by hand; nothing is raised."""
    try:
        admin = open_admin_client(
            **settings.client_kwargs(),
            request_timeout_ms=CREATE_TIMEOUT_MS,
            bootstrap_timeout_ms=CREATE_TIMEOUT_MS,
        )
    except Exception as error:  # the sends that follow report an unreachable broker
        log.warning("cannot create the status topic", status_topic=topic, error=str(error))
        return
    try:
        admin.create_topics(
            {topic: {"num_partitions": 1, "configs": TOPIC_CONFIGS}},
            timeout_ms=CREATE_TIMEOUT_MS,
        )
        log.info("status topic created", status_topic=topic, configs=TOPIC_CONFIGS)
    except TopicAlreadyExistsError:
        pass
    except Exception as error:  # no CREATE grant, an old broker: made by hand instead
        log.warning(
            "cannot create the status topic (KAFKA_STATUS_TOPIC); create it compacted",
            status_topic=topic,
            error=str(error),
            error_type=type(error).__name__,
            fix=f"kafka-topics.sh --create --topic {topic} --partitions 1"
            " --config cleanup.policy=compact",
        )
    finally:
        admin.close()


class KafkaStatusPublisher:
    """Sends ``record()`` every ``interval_s`` to ``topic`` keyed by ``worker_id``;
    ``stop`` writes the tombstone.

    ``record`` is called on the publisher's greenlet and must not block. A record that
    cannot be made or sent is dropped (the next one says the same, newer): one warning
    a minute says so, counting the others. ``open_producer`` and ``create_topic`` are
    there for tests.
    """

    def __init__(
        self,
        settings: KafkaClientSettings,
        topic: str,
        worker_id: str,
        record: Callable[[], Mapping[str, Any]],
        interval_s: float,
        *,
        open_producer: Callable[[], Any] | None = None,
        create_topic: Callable[[], None] | None = None,
        warnings: SparseWarning | None = None,
    ) -> None:
        self.topic = topic
        self.failures = 0
        self.sent = 0
        self._key = worker_id.encode()
        self._record = record
        self._interval_s = interval_s
        self._open_producer = open_producer or (lambda: _open_producer(settings))
        self._create_topic = create_topic or (lambda: create_status_topic(settings, topic))
        self._warnings = warnings or SparseWarning()
        self._producer: Any = None
        self._stopping = Event()
        self._greenlet: gevent.Greenlet[..., object] | None = None

    def start(self) -> None:
        self._greenlet = gevent.spawn(self._run)

    def publish(self) -> None:
        """Send one record now; never raises."""
        try:
            value = orjson.dumps(self._record())
            self._send(value)
        except Exception as error:  # whatever it is, jobs go on
            self._failed(error)

    def stop(self, timeout_s: float) -> None:
        """Stop publishing, write the tombstone and close, all within about ``timeout_s``.
        Never raises."""
        self._stopping.set()
        if self._greenlet is not None:
            self._greenlet.kill(block=True, timeout=timeout_s)
        try:
            if self._producer is not None:  # never connected: there is nothing to retract
                self._send(None).get(timeout=timeout_s)
        except Exception as error:  # the record stays until a console sees it is old
            self._failed(error)
        self.close(timeout_s)

    def close(self, timeout_s: float = 0.0) -> None:
        producer, self._producer = self._producer, None
        if producer is None:
            return
        try:
            producer.close(timeout=timeout_s)
        except Exception as error:  # closing is best effort
            log.warning("status producer did not close cleanly", error=str(error))

    def _run(self) -> None:
        try:
            self._create_topic()
        except Exception as error:  # publishing goes on: the topic may exist anyway
            self._failed(error)
        while not self._stopping.is_set():
            self.publish()
            self._stopping.wait(self._interval_s)

    def _send(self, value: bytes | None) -> Any:
        if self._producer is None:
            self._producer = self._open_producer()
        future = self._producer.send(self.topic, key=self._key, value=value)
        future.add_callback(self._sent)
        future.add_errback(self._failed)
        return future

    def _sent(self, _metadata: object) -> None:
        self.sent += 1

    def _failed(self, error: BaseException) -> None:
        self.failures += 1
        held_back = self._warnings.due()
        if held_back is not None:
            log.warning(
                "cannot publish the worker status (KAFKA_STATUS_TOPIC); jobs are not affected",
                status_topic=self.topic,
                error=str(error),
                error_type=type(error).__name__,
                held_back=held_back,
            )


def _open_producer(settings: KafkaClientSettings) -> KafkaProducer:
    producer = KafkaProducer(
        **settings.producer_kwargs(),
        acks=1,
        max_block_ms=MAX_BLOCK_MS,
        # As the dead-letter producers (dlq.py): a refusal names the topic, not the cluster.
        enable_idempotence=False,
        retries=0,  # a lost record is replaced by the next one
    )
    # A send must not auto-create the topic uncompacted when creating it failed.
    never_create_topics(producer)
    # While the broker does not answer, records wait for it without spinning.
    pace_unready_sends(producer)
    return producer
