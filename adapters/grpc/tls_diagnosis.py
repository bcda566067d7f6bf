"""Says why TLS to Core fails, which grpcio does not.

grpcio reports every failed connection as UNAVAILABLE. Its details name a certificate
that *we* refused (unknown CA, host name), but when Core refuses *our* side (no client
certificate, one from a CA it does not trust) its server closes the socket without an
alert and the details say only "Socket closed", and a channel's readiness says nothing
at all. So the diagnosis does a TLS handshake of its own, with Python's ``ssl`` and the
same files, and turns the outcome into one line an operator can act on. In a process
patched by gevent the ``ssl`` and ``socket`` modules are cooperative, so it blocks only
the greenlet that asks.
"""

from __future__ import annotations

import socket
import ssl
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path

import gevent
import structlog

log = structlog.get_logger(__name__)

# What an HTTP/2 client sends first; a gRPC server answers it with its SETTINGS frame.
# gRPC's own servers send SETTINGS unasked; a proxy in front may wait for the preface.
_HTTP2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"
_UNSOLICITED_SETTINGS_WAIT_S = 0.5

# OpenSSL verify codes that mean "no trusted CA signed this certificate".
_UNTRUSTED_CODES = frozenset({2, 18, 19, 20, 21})
_HOST_MISMATCH_CODES = frozenset({62, 64})  # X509_V_ERR_HOSTNAME / IP_ADDRESS_MISMATCH

# Alerts a server sends (OpenSSL's reason names) when it refuses the client's certificate.
_CLIENT_CERTIFICATE_ALERTS = {
    "TLSV1_ALERT_UNKNOWN_CA": "unknown CA",
    "SSLV3_ALERT_BAD_CERTIFICATE": "bad certificate",
    "SSLV3_ALERT_UNSUPPORTED_CERTIFICATE": "unsupported certificate",
    "SSLV3_ALERT_CERTIFICATE_EXPIRED": "certificate expired",
    "SSLV3_ALERT_CERTIFICATE_REVOKED": "certificate revoked",
    "TLSV1_ALERT_ACCESS_DENIED": "access denied",
    "TLSV1_ALERT_DECRYPT_ERROR": "signature check failed",
}
_CERTIFICATE_REQUIRED_ALERTS = frozenset(
    {"TLSV13_ALERT_CERTIFICATE_REQUIRED", "SSLV3_ALERT_HANDSHAKE_FAILURE"}
)
_NOT_TLS_REASONS = frozenset({"WRONG_VERSION_NUMBER", "RECORD_LAYER_FAILURE", "HTTP_REQUEST"})

_DEFAULT_NAMES = {name: name for name in ("tls_ca_file", "tls_cert_file", "tls_key_file")}


class _Unreachable(Exception):  # noqa: N818 - an outcome, not a failure of ours
    """No TCP connection: not a TLS problem, so nothing to say about TLS."""


class CoreTlsDiagnosis:
    """The reason TLS to Core fails, kept current and logged once per change.

    Without any TLS file there is nothing to diagnose: ``reason`` stays None and every
    method returns at once. Safe to share between greenlets and threads.
    """

    def __init__(
        self,
        target: str,
        *,
        tls_ca_file: str | Path | None = None,
        tls_cert_file: str | Path | None = None,
        tls_key_file: str | Path | None = None,
        setting_names: Mapping[str, str] | None = None,
        timeout_s: float = 3.0,
        min_interval_s: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """Diagnose TLS to ``target`` (``host:port``, as given to the channel).

        ``setting_names`` maps ``tls_ca_file``, ``tls_cert_file`` and ``tls_key_file``
        to the names the operator knows them by, for the reasons' advice.
        ``min_interval_s`` spaces out the handshakes ``recheck`` makes.
        """
        self._target = target
        self._address = _host_and_port(target)
        self._ca_file = tls_ca_file
        self._cert_file = tls_cert_file
        self._key_file = tls_key_file
        self._enabled = self._address is not None and any(
            path is not None for path in (tls_ca_file, tls_cert_file, tls_key_file)
        )
        self._names = {**_DEFAULT_NAMES, **(setting_names or {})}
        self._timeout_s = timeout_s
        self._min_interval_s = min_interval_s
        self._clock = clock
        self._reason: str | None = None
        self._reported: str | None = None  # the failure last logged, until TLS works
        self._next_check_at = float("-inf")
        self._checking = threading.Lock()
        self._recording = threading.Lock()  # a probe's connected() may race a check

    @property
    def reason(self) -> str | None:
        """Why the last handshake failed; None when it worked or could not connect."""
        return self._reason

    def check(self) -> str | None:
        """Handshake with Core now; returns (and keeps) the reason it failed, or None.

        None also when no TCP connection could be made: a Core that is down is not a
        TLS problem. A new reason is logged at ERROR; the first handshake that works
        after a logged failure is logged once at INFO.
        """
        if not self._enabled:
            return None
        with self._checking:
            return self._check_now()

    def recheck(self) -> None:
        """``check`` unless one ran within ``min_interval_s`` or one is running now."""
        if not self._enabled or self._clock() < self._next_check_at:
            return
        if not self._checking.acquire(blocking=False):
            return
        try:
            self._check_now()
        finally:
            self._checking.release()

    def on_call_failed(self, code: str) -> None:
        """For a sender's retry listener: an UNAVAILABLE call may be a TLS mistake."""
        if code == "UNAVAILABLE":
            self.recheck()

    def connected(self) -> None:
        """Core accepted a connection (a readiness ping): no TLS problem now."""
        if self._enabled:
            self._record(None)

    def recheck_while_failing(self) -> None:
        """Runs for ever: while a failure is reported, check until TLS works again.

        So the "works again" line comes soon after the fix even when no call fails any
        more (the sender's retry succeeded) and no readiness probe asks. For a greenlet;
        returns at once when there is nothing to diagnose.
        """
        while self._enabled:
            gevent.sleep(self._min_interval_s)
            if self._reported is not None:
                self.recheck()

    def _check_now(self) -> str | None:
        assert self._address is not None  # checked by _enabled
        self._next_check_at = self._clock() + self._min_interval_s
        try:
            reason = self._handshake(*self._address)
        except _Unreachable:
            self._reason = None
            return None
        self._record(reason)
        return reason

    def _record(self, reason: str | None) -> None:
        with self._recording:
            self._reason = reason
            if reason == self._reported:
                return
            if reason is not None:
                log.error(
                    "TLS to Core fails; results are held and retried until it works",
                    address=self._target,
                    reason=reason,
                )
            elif self._reported is not None:
                log.info("TLS to Core works again", address=self._target)
            self._reported = reason

    def _handshake(self, host: str, port: int) -> str | None:
        try:
            context = self._context()
        except (ssl.SSLError, OSError) as error:
            # grpcio read these files at start-up; they changed or never matched.
            return f"our TLS files cannot be used: {error}"
        try:
            connection = socket.create_connection((host, port), timeout=self._timeout_s)
        except OSError as error:
            raise _Unreachable from error
        try:
            with context.wrap_socket(connection, server_hostname=host) as tls:
                return self._first_answer(tls)
        except OSError as error:  # ssl.SSLError is one
            return self._explain(error, host, port)
        finally:
            connection.close()

    def _first_answer(self, tls: ssl.SSLSocket) -> str | None:
        if tls.selected_alpn_protocol() != "h2":
            return "Core did not agree to HTTP/2 over TLS (no ALPN h2): is it a gRPC server?"
        # A TLS 1.3 server checks our certificate after we finished the handshake: its
        # verdict comes with (or instead of) its first frame. Read before writing: bytes
        # sent to a server that refused us and closed make its kernel answer with a
        # reset, which can overtake the alert that said why.
        tls.settimeout(min(_UNSOLICITED_SETTINGS_WAIT_S, self._timeout_s))
        try:
            first = tls.recv(1)
        except TimeoutError:
            tls.settimeout(self._timeout_s)
            tls.sendall(_HTTP2_PREFACE)
            first = tls.recv(1)
        return None if first else self._hung_up()

    def _explain(self, error: OSError, host: str, port: int) -> str | None:
        if isinstance(error, ssl.SSLCertVerificationError):
            return self._refused_core_certificate(error, host, port)
        if isinstance(error, ssl.SSLEOFError | ssl.SSLZeroReturnError | ConnectionResetError):
            return self._hung_up()
        if isinstance(error, ssl.SSLError):
            return self._ssl_failure(error)
        if isinstance(error, TimeoutError):
            return None  # no verdict in time: a slow Core, not a TLS mistake
        raise _Unreachable from error

    def _context(self) -> ssl.SSLContext:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        if self._ca_file is None:
            context.load_default_certs()
        else:
            context.load_verify_locations(cafile=str(self._ca_file))
        if self._cert_file is not None:
            key = None if self._key_file is None else str(self._key_file)
            context.load_cert_chain(str(self._cert_file), key)
        context.set_alpn_protocols(["h2"])
        return context

    def _refused_core_certificate(
        self, error: ssl.SSLCertVerificationError, host: str, port: int
    ) -> str:
        code, message = error.verify_code, error.verify_message
        if code in _HOST_MISMATCH_CODES:
            names = self._names_in_core_certificate(host, port)
            named = f" (it names {names})" if names else ""
            return f"Core's certificate does not name host {host}{named}"
        if code in _UNTRUSTED_CODES:
            if self._ca_file is None:
                return f"Core's certificate is not signed by a CA this system trusts ({message})"
            ca = self._names["tls_ca_file"]
            return f"Core's certificate is not signed by a CA in {ca} ({self._ca_file}): {message}"
        return f"Core's certificate was refused: {message}"

    def _names_in_core_certificate(self, host: str, port: int) -> str:
        """The DNS names and addresses Core's certificate is valid for ("" if unknown)."""
        context = self._context()
        context.check_hostname = False
        try:
            with (
                socket.create_connection((host, port), timeout=self._timeout_s) as connection,
                context.wrap_socket(connection, server_hostname=host) as tls,
            ):
                certificate = tls.getpeercert() or {}
        except OSError:
            return ""
        alt_names = certificate.get("subjectAltName", ())
        return ", ".join(str(entry[1]) for entry in alt_names if len(entry) == 2)

    def _hung_up(self) -> str:
        # A gRPC C-core server closes without an alert when it refuses a client's
        # certificate; a healthy one always answers the preface with SETTINGS.
        cert, key = self._names["tls_cert_file"], self._names["tls_key_file"]
        if self._cert_file is None:
            return (
                "Core requires a client certificate (it hung up after the TLS handshake): "
                f"set {cert} and {key}"
            )
        return (
            f"Core refused our client certificate, {cert} ({self._cert_file}), hanging up "
            "after the TLS handshake: is it signed by a CA Core trusts, and still valid?"
        )

    def _ssl_failure(self, error: ssl.SSLError) -> str:
        reason = error.reason or ""
        cert, key = self._names["tls_cert_file"], self._names["tls_key_file"]
        if reason in _CERTIFICATE_REQUIRED_ALERTS and self._cert_file is None:
            return f"Core requires a client certificate: set {cert} and {key}"
        if reason in _CLIENT_CERTIFICATE_ALERTS:
            return (
                f"Core refused our client certificate ({_CLIENT_CERTIFICATE_ALERTS[reason]}): "
                f"{cert} ({self._cert_file})"
            )
        if reason in _NOT_TLS_REASONS:
            return (
                "Core does not answer in TLS (a plain-text gRPC server?): "
                f"unset {self._names['tls_ca_file']}, {cert} and {key}, or enable TLS on Core"
            )
        return f"TLS handshake with Core failed: {reason or error}"


def _host_and_port(target: str) -> tuple[str, int] | None:
    """``host`` and ``port`` of a gRPC target; None for forms we cannot dial (unix:)."""
    for scheme in ("dns:///", "dns:", "ipv4:", "ipv6:"):
        if target.startswith(scheme):
            target = target[len(scheme) :]
            break
    if target.startswith("unix"):
        return None
    if target.startswith("["):
        host, _, rest = target[1:].partition("]")
        port = rest.removeprefix(":")
    elif target.count(":") == 1:
        host, _, port = target.partition(":")
    else:
        host, port = target, ""
    if not host:
        return None
    try:
        return host, int(port) if port else 443
    except ValueError:
        return None
