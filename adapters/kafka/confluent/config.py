"""``KafkaClientSettings`` as librdkafka's configuration keys (no librdkafka import here).

Each setting means what it means for kafka-python (``settings.consumer_kwargs``); the
comments say where librdkafka's default differs and why it is overridden.
"""

from __future__ import annotations

from typing import Any

from jobworker.adapters.kafka.settings import KafkaClientSettings, SecurityProtocol

# librdkafka keeps up to this many records per partition fetched ahead by default
# (100,000): far more than the engine takes, in memory. kafka-python reads ahead about
# one fetch; this keeps the confluent consumer's read-ahead of the same order.
_QUEUED_MIN_MESSAGES = 10_000


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
        # The read-ahead is bounded by bytes as with kafka-python (librdkafka: 64 MiB).
        "queued.max.messages.kbytes": max(1, fetch_max_bytes // 1024),
        "queued.min.messages": _QUEUED_MIN_MESSAGES,
        # kafka-python checks every batch's CRC; librdkafka does only when asked, and
        # then reports a failing batch as an error and reads on (confluent/consumer.py).
        "check.crcs": True,
        # As kafka-python's (settings.consumer_kwargs): added partitions within 30 s.
        "topic.metadata.refresh.interval.ms": 30_000,
    }
