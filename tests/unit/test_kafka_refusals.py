"""Which Kafka failures are refusals retrying cannot fix, and the line each one gets."""

from __future__ import annotations

import ssl
from typing import Any

import pytest
from kafka import errors as kafka_errors
from structlog.testing import capture_logs

from jobworker.adapters.kafka.dlq import DeadLetter, DeadLetterOutbox
from jobworker.adapters.kafka.quirks import keep_bytes_before_disconnect
from jobworker.adapters.kafka.refusals import (
    connection_refusal_message,
    is_connection_refusal,
    write_refusal_hint,
)
from jobworker.adapters.kafka.settings import KafkaClientSettings

SETTINGS = KafkaClientSettings(
    ["broker:9093"],
    security_protocol="SASL_SSL",
    sasl_mechanism="SCRAM-SHA-256",
    sasl_username="worker",
    sasl_password="secret",  # noqa: S106 - not a real one
)


def wrapped_tls(error: ssl.SSLError) -> kafka_errors.KafkaConnectionError:
    """What kafka-python raises for a failed TLS handshake: its own error, the TLS one
    as the context."""
    try:
        raise error
    except ssl.SSLError:
        wrapped = kafka_errors.KafkaConnectionError(f"Handshake failed: {error}")
        wrapped.__context__ = error
        return wrapped


def verify_error(code: int, message: str) -> ssl.SSLCertVerificationError:
    error = ssl.SSLCertVerificationError(1, f"[SSL: CERTIFICATE_VERIFY_FAILED] {message}")
    error.verify_code, error.verify_message = code, message
    return error


@pytest.mark.parametrize(
    "error",
    [
        kafka_errors.SaslAuthenticationFailedError("SaslAuthenticationFailedError: bad"),
        kafka_errors.UnsupportedSaslMechanismError(),
        kafka_errors.IllegalSaslStateError(),
        wrapped_tls(verify_error(20, "unable to get local issuer certificate")),
        wrapped_tls(ssl.SSLError(1, "[SSL: WRONG_VERSION_NUMBER] wrong version number")),
    ],
)
def test_refusals_retrying_cannot_fix(error: BaseException) -> None:
    assert is_connection_refusal(error)


@pytest.mark.parametrize(
    "error",
    [
        kafka_errors.KafkaConnectionError("111 ECONNREFUSED"),
        kafka_errors.KafkaConnectionError("socket disconnected"),
        kafka_errors.KafkaTimeoutError(),
        wrapped_tls(ssl.SSLEOFError(8, "EOF occurred in violation of protocol")),
    ],
)
def test_outages_are_retried(error: BaseException) -> None:
    assert not is_connection_refusal(error)


def test_wrong_credentials_name_both_settings_and_the_brokers_words() -> None:
    error = kafka_errors.SaslAuthenticationFailedError(
        "SaslAuthenticationFailedError: Authentication failed: invalid credentials"
    )
    line = connection_refusal_message(error, SETTINGS, "broker:9093")
    assert line == (
        "Kafka at broker:9093 refused the credentials of 'worker' (SCRAM-SHA-256):"
        " Authentication failed: invalid credentials — check KAFKA_SASL_USERNAME and"
        " KAFKA_SASL_PASSWORD"
    )


def test_an_unoffered_mechanism_names_what_the_broker_offers() -> None:
    error = kafka_errors.UnsupportedSaslMechanismError()
    line = connection_refusal_message(error, SETTINGS, "broker:9093", ["SCRAM-SHA-512"])
    assert "SCRAM-SHA-256 (KAFKA_SASL_MECHANISM); it offers SCRAM-SHA-512" in line
    unknown = connection_refusal_message(error, SETTINGS, "broker:9093", None)
    assert "it did not say which it offers" in unknown


def test_an_unverified_certificate_names_the_ca_file() -> None:
    error = wrapped_tls(verify_error(20, "unable to get local issuer certificate"))
    with_ca = KafkaClientSettings(["broker:9093"], security_protocol="SSL", ssl_cafile=None)
    line = connection_refusal_message(error, with_ca, "broker:9093")
    assert "unable to get local issuer certificate" in line
    assert "KAFKA_SSL_CAFILE is not set" in line


def test_a_certificate_for_another_host_names_the_brokers_setting() -> None:
    error = wrapped_tls(verify_error(62, "Hostname mismatch, certificate is not valid for 'x'."))
    line = connection_refusal_message(error, SETTINGS, "x:9093")
    assert "Hostname mismatch" in line
    assert "KAFKA_BROKERS" in line


def test_a_write_refusal_names_the_grant_whatever_form_it_takes() -> None:
    wrapped = kafka_errors.KafkaError(
        "Unexpected error in InitProducerIdResponse: [Error 31] ClusterAuthorizationFailedError"
    )
    for error in (kafka_errors.TopicAuthorizationFailedError({"t.dlq"}), wrapped):
        hint = write_refusal_hint(error, "t.dlq", "KAFKA_DLQ_TOPIC")
        assert hint is not None
        assert "WRITE" in hint and "'t.dlq' (KAFKA_DLQ_TOPIC)" in hint
    assert write_refusal_hint(kafka_errors.KafkaTimeoutError(), "t.dlq", "KAFKA_DLQ_TOPIC") is None


class _RefusingThenAcceptingWriter:
    topic = "t.dlq"

    def __init__(self) -> None:
        self.refusing = True

    def write(self, record: Any, reason: str, on_written: Any, on_failed: Any) -> None:
        if self.refusing:
            on_failed(kafka_errors.TopicAuthorizationFailedError({"t.dlq"}))
        else:
            on_written()


def test_dead_letters_refused_then_accepted_log_the_grant_then_recovery_once() -> None:
    now = [0.0]
    writer = _RefusingThenAcceptingWriter()
    written: list[DeadLetter] = []
    outbox = DeadLetterOutbox(
        writer,  # type: ignore[arg-type]
        written.append,
        first_backoff_s=1.0,
        clock=lambda: now[0],
    )
    for offset in range(2):
        outbox.put(DeadLetter(record=offset, reason="poison", epoch=0))
    with capture_logs() as logs:
        outbox.drain(lambda _letter: True)
        writer.refusing = False
        now[0] += 5
        outbox.drain(lambda _letter: True)
    refused = [e for e in logs if e["event"].startswith("cannot write to the dead-letter")]
    assert "WRITE" in refused[0]["fix"]
    recovered = [e for e in logs if e["event"] == "the dead-letter topic accepts records again"]
    assert len(recovered) == 1
    assert len(written) == 2


class _Transport:
    def __init__(self, reads: list[tuple[bytes, Any]]) -> None:
        self._reads = reads

    def _sock_recv(self) -> tuple[bytes, Any]:
        return self._reads.pop(0)


def test_bytes_that_came_with_a_disconnect_are_handed_on_before_it() -> None:
    eof = kafka_errors.KafkaConnectionError("socket disconnected")
    transport = _Transport([(b"answer", eof), (b"", eof)])
    keep_bytes_before_disconnect(transport)
    assert transport._sock_recv() == (b"answer", None)
    assert transport._sock_recv() == (b"", eof)
