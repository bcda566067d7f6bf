"""Reading the fleet's status topic as the web console does: from its first record on,
then as records come, joining no group and committing nothing.

The topic is compacted, so its start holds at least the last record of every worker
(and, until compaction runs, the records of the last hour or so: the console's history).
"""

from __future__ import annotations

from typing import Any

import structlog
from kafka import KafkaConsumer, TopicPartition
from kafka.errors import KafkaError

from jobworker.adapters.kafka.bootstrap import open_client
from jobworker.adapters.kafka.log_noise import quiet_topic_lookup
from jobworker.adapters.kafka.quirks import never_create_topics
from jobworker.adapters.kafka.settings import KafkaClientSettings
from jobworker.adapters.observability.status_record import UnreadableStatus, read_status
from jobworker.adapters.sparse_warnings import SparseWarning
from jobworker.domain.errors import JobWorkerError
from jobworker.domain.fleet import WorkerStatus

log = structlog.get_logger(__name__)


class KafkaStatusFeed:
    """``StatusFeed`` over the status topic ``topic`` (KAFKA_STATUS_TOPIC)."""

    def __init__(self, settings: KafkaClientSettings, topic: str) -> None:
        self.topic = topic
        self._settings = settings
        self._consumer: Any = None  # opened by the first read, on the reader's greenlet
        self._assigned = False
        self._unreadable = SparseWarning()

    def read(self, max_wait_s: float) -> list[tuple[str, WorkerStatus | None]]:
        try:
            if self._consumer is None:
                self._consumer = self._open()
            if not self._assigned and not self._assign():
                # Opened again for the next look: a client that looked for a missing
                # topic goes on asking the broker for it.
                self.close()
                raise JobWorkerError(
                    f"Kafka has no topic {self.topic!r} (KAFKA_STATUS_TOPIC) yet: no worker"
                    " has published its status (STATUS_INTERVAL=0 turns it off)"
                )
            batches = self._consumer.poll(timeout_ms=int(max_wait_s * 1000), max_records=2000)
        except KafkaError as error:
            raise JobWorkerError(
                f"cannot read topic {self.topic!r} (KAFKA_STATUS_TOPIC):"
                f" {type(error).__name__}: {error}"
            ) from None
        records = sorted(
            (r for rs in batches.values() for r in rs), key=lambda r: (r.timestamp, r.offset)
        )
        return [read for read in map(self._status, records) if read is not None]

    def close(self) -> None:
        consumer, self._consumer = self._consumer, None
        if consumer is not None:
            consumer.close(autocommit=False)

    def _open(self) -> Any:
        consumer = open_client(
            KafkaConsumer,
            self._settings,
            **self._settings.consumer_kwargs(),
            group_id=None,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
        )
        never_create_topics(consumer)
        return consumer

    def _assign(self) -> bool:
        with quiet_topic_lookup(self.topic):  # a missing topic is said on the page
            partitions = self._consumer.partitions_for_topic(self.topic)
        if not partitions:
            return False
        self._consumer.assign([TopicPartition(self.topic, p) for p in sorted(partitions)])
        self._consumer.seek_to_beginning()
        self._assigned = True
        return True

    def _status(self, record: Any) -> tuple[str, WorkerStatus | None] | None:
        if record.key is None:
            return None  # not a worker's: every status is keyed by its worker id
        worker_id = record.key.decode(errors="replace")
        if record.value is None:
            return worker_id, None
        try:
            return worker_id, read_status(record.value)
        except UnreadableStatus as error:
            held_back = self._unreadable.due()
            if held_back is not None:
                log.warning(
                    "skipping a status record this console cannot read",
                    status_topic=self.topic,
                    worker_id=worker_id,
                    offset=record.offset,
                    error=str(error),
                    held_back=held_back,
                )
            return None
