"""How to reach the Kafka cluster: the settings every client (consumer, producer) shares."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from domain.errors import ConfigurationError

SECURITY_PROTOCOLS = ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")
SASL_MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")


def parse_brokers(text: str, variable: str = "KAFKA_BROKERS") -> tuple[str, ...]:
    """Split ``host:port,host:port`` into addresses; ConfigurationError names ``variable``."""
    brokers = tuple(part.strip() for part in text.split(",") if part.strip())
    if not brokers:
        raise ConfigurationError(variable, "no broker address given (expected host:port,…)")
    for broker in brokers:
        host, _, port = broker.rpartition(":")
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ConfigurationError(variable, f"{broker!r} is not a host:port address")
    return brokers


@dataclass(frozen=True, slots=True)
class KafkaClientSettings:
    """Connection, security and group-timing settings for kafka-python clients.

    Field names map to environment variables as ``KAFKA_<FIELD>`` (``bootstrap_servers``
    is ``KAFKA_BROKERS``); errors name those variables.
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
    ssl_check_hostname: bool = True
    session_timeout_ms: int = 45_000
    heartbeat_interval_ms: int = 3_000
    max_poll_records: int = 500
    max_poll_interval_ms: int = 300_000
    request_timeout_ms: int = 30_000

    def __post_init__(self) -> None:
        if isinstance(self.bootstrap_servers, str):
            object.__setattr__(self, "bootstrap_servers", parse_brokers(self.bootstrap_servers))
        else:
            object.__setattr__(self, "bootstrap_servers", tuple(self.bootstrap_servers))
        if not self.bootstrap_servers:
            raise ConfigurationError("KAFKA_BROKERS", "no broker address given")
        if self.security_protocol not in SECURITY_PROTOCOLS:
            raise ConfigurationError(
                "KAFKA_SECURITY_PROTOCOL",
                f"{self.security_protocol!r} is not one of {', '.join(SECURITY_PROTOCOLS)}",
            )
        if self.security_protocol.startswith("SASL_"):
            self._check_sasl()
        if self.heartbeat_interval_ms >= self.session_timeout_ms:
            raise ConfigurationError(
                "KAFKA_HEARTBEAT_INTERVAL_MS",
                f"must be below KAFKA_SESSION_TIMEOUT_MS ({self.session_timeout_ms})",
            )
        for name in ("session_timeout_ms", "max_poll_records", "max_poll_interval_ms"):
            if getattr(self, name) <= 0:
                raise ConfigurationError(f"KAFKA_{name.upper()}", "must be positive")

    def _check_sasl(self) -> None:
        if self.sasl_mechanism not in SASL_MECHANISMS:
            raise ConfigurationError(
                "KAFKA_SASL_MECHANISM",
                f"{self.sasl_mechanism!r} is not one of {', '.join(SASL_MECHANISMS)}"
                f" (required by {self.security_protocol})",
            )
        if not self.sasl_username or not self.sasl_password:
            raise ConfigurationError(
                "KAFKA_SASL_USERNAME",
                f"{self.sasl_mechanism} needs KAFKA_SASL_USERNAME and KAFKA_SASL_PASSWORD",
            )

    def client_kwargs(self) -> dict[str, Any]:
        """Arguments every kafka-python client takes: where, who, and how securely."""
        kwargs: dict[str, Any] = {
            "bootstrap_servers": list(self.bootstrap_servers),
            "client_id": self.client_id,
            "security_protocol": self.security_protocol,
            "request_timeout_ms": self.request_timeout_ms,
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
                "ssl_check_hostname": self.ssl_check_hostname,
            }
        return kwargs

    def consumer_kwargs(self) -> dict[str, Any]:
        """``client_kwargs`` plus the group-membership timing a KafkaConsumer takes."""
        return self.client_kwargs() | {
            "session_timeout_ms": self.session_timeout_ms,
            "heartbeat_interval_ms": self.heartbeat_interval_ms,
            "max_poll_records": self.max_poll_records,
            "max_poll_interval_ms": self.max_poll_interval_ms,
        }

    def producer_kwargs(self) -> dict[str, Any]:
        """``client_kwargs`` for a KafkaProducer."""
        return self.client_kwargs()
