"""Which network destinations a job may reach: the SSRF guard shared by the executors.

A job's URL comes from whoever can write to the jobs topic. Without this guard a job
could read the cloud metadata service (instance credentials), the worker's own admin
ports on loopback, or anything on the private network the worker sits in.

URLs are checked up front (``AddressGuard.check_url``): scheme, host, metadata host
names, literal addresses. Host names are resolved and judged by the connection
itself (``pinned_connections``), which connects only to the addresses it checked.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from urllib.parse import SplitResult, urlsplit

from jobworker.adapters.executors.payload_fields import shown

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

ALLOWED_SCHEMES = frozenset({"http", "https"})

# Cloud metadata endpoints hand out instance credentials: they are refused even when
# private networks are allowed (AWS, GCP, Azure, OpenStack, Alibaba, Oracle).
METADATA_ADDRESSES = frozenset(
    {
        ipaddress.ip_address("169.254.169.254"),
        ipaddress.ip_address("169.254.170.2"),
        ipaddress.ip_address("fd00:ec2::254"),
        ipaddress.ip_address("100.100.100.200"),
        ipaddress.ip_address("192.0.0.192"),
    }
)
METADATA_HOST_NAMES = frozenset(
    {"metadata.google.internal", "metadata.goog", "metadata", "instance-data"}
)

_NAT64_PREFIX = ipaddress.ip_network("64:ff9b::/96")


class RefusedDestination(Exception):  # noqa: N818 - reads as the verdict it is
    """A URL or address the guard will not let a job reach.

    Deliberately not an ``OSError``: urllib3 wraps socket errors into retryable
    connection errors, while a refusal must surface as itself, never be retried.
    """


@dataclass(frozen=True, slots=True)
class CheckedUrl:
    """A URL that passed ``AddressGuard.check_url``, split into its parts."""

    url: str
    scheme: str
    host: str
    port: int


def embedded_ipv4(address: IPAddress) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 address carries (mapped, NAT64, 6to4, Teredo), if any.

    ``::ffff:127.0.0.1`` reaches 127.0.0.1 on a dual-stack host, so it must be judged
    as 127.0.0.1.
    """
    if isinstance(address, ipaddress.IPv4Address):
        return None
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address in _NAT64_PREFIX:
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    if address.sixtofour is not None:
        return address.sixtofour
    if address.teredo is not None:
        return address.teredo[1]
    return None


def non_public_reason(address: IPAddress) -> str | None:
    """Why ``address`` is not a public internet address, or None when it is one."""
    inner = embedded_ipv4(address)
    if inner is not None:
        reason = non_public_reason(inner)
        return f"{reason} (embedded in {address})" if reason else None
    checks = (
        (address.is_unspecified, "an unspecified address"),
        (address.is_loopback, "a loopback address"),
        (address.is_link_local, "a link-local address"),
        (address.is_multicast, "a multicast address"),
        (address.is_private, "a private address"),
        (address.is_reserved, "a reserved address"),
        (not address.is_global, "not a globally routable address"),
    )
    return next((reason for matches, reason in checks if matches), None)


def is_metadata_address(address: IPAddress) -> bool:
    inner = embedded_ipv4(address)
    return address in METADATA_ADDRESSES or (inner is not None and inner in METADATA_ADDRESSES)


class AddressGuard:
    """Decides whether a job may reach a URL or a connected peer address.

    With ``allow_private_networks`` loopback and private addresses are allowed (for
    services on the worker's own network, and tests); metadata endpoints never are.
    """

    def __init__(self, allow_private_networks: bool = False) -> None:
        self.allow_private_networks = allow_private_networks

    def check_url(self, url: str) -> CheckedUrl:
        """Return the parts of ``url`` when a job may request it.

        Raises ``RefusedDestination`` saying why for a scheme other than http/https, a
        URL without a host, credentials in the URL, a bad port, a metadata host, or a
        literal IP address the guard refuses. Host names are not resolved here: the
        connection checks the addresses it resolves (``pinned_connections``).
        """
        try:
            parts = urlsplit(url)
            port = parts.port
        except ValueError as error:
            raise RefusedDestination(f"malformed URL {url!r}: {error}") from error
        scheme = parts.scheme.lower()
        if scheme not in ALLOWED_SCHEMES:
            found = f"scheme {scheme!r}" if scheme else "no scheme"
            raise RefusedDestination(f"URL {url!r} has {found}; only http and https are allowed")
        host = (parts.hostname or "").rstrip(".").lower()
        if not host:
            raise RefusedDestination(f"URL {url!r} has no host")
        if parts.username is not None or parts.password is not None:
            raise RefusedDestination(
                f"URL {_without_credentials(parts)!r} carries credentials; "
                "send them in an Authorization header instead"
            )
        if host in METADATA_HOST_NAMES:
            raise RefusedDestination(f"host {host!r} is a cloud metadata service")
        literal = _literal_address(host)
        if literal is not None:
            self.check_address(literal, host)
        elif not _valid_ascii_host_name(host):
            raise RefusedDestination(
                f"host {shown(host)} is not a valid host name "
                "(a label is empty or longer than 63 characters)"
            )
        default_port = 443 if scheme == "https" else 80
        return CheckedUrl(url=url, scheme=scheme, host=host, port=port or default_port)

    def check_address(self, address: IPAddress, host: str) -> None:
        """Raise ``RefusedDestination`` when ``address`` (reached for ``host``) is refused."""
        if is_metadata_address(address):
            raise RefusedDestination(f"{host} ({address}) is a cloud metadata service")
        if self.allow_private_networks:
            return
        reason = non_public_reason(address)
        if reason is not None:
            where = str(address) if host == str(address) else f"{host} resolves to {address}"
            raise RefusedDestination(
                f"{where}, {reason}; private networks are not allowed for jobs"
            )

    def check_address_text(self, address: str, host: str) -> None:
        """``check_address`` for an address as ``getaddrinfo`` spells it."""
        self.check_address(ipaddress.ip_address(address), host)


def _literal_address(host: str) -> IPAddress | None:
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        return None


def _valid_ascii_host_name(host: str) -> bool:
    # The resolver encodes an ASCII name with the idna codec, which raises a bare
    # UnicodeError for an empty or too long label. requests has already turned a
    # non-ASCII name into ASCII with stricter rules of its own, or refused it.
    if not host.isascii():
        return True
    try:
        host.encode("idna")
    except UnicodeError:
        return False
    return True


def _without_credentials(parts: SplitResult) -> str:
    netloc = parts.netloc.rpartition("@")[2]
    return parts._replace(netloc=f"***@{netloc}").geturl()
