"""Kafka errors that retrying cannot fix, and the one line that says what to check."""

from __future__ import annotations

import ssl
from collections.abc import Sequence

from kafka import errors as kafka_errors
from kafka.errors import KafkaError

from jobworker.adapters.kafka.quirks import wrapped_cluster_refusal
from jobworker.adapters.kafka.settings import KafkaClientSettings

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


# TLS errors that say the peer went away mid-handshake (a broker restarting): retried.
_PASSING_TLS_ERRORS = (ssl.SSLEOFError, ssl.SSLZeroReturnError, ssl.SSLSyscallError)


def is_connection_refusal(error: BaseException) -> bool:
    """True when a connection attempt failed for a reason retrying cannot fix: the
    credentials, the SASL mechanism, or TLS (an unverified certificate, no TLS there)."""
    if isinstance(
        error,
        kafka_errors.SaslAuthenticationFailedError
        | kafka_errors.UnsupportedSaslMechanismError
        | kafka_errors.IllegalSaslStateError,
    ):
        return True
    return _tls_failure(error) is not None


def connection_refusal_message(
    error: BaseException,
    settings: KafkaClientSettings,
    broker: str,
    offered_mechanisms: Sequence[str] | None = None,
) -> str:
    """The one line for a refusal ``is_connection_refusal`` accepts, naming the setting.

    ``broker`` is the ``host:port`` that refused; ``offered_mechanisms`` what it offers
    (None: not known).
    """
    detail = _detail(error)
    if isinstance(error, kafka_errors.SaslAuthenticationFailedError):
        return (
            f"Kafka at {broker} refused the credentials of {settings.sasl_username!r}"
            f" ({settings.sasl_mechanism}): {detail} — check KAFKA_SASL_USERNAME and"
            " KAFKA_SASL_PASSWORD"
        )
    if isinstance(error, kafka_errors.UnsupportedSaslMechanismError):
        offers = (
            f"it offers {', '.join(offered_mechanisms)}"
            if offered_mechanisms
            else "it did not say which it offers"
        )
        return (
            f"Kafka at {broker} does not offer SASL mechanism {settings.sasl_mechanism}"
            f" (KAFKA_SASL_MECHANISM); {offers} — set KAFKA_SASL_MECHANISM to one of them"
        )
    if isinstance(error, kafka_errors.IllegalSaslStateError):
        return (
            f"Kafka at {broker} broke off the SASL handshake: {detail} — check"
            " KAFKA_SECURITY_PROTOCOL and KAFKA_SASL_MECHANISM against the broker's listener"
        )
    tls = _tls_failure(error)
    if isinstance(tls, ssl.SSLCertVerificationError):
        reason = tls.verify_message or tls.reason or str(tls)
        if tls.verify_code == _HOSTNAME_MISMATCH:
            return (
                f"the TLS certificate of Kafka at {broker} does not name that host: {reason}"
                " — give KAFKA_BROKERS the name the certificate was issued for"
            )
        where = (
            f"KAFKA_SSL_CAFILE ({settings.ssl_cafile}) did not sign it"
            if settings.ssl_cafile
            else "KAFKA_SSL_CAFILE is not set, so only the system's CAs were tried"
        )
        return (
            f"cannot verify the TLS certificate of Kafka at {broker}: {reason}; {where} —"
            " set KAFKA_SSL_CAFILE to the CA file that signed the broker's certificate"
        )
    reason = tls.reason if tls is not None and tls.reason else detail
    return (
        f"the TLS handshake with Kafka at {broker} failed: {reason} — check"
        " KAFKA_SECURITY_PROTOCOL (is that listener TLS?) and KAFKA_SSL_CERTFILE /"
        " KAFKA_SSL_KEYFILE (does it ask for a client certificate?)"
    )


# OpenSSL's X509_V_ERR_HOSTNAME_MISMATCH.
_HOSTNAME_MISMATCH = 62


def _tls_failure(error: BaseException) -> ssl.SSLError | None:
    """The TLS error behind ``error`` (kafka-python wraps it), unless it is a passing one."""
    cause: BaseException | None = error
    for _ in range(3):
        if cause is None:
            return None
        if isinstance(cause, ssl.SSLError):
            return None if isinstance(cause, _PASSING_TLS_ERRORS) else cause
        cause = cause.__cause__ or cause.__context__
    return None


def _detail(error: BaseException) -> str:
    """The broker's words in a kafka-python error, without its class name repeated."""
    text = str(error.args[0]) if error.args else ""
    name = f"{type(error).__name__}: "
    while text.startswith(name):
        text = text[len(name) :]
    return text or type(error).__name__


def write_refusal_hint(error: BaseException, topic: str, variable: str) -> str | None:
    """What to grant when a producer's write to ``topic`` (set by ``variable``) was
    refused for lack of an ACL; None for any other error.

    Our dead-letter producers are not idempotent, so the refusal is the topic's own
    (TopicAuthorizationFailedError); a ClusterAuthorizationFailedError is what an
    idempotent producer gets when its principal may WRITE to no topic at all, and the
    grant that ends it is the same.
    """
    if not is_write_refusal(error):
        return None
    return (
        f"grant the principal of KAFKA_SASL_USERNAME WRITE and DESCRIBE on topic {topic!r}"
        f" ({variable})"
    )


def is_write_refusal(error: BaseException) -> bool:
    """True when a producer's write was refused for lack of WRITE (see above)."""
    refused = (
        kafka_errors.TopicAuthorizationFailedError,
        kafka_errors.ClusterAuthorizationFailedError,
    )
    return isinstance(error, refused) or wrapped_cluster_refusal(error)
