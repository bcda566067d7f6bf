"""``KafkaClientSettings`` as librdkafka's configuration keys (no librdkafka import here).

Each setting means what it means for kafka-python (``settings.consumer_kwargs``); the
comments say where librdkafka's default differs and why it is overridden.
"""

from __future__ import annotations

from typing import Any

from jobworker.adapters.kafka.settings import KafkaClientSettings, SecurityProtocol

# What one fetch brings of a partition at most, unless KAFKA_MAX_PARTITION_FETCH_BYTES
# says otherwise (the setting's default with KAFKA_CLIENT=confluent). kafka-python keeps
# a fetch's bytes whole and decodes them as they are taken; librdkafka makes every record
# a message of its own as it arrives, about 400 bytes besides its key and value
# (measured). So 1 MiB of small job records is some 15,000 records and ~7 MB per
# partition; 64 KiB is about one poll's worth of them (KAFKA_MAX_POLL_RECORDS), and
# measured no loss of rate at pool 10 or 1,000. A larger record still comes whole.
CONFLUENT_MAX_PARTITION_FETCH_BYTES = 65_536
# librdkafka waits this long before fetching again once its queue is full (its default,
# 1 s, would leave a read-ahead as short as ours empty for most of that second).
_FETCH_QUEUE_BACKOFF_MS = 20


def client_config(settings: KafkaClientSettings) -> dict[str, Any]:
    """Where, who, and how securely: what every librdkafka client takes."""
    protocol = SecurityProtocol(settings.security_protocol)
    config: dict[str, Any] = {
        "bootstrap.servers": ",".join(settings.bootstrap_servers),
        "client.id": settings.client_id,
        "security.protocol": str(protocol).lower(),
        # As kafka-python's (settings.client_kwargs): a restarted broker is tried again
        # within 2 s, not librdkafka's 10 s.
        "reconnect.backoff.max.ms": 2_000,
    }
    if protocol.uses_sasl:
        config |= {
            "sasl.mechanism": str(settings.sasl_mechanism or "PLAIN"),
            "sasl.username": settings.sasl_username or "",
            "sasl.password": settings.sasl_password or "",
        }
    if protocol.uses_tls:
        # Without a bundle kafka-python trusts the system's CAs; librdkafka's wheel
        # carries its own OpenSSL, which finds them only when asked to probe.
        config["ssl.ca.location"] = settings.ssl_cafile or "probe"
        if settings.ssl_certfile:
            config["ssl.certificate.location"] = settings.ssl_certfile
        if settings.ssl_keyfile:
            config["ssl.key.location"] = settings.ssl_keyfile
    return config


def consumer_config(settings: KafkaClientSettings, group_id: str) -> dict[str, Any]:
    """``client_config`` plus a group member committing by hand, as the source needs."""
    fetch_max_bytes = settings.fetch_max_bytes
    return client_config(settings) | {
        "group.id": group_id,
        "enable.auto.commit": False,
        "enable.auto.offset.store": False,
        "auto.offset.reset": "earliest",
        # Eager, as kafka-python's default assignors: a rebalance revokes every
        # partition, then assigns the new set (rebalance.py counts on it).
        "partition.assignment.strategy": "range,roundrobin",
        "session.timeout.ms": settings.session_timeout_ms,
        "heartbeat.interval.ms": settings.heartbeat_interval_ms,
        # librdkafka refuses a poll interval under the session timeout, kafka-python
        # does not: the broker then judges the session timeout alone, with both.
        "max.poll.interval.ms": max(settings.max_poll_interval_ms, settings.session_timeout_ms),
        "isolation.level": str(settings.isolation_level),
        "max.partition.fetch.bytes": settings.max_partition_fetch_bytes,
        "fetch.max.bytes": fetch_max_bytes,
        "fetch.wait.max.ms": settings.fetch_max_wait_ms,
        # The read-ahead, in all partitions together (librdkafka's queue of fetched
        # messages is one for the consumer): fetched again while under two polls' worth
        # of records (librdkafka: 100,000) and under KAFKA_FETCH_MAX_BYTES, the bytes
        # kafka-python's one fetch may hold (librdkafka: 64 MiB); plus the fetch under way.
        "queued.min.messages": 2 * settings.max_poll_records,
        "queued.max.messages.kbytes": max(1, fetch_max_bytes // 1024),
        "fetch.queue.backoff.ms": _FETCH_QUEUE_BACKOFF_MS,
        # kafka-python checks every batch's CRC; librdkafka does only when asked, and
        # then reports a failing batch as an error and reads on (confluent/consumer.py).
        "check.crcs": True,
        # As kafka-python's (settings.consumer_kwargs): added partitions within 30 s.
        "topic.metadata.refresh.interval.ms": 30_000,
    }
