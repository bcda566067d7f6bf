"""Opens the client channel to Core: plain, TLS, or mutual TLS."""

from __future__ import annotations

from pathlib import Path

import grpc

from jobworker.domain.errors import ConfigurationError

ChannelOptions = list[tuple[str, int | str]]


def client_channel_options(
    keepalive_time_s: float, max_reconnect_backoff_s: float
) -> ChannelOptions:
    """Channel arguments for a client that does its own retries.

    gRPC's reconnect backoff grows to 120 s by default: after a long Core outage the
    channel would sit in TRANSIENT_FAILURE for up to two minutes after Core is back,
    failing every call at once. Capping it near our own retry cap makes the channel
    reconnect about as soon as a retry wants it. Keepalive pings find a connection a
    load balancer or NAT dropped silently; they are sent only while calls are in flight,
    and not more often than a default gRPC server tolerates.
    """
    max_backoff_ms = max(1000, int(max_reconnect_backoff_s * 1000))
    return [
        ("grpc.enable_retries", 0),
        ("grpc.keepalive_time_ms", int(keepalive_time_s * 1000)),
        ("grpc.keepalive_timeout_ms", 20_000),
        ("grpc.keepalive_permit_without_calls", 0),
        # Not grpc.min_reconnect_backoff_ms: gRPC also takes it as the connect timeout
        # (20 s by default), and a short one fails slow TLS handshakes for ever.
        ("grpc.initial_reconnect_backoff_ms", min(200, max_backoff_ms)),
        ("grpc.max_reconnect_backoff_ms", max_backoff_ms),
    ]


def open_channel(
    target: str,
    options: ChannelOptions,
    *,
    tls_ca_file: str | Path | None = None,
    tls_cert_file: str | Path | None = None,
    tls_key_file: str | Path | None = None,
) -> grpc.Channel:
    """A channel to ``target`` (``host:port``); TLS when any of the TLS files is given.

    ``tls_ca_file`` alone: the server is verified against that CA. Without it, against
    the system's trusted roots. ``tls_cert_file`` with ``tls_key_file``: mutual TLS, the
    client presents that certificate. Raises ``ConfigurationError`` (naming the argument)
    when a file cannot be read or only one of cert and key is given.
    """
    if tls_ca_file is None and tls_cert_file is None and tls_key_file is None:
        return grpc.insecure_channel(target, options=options)
    return grpc.secure_channel(
        target,
        channel_credentials(tls_ca_file, tls_cert_file, tls_key_file),
        options=options,
    )


def open_aio_channel(
    target: str,
    options: ChannelOptions,
    *,
    tls_ca_file: str | Path | None = None,
    tls_cert_file: str | Path | None = None,
    tls_key_file: str | Path | None = None,
) -> grpc.aio.Channel:
    """``open_channel`` for grpcio's asyncio client: the same options and TLS files.

    Call it on the thread of the running event loop the channel is to serve.
    ``grpc.aio``'s channel functions are looked up at each call, so a tracing
    instrumentation installed before adds its interceptors, as it does to
    ``open_channel``'s.
    """
    if tls_ca_file is None and tls_cert_file is None and tls_key_file is None:
        return grpc.aio.insecure_channel(target, options=options)
    return grpc.aio.secure_channel(
        target,
        channel_credentials(tls_ca_file, tls_cert_file, tls_key_file),
        options=options,
    )


def channel_credentials(
    tls_ca_file: str | Path | None,
    tls_cert_file: str | Path | None,
    tls_key_file: str | Path | None,
) -> grpc.ChannelCredentials:
    """TLS credentials from PEM files; see ``open_channel`` for what each file means."""
    if (tls_cert_file is None) != (tls_key_file is None):
        given, missing = (
            ("tls_cert_file", "tls_key_file")
            if tls_key_file is None
            else ("tls_key_file", "tls_cert_file")
        )
        raise ConfigurationError(missing, f"mutual TLS needs it together with {given}")
    return grpc.ssl_channel_credentials(
        root_certificates=_read_pem("tls_ca_file", tls_ca_file),
        private_key=_read_pem("tls_key_file", tls_key_file),
        certificate_chain=_read_pem("tls_cert_file", tls_cert_file),
    )


def _read_pem(argument: str, path: str | Path | None) -> bytes | None:
    if path is None:
        return None
    try:
        pem = Path(path).read_bytes()
    except OSError as exc:
        raise ConfigurationError(argument, f"cannot read {path}: {exc.strerror}") from exc
    if b"-----BEGIN " not in pem:
        raise ConfigurationError(argument, f"{path} is not a PEM file")
    return pem
