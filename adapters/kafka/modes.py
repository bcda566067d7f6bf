"""The Kafka source's modes, as the settings name them (values are the variables' words).

StrEnums, so that a mode compares equal to the string a setting gives: settings parse
the variable into one of these once, and the source and its bookkeeping take them typed
without checking them again.
"""

from __future__ import annotations

from enum import StrEnum


class Ordering(StrEnum):
    """KAFKA_ORDERING: which jobs of a partition may run at the same time."""

    NONE = "none"  # all of them, finishing in any order
    KEY = "key"  # one job of a record key at a time, in offset order
    PARTITION = "partition"  # one job of the partition at a time


class UnreadableBatches(StrEnum):
    """KAFKA_UNREADABLE_BATCHES: what a record batch the consumer cannot decode does."""

    DEAD_LETTER = "dead-letter"  # written to the dead-letter topic and skipped
    FAIL = "fail"  # stops the source, nothing committed past it


class KafkaClient(StrEnum):
    """KAFKA_CLIENT: which Kafka client library the job source consumes with."""

    KAFKA_PYTHON = "kafka-python"  # pure Python, on the hub (the default)
    CONFLUENT = "confluent"  # confluent-kafka (librdkafka), on a native thread
