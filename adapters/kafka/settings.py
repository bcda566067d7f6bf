"""How to reach the Kafka cluster: the settings every client (consumer, producer) shares.

The values come typed and checked from the settings' definitions
(``entrypoints/settings``), which check addresses and topic names by Kafka's rules below;
``KafkaClientSettings`` takes them as valid and turns them into kafka-python's arguments.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from kafka.util import ensure_valid_topic_name

from jobworker.domain.errors import ConfigurationError

# kafka-python's default; a heartbeat every third of the session is the usual ratio.
MAX_DERIVED_HEARTBEAT_MS = 3_000


class SecurityProtocol(StrEnum):
    """KAFKA_SECURITY_PROTOCOL: how a client talks to the brokers."""

    PLAINTEXT = "PLAINTEXT"
    SSL = "SSL"
    SASL_PLAINTEXT = "SASL_PLAINTEXT"
    SASL_SSL = "SASL_SSL"

    @property
    def uses_sasl(self) -> bool:
        return self in (SecurityProtocol.SASL_PLAINTEXT, SecurityProtocol.SASL_SSL)

    @property
    def uses_tls(self) -> bool:
        return self in (SecurityProtocol.SSL, SecurityProtocol.SASL_SSL)


class SaslMechanism(StrEnum):
    """KAFKA_SASL_MECHANISM: how a SASL client proves who it is."""

    PLAIN = "PLAIN"
    SCRAM_SHA_256 = "SCRAM-SHA-256"
    SCRAM_SHA_512 = "SCRAM-SHA-512"


class IsolationLevel(StrEnum):
    """KAFKA_ISOLATION_LEVEL: which records of transactions a consumer reads."""

    READ_COMMITTED = "read_committed"  # never those of aborted or still open ones
    READ_UNCOMMITTED = "read_uncommitted"


# In the order a client that does not know the broker's offers tries them.
SASL_MECHANISMS = tuple(SaslMechanism)


def parse_brokers(text: str, variable: str = "KAFKA_BROKERS") -> tuple[str, ...]:
    """Split ``host:port,host:port`` into addresses; ConfigurationError names ``variable``."""
    brokers = tuple(part.strip() for part in text.split(",") if part.strip())
    if not brokers:
        raise ConfigurationError(variable, "no broker address given (expected host:port,…)")
    for broker in brokers:
        if "://" in broker:
            raise ConfigurationError(
                variable,
                f"{broker!r}: give host:port without a scheme (security is set by"
                " KAFKA_SECURITY_PROTOCOL)",
            )
        host, _, port = broker.rpartition(":")
        if not host or any(c.isspace() or c in "/@" for c in host):
            raise ConfigurationError(variable, f"{broker!r} is not a host:port address")
        if not port.isdigit() or not 0 < int(port) < 65536:
            raise ConfigurationError(variable, f"{broker!r}: the port must be 1-65535")
    return brokers


def parse_topic(text: str) -> str:
    """A topic name Kafka takes (characters, length); ValueError says what is wrong."""
    topic = text.strip()
    ensure_valid_topic_name(topic)
    return topic


# Kafka's own default is 1 MiB. kafka-python holds a whole fetch twice while it parses
# it, so with a backlog over 1 MiB a partition the worker's peak RSS at pool 1,000 grew to
# 96-97 MB (100,000 records), 90.5 MB at 256 KiB, the rate the same within noise (issue
# 21). A record larger than this still comes, alone: the limit is not a size cap.
MAX_PARTITION_FETCH_BYTES = 262_144

# Kafka's default is 500 ms. A client keeps one fetch out to a broker at a time, for the
# partitions it holds no records of, and the broker answers it at once only if one of
# them has records. With a partition caught up (or at the end of a backlog) in that
# fetch, the others' next records waited up to the whole wait: with kafka-python at pool
# 1,000, 10,000 sleeping jobs ran at 7,700/s with 500 ms, 10,500/s with 100 ms (issue 21,
# docs/benchmarks.md). An idle consumer asks each broker ten times a second instead of two.
FETCH_MAX_WAIT_MS = 100


@dataclass(frozen=True, slots=True)
class KafkaClientSettings:
    """Connection, security and group-timing settings for kafka-python clients.

    Each field is one environment variable: ``bootstrap_servers`` KAFKA_BROKERS,
    ``client_id`` KAFKA_CLIENT_ID, ``security_protocol`` KAFKA_SECURITY_PROTOCOL,
    ``sasl_*`` KAFKA_SASL_*, ``ssl_*`` KAFKA_SSL_*, ``session_timeout_ms``
    KAFKA_SESSION_TIMEOUT, ``max_poll_interval_ms`` KAFKA_MAX_POLL_INTERVAL (both are
    durations there), ``max_poll_records`` KAFKA_MAX_POLL_RECORDS and
    ``isolation_level`` KAFKA_ISOLATION_LEVEL, ``max_partition_fetch_bytes``
    KAFKA_MAX_PARTITION_FETCH_BYTES and ``fetch_max_bytes`` KAFKA_FETCH_MAX_BYTES (what
    one fetch may bring per partition and in all: the records read ahead of the engine,
    so a consumer's memory is bounded however long the backlog) and
    ``fetch_max_wait_ms`` KAFKA_FETCH_MAX_WAIT. The one exception,
    ``heartbeat_interval_ms``, has no variable: left None it is a third of the session
    timeout, at most 3 s.

    The values are taken as valid: the settings' definitions checked each, and the
    rules between them, once (``jobworker settings`` shows the same problems).
    """

    bootstrap_servers: Sequence[str]
    client_id: str = "jobworker"
    security_protocol: SecurityProtocol = SecurityProtocol.PLAINTEXT
    sasl_mechanism: SaslMechanism | None = None
    sasl_username: str | None = None
    sasl_password: str | None = None
    ssl_cafile: str | None = None
    ssl_certfile: str | None = None
    ssl_keyfile: str | None = None
    session_timeout_ms: int = 45_000
    max_poll_records: int = 500
    max_poll_interval_ms: int = 300_000
    heartbeat_interval_ms: int | None = None
    isolation_level: IsolationLevel = IsolationLevel.READ_COMMITTED
    # Kafka's own defaults (1 MiB, 50 MiB): a single record larger than either is still
    # read, one at a time.
    max_partition_fetch_bytes: int = MAX_PARTITION_FETCH_BYTES
    fetch_max_bytes: int = 52_428_800
    fetch_max_wait_ms: int = FETCH_MAX_WAIT_MS

    def __post_init__(self) -> None:
        object.__setattr__(self, "bootstrap_servers", tuple(self.bootstrap_servers))
        if self.heartbeat_interval_ms is None:
            derived = min(MAX_DERIVED_HEARTBEAT_MS, max(1, self.session_timeout_ms // 3))
            object.__setattr__(self, "heartbeat_interval_ms", derived)

    def client_kwargs(self) -> dict[str, Any]:
        """Arguments every kafka-python client takes: where, who, and how securely."""
        protocol = SecurityProtocol(self.security_protocol)
        kwargs: dict[str, Any] = {
            "bootstrap_servers": list(self.bootstrap_servers),
            "client_id": self.client_id,
            "security_protocol": str(protocol),
            # kafka-python backs off reconnects up to 30 s by default (Java: 1 s): after
            # a broker restart that left partitions idle for half a minute.
            "reconnect_backoff_max_ms": 2_000,
        }
        if protocol.uses_sasl:
            kwargs |= {
                "sasl_mechanism": self.sasl_mechanism and str(self.sasl_mechanism),
                "sasl_plain_username": self.sasl_username,
                "sasl_plain_password": self.sasl_password,
            }
        if protocol.uses_tls:
            kwargs |= {
                "ssl_cafile": self.ssl_cafile,
                "ssl_certfile": self.ssl_certfile,
                "ssl_keyfile": self.ssl_keyfile,
            }
        return kwargs

    def consumer_kwargs(self) -> dict[str, Any]:
        """``client_kwargs`` plus the group-membership timing a KafkaConsumer takes."""
        return self.client_kwargs() | {
            "session_timeout_ms": self.session_timeout_ms,
            "heartbeat_interval_ms": self.heartbeat_interval_ms,
            "max_poll_records": self.max_poll_records,
            "max_poll_interval_ms": self.max_poll_interval_ms,
            "isolation_level": str(self.isolation_level),
            "max_partition_fetch_bytes": self.max_partition_fetch_bytes,
            "fetch_max_bytes": self.fetch_max_bytes,
            "fetch_max_wait_ms": self.fetch_max_wait_ms,
            # Partitions added to the topic are noticed (and rebalanced onto the
            # group) within 30 s rather than kafka-python's 5 min.
            "metadata_max_age_ms": 30_000,
        }

    def producer_kwargs(self) -> dict[str, Any]:
        """``client_kwargs`` for a KafkaProducer."""
        return self.client_kwargs()
