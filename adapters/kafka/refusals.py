"""Kafka errors that retrying cannot fix, and the one line that says what to check."""

from __future__ import annotations

from kafka import errors as kafka_errors
from kafka.errors import KafkaError

# Broker refusals that retrying cannot fix, and what to check: "{group}", "{topic}" and
# "{session_ms}" are filled in. Anything else (no broker, timeouts, rebalances, commit
# conflicts) is transient and retried.
_FATAL_ERRORS: dict[type[KafkaError], str] = {
    kafka_errors.InvalidSessionTimeoutError: (
        "Kafka refused the group join: {error} — KAFKA_SESSION_TIMEOUT ({session_ms} ms) must"
        " be within the broker's group.min.session.timeout.ms and group.max.session.timeout.ms"
    ),
    kafka_errors.InvalidGroupIdError: (
        "Kafka refused the group id {group!r}: {error} — check KAFKA_GROUP_ID"
    ),
    kafka_errors.GroupAuthorizationFailedError: (
        "Kafka refused access to consumer group {group!r}: {error} — grant the principal of"
        " KAFKA_SASL_USERNAME READ on the group KAFKA_GROUP_ID"
    ),
    kafka_errors.TopicAuthorizationFailedError: (
        "Kafka refused access to topic {topic!r}: {error} — grant the principal of"
        " KAFKA_SASL_USERNAME READ and DESCRIBE on KAFKA_TOPIC"
    ),
    kafka_errors.ClusterAuthorizationFailedError: (
        "Kafka refused a cluster operation: {error} — check the ACLs of the principal of"
        " KAFKA_SASL_USERNAME"
    ),
    kafka_errors.SaslAuthenticationFailedError: (
        "Kafka refused the credentials: {error} — check KAFKA_SASL_USERNAME,"
        " KAFKA_SASL_PASSWORD and KAFKA_SASL_MECHANISM"
    ),
    kafka_errors.UnsupportedSaslMechanismError: (
        "Kafka does not offer this SASL mechanism: {error} — check KAFKA_SASL_MECHANISM"
    ),
    kafka_errors.IllegalSaslStateError: (
        "Kafka broke off the SASL handshake: {error} — check KAFKA_SECURITY_PROTOCOL and"
        " KAFKA_SASL_MECHANISM against the broker's listener"
    ),
    kafka_errors.GroupMaxSizeReachedError: (
        "Kafka refused the group join: {error} — group {group!r} (KAFKA_GROUP_ID) already"
        " has the broker's group.max.size members"
    ),
    kafka_errors.InvalidTopicError: "Kafka refused topic {topic!r}: {error} — check KAFKA_TOPIC",
}


def fatal_error_message(error: KafkaError, topic: str, group: str, session_ms: int) -> str | None:
    """The one-line reason to stop, when ``error`` is one retrying cannot fix; else None."""
    if getattr(error, "retriable", False):
        return None
    for error_type, message in _FATAL_ERRORS.items():
        if isinstance(error, error_type):
            name = type(error).__name__
            return message.format(error=name, topic=topic, group=group, session_ms=session_ms)
    return None
