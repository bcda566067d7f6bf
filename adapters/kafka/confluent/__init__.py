"""The Kafka source's second client, confluent-kafka (librdkafka): KAFKA_CLIENT=confluent.

Imported only when chosen (``wiring.make_consumer``): kafka-python stays the default and
loading librdkafka costs start-up time. ``config`` maps ``KafkaClientSettings`` to
librdkafka's keys without importing it; ``consumer`` is the consumer behind the seam.
"""
