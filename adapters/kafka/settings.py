"""How to reach the Kafka cluster: the settings every client (consumer, producer) shares.

Errors name the environment variable an operator sets (``entrypoints/settings.py``), so
the one-line message at start-up says what to fix.
"""

from __future__ import annotations

import ssl
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

from jobworker.domain.errors import ConfigurationError

SECURITY_PROTOCOLS = ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")
SASL_MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")
ISOLATION_LEVELS = ("read_committed", "read_uncommitted")
# kafka-python's default; a heartbeat every third of the session is the usual ratio.
MAX_DERIVED_HEARTBEAT_MS = 3_000


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


@dataclass(frozen=True, slots=True)
class KafkaClientSettings:
    """Connection, security and group-timing settings for kafka-python clients.

    Each field is one environment variable: ``bootstrap_servers`` KAFKA_BROKERS,
    ``client_id`` KAFKA_CLIENT_ID, ``security_protocol`` KAFKA_SECURITY_PROTOCOL,
    ``sasl_*`` KAFKA_SASL_*, ``ssl_*`` KAFKA_SSL_*, ``session_timeout_ms``
    KAFKA_SESSION_TIMEOUT, ``max_poll_interval_ms`` KAFKA_MAX_POLL_INTERVAL (both are
    durations there), ``max_poll_records`` KAFKA_MAX_POLL_RECORDS and
    ``isolation_level`` KAFKA_ISOLATION_LEVEL (``read_committed``: records of aborted or
    still open transactions are never read), ``max_partition_fetch_bytes``
    KAFKA_MAX_PARTITION_FETCH_BYTES and ``fetch_max_bytes`` KAFKA_FETCH_MAX_BYTES (what
    one fetch may bring per partition and in all: the records read ahead of the engine,
    so a consumer's memory is bounded however long the backlog). The one exception,
    ``heartbeat_interval_ms``, has no variable: left None it is a third of the session
    timeout, at most 3 s. The TLS files must be readable when the settings are made.
    """

    bootstrap_servers: Sequence[str]
    client_id: str = "jobworker"
    security_protocol: str = "PLAINTEXT"
    sasl_mechanism: str | None = None
    sasl_username: str | None = None
    sasl_password: str | None = None
    ssl_cafile: str | None = None
    ssl_certfile: str | None = None
    ssl_keyfile: str | None = None
    session_timeout_ms: int = 45_000
    max_poll_records: int = 500
    max_poll_interval_ms: int = 300_000
    heartbeat_interval_ms: int | None = None
    isolation_level: str = "read_committed"
    # Kafka's own defaults (1 MiB, 50 MiB): a single record larger than either is still
    # read, one at a time.
    max_partition_fetch_bytes: int = 1_048_576
    fetch_max_bytes: int = 52_428_800

    def __post_init__(self) -> None:
        servers = self.bootstrap_servers
        text = servers if isinstance(servers, str) else ",".join(servers)
        object.__setattr__(self, "bootstrap_servers", parse_brokers(text))
        if self.security_protocol not in SECURITY_PROTOCOLS:
            raise ConfigurationError(
                "KAFKA_SECURITY_PROTOCOL",
                f"{self.security_protocol!r} is not one of {', '.join(SECURITY_PROTOCOLS)}",
            )
        if self.security_protocol.startswith("SASL_"):
            self._check_sasl()
        self._check_tls_files()
        if self.isolation_level not in ISOLATION_LEVELS:
            raise ConfigurationError(
                "KAFKA_ISOLATION_LEVEL",
                f"{self.isolation_level!r} is not one of {', '.join(ISOLATION_LEVELS)}",
            )
        for variable, value, unit in (
            ("KAFKA_SESSION_TIMEOUT", self.session_timeout_ms, " ms"),
            ("KAFKA_MAX_POLL_INTERVAL", self.max_poll_interval_ms, " ms"),
            ("KAFKA_MAX_POLL_RECORDS", self.max_poll_records, ""),
            ("KAFKA_MAX_PARTITION_FETCH_BYTES", self.max_partition_fetch_bytes, " bytes"),
            ("KAFKA_FETCH_MAX_BYTES", self.fetch_max_bytes, " bytes"),
        ):
            if value <= 0:
                raise ConfigurationError(variable, f"must be greater than zero (got {value}{unit})")
        if self.heartbeat_interval_ms is None:
            derived = min(MAX_DERIVED_HEARTBEAT_MS, max(1, self.session_timeout_ms // 3))
            object.__setattr__(self, "heartbeat_interval_ms", derived)
        elif not 0 < self.heartbeat_interval_ms < self.session_timeout_ms:
            # Only code sets it (there is no variable): a programming error.
            raise ValueError(
                f"heartbeat_interval_ms ({self.heartbeat_interval_ms}) must be positive and"
                f" below session_timeout_ms ({self.session_timeout_ms})"
            )

    def _check_sasl(self) -> None:
        if self.sasl_mechanism not in SASL_MECHANISMS:
            raise ConfigurationError(
                "KAFKA_SASL_MECHANISM",
                f"{self.sasl_mechanism!r} is not one of {', '.join(SASL_MECHANISMS)}"
                f" (required by {self.security_protocol})",
            )
        if not self.sasl_username:
            raise ConfigurationError(
                "KAFKA_SASL_USERNAME", f"is required by {self.security_protocol}"
            )
        if not self.sasl_password:
            raise ConfigurationError(
                "KAFKA_SASL_PASSWORD", f"is required by {self.security_protocol}"
            )

    def _check_tls_files(self) -> None:
        # Found now, a bad path is one clear line; found by kafka-python, it is half a
        # minute of connection retries ending in "cannot reach Kafka".
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        if self.ssl_cafile:
            _readable("KAFKA_SSL_CAFILE", self.ssl_cafile)
            try:
                context.load_verify_locations(cafile=self.ssl_cafile)
            except ssl.SSLError as error:
                _unusable("KAFKA_SSL_CAFILE", self.ssl_cafile, f"no PEM certificates ({error})")
        if self.ssl_keyfile and not self.ssl_certfile:
            raise ConfigurationError("KAFKA_SSL_CERTFILE", "is required with KAFKA_SSL_KEYFILE")
        if self.ssl_certfile:
            _readable("KAFKA_SSL_CERTFILE", self.ssl_certfile)
            if self.ssl_keyfile:
                _readable("KAFKA_SSL_KEYFILE", self.ssl_keyfile)
            try:
                context.load_cert_chain(self.ssl_certfile, self.ssl_keyfile, password=_no_password)
            except (ssl.SSLError, _EncryptedKeyError) as error:
                variable = "KAFKA_SSL_KEYFILE" if self.ssl_keyfile else "KAFKA_SSL_CERTFILE"
                path = self.ssl_keyfile or self.ssl_certfile
                _unusable(variable, path, f"no usable certificate and private key ({error})")
        if (self.ssl_cafile or self.ssl_certfile) and self.security_protocol not in (
            "SSL",
            "SASL_SSL",
        ):
            raise ConfigurationError(
                "KAFKA_SECURITY_PROTOCOL",
                f"is {self.security_protocol}, so the KAFKA_SSL_* files would be ignored"
                " (use SSL or SASL_SSL)",
            )

    def client_kwargs(self) -> dict[str, Any]:
        """Arguments every kafka-python client takes: where, who, and how securely."""
        kwargs: dict[str, Any] = {
            "bootstrap_servers": list(self.bootstrap_servers),
            "client_id": self.client_id,
            "security_protocol": self.security_protocol,
            # kafka-python backs off reconnects up to 30 s by default (Java: 1 s): after
            # a broker restart that left partitions idle for half a minute.
            "reconnect_backoff_max_ms": 2_000,
        }
        if self.security_protocol.startswith("SASL_"):
            kwargs |= {
                "sasl_mechanism": self.sasl_mechanism,
                "sasl_plain_username": self.sasl_username,
                "sasl_plain_password": self.sasl_password,
            }
        if self.security_protocol in ("SSL", "SASL_SSL"):
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
            "isolation_level": self.isolation_level,
            "max_partition_fetch_bytes": self.max_partition_fetch_bytes,
            "fetch_max_bytes": self.fetch_max_bytes,
            # Partitions added to the topic are noticed (and rebalanced onto the
            # group) within 30 s rather than kafka-python's 5 min.
            "metadata_max_age_ms": 30_000,
        }

    def producer_kwargs(self) -> dict[str, Any]:
        """``client_kwargs`` for a KafkaProducer."""
        return self.client_kwargs()


class _EncryptedKeyError(Exception):
    """The private key asks for a password, and there is no setting to give one."""


def _no_password() -> NoReturn:
    # Without a callback OpenSSL would prompt on the terminal: a hung start-up.
    raise _EncryptedKeyError("the private key is encrypted; give an unencrypted key")


def _readable(variable: str, path: str) -> None:
    try:
        with Path(path).open("rb"):
            pass
    except OSError as error:
        _unusable(variable, path, error.strerror or str(error))


def _unusable(variable: str, path: str, problem: str) -> NoReturn:
    raise ConfigurationError(variable, f"cannot use {path!r}: {problem}")
