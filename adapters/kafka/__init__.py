"""Apache Kafka adapters: the job source (consumer group), the publisher, the dead-letter topic."""

from adapters.kafka.publisher import KafkaJobPublisher, PublishFailed
from adapters.kafka.settings import KafkaClientSettings, parse_brokers
from adapters.kafka.source import KafkaJobSource, KafkaReceipt

__all__ = [
    "KafkaClientSettings",
    "KafkaJobPublisher",
    "KafkaJobSource",
    "KafkaReceipt",
    "PublishFailed",
    "parse_brokers",
]
