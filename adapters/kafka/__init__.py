"""Apache Kafka adapters: the job source (consumer group), the publisher, the dead-letter topic."""

from jobworker.adapters.kafka.publisher import KafkaJobPublisher, PublishFailed
from jobworker.adapters.kafka.records import KafkaReceipt
from jobworker.adapters.kafka.settings import KafkaClientSettings, parse_brokers
from jobworker.adapters.kafka.source import KafkaJobSource
from jobworker.adapters.kafka.wiring import SourceOptions

__all__ = [
    "KafkaClientSettings",
    "KafkaJobPublisher",
    "KafkaJobSource",
    "KafkaReceipt",
    "PublishFailed",
    "SourceOptions",
    "parse_brokers",
]
