"""The TLS files a Kafka client will read (KAFKA_SSL_*), checked with the other settings.

Found now, a bad path is one line among the settings' problems; found by kafka-python,
it is half a minute of connection retries ending in "cannot reach Kafka".
"""

from __future__ import annotations

import ssl
from pathlib import Path
from typing import NoReturn

from jobworker.domain.errors import ConfigurationError


def readable_pem(text: str) -> str:
    """A certificate or key file that can be opened now."""
    path = text.strip()
    try:
        with Path(path).open("rb"):
            pass
    except OSError as error:
        raise ValueError(_cannot_use(path, error.strerror or str(error))) from None
    return path


def ca_bundle(text: str) -> str:
    """A readable file of PEM certificates to verify the brokers with."""
    path = readable_pem(text)
    try:
        ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT).load_verify_locations(cafile=path)
    except ssl.SSLError as error:
        raise ValueError(_cannot_use(path, f"no PEM certificates ({error})")) from None
    return path


def key_pair_problem(certfile: str, keyfile: str | None) -> ConfigurationError | None:
    """Why the client certificate (and its key, if a file of its own) cannot be used."""
    try:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.load_cert_chain(certfile, keyfile, password=_no_password)
    except (ssl.SSLError, _EncryptedKeyError) as error:
        variable = "KAFKA_SSL_KEYFILE" if keyfile else "KAFKA_SSL_CERTFILE"
        problem = f"no usable certificate and private key ({error})"
        return ConfigurationError(variable, _cannot_use(keyfile or certfile, problem))
    return None


class _EncryptedKeyError(Exception):
    """The private key asks for a password, and there is no setting to give one."""


def _no_password() -> NoReturn:
    # Without a callback OpenSSL would prompt on the terminal: a hung start-up.
    raise _EncryptedKeyError("the private key is encrypted; give an unencrypted key")


def _cannot_use(path: str, problem: str) -> str:
    return f"cannot use {path!r}: {problem}"
