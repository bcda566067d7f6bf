"""urllib3 connections that resolve, check and connect to the very same addresses.

Resolving a name to check it and letting the library resolve it again to connect
leaves a gap: a DNS server answering a public address first and 127.0.0.1 second
(DNS rebinding) would pass the check and reach loopback. Here a connection resolves
the name once, refuses it when any address is refused, and then connects only to
those checked addresses. TLS still verifies the certificate against the host name.
Refusing before connecting also keeps a job from probing which private ports are
open (a refused and an unreachable private address look alike to it).
"""

from __future__ import annotations

import socket
from typing import Any, ClassVar

from requests.adapters import HTTPAdapter
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool
from urllib3.exceptions import ConnectTimeoutError, NameResolutionError, NewConnectionError
from urllib3.util import connection

from jobworker.adapters.executors.network_guard import AddressGuard


class GuardedHTTPAdapter(HTTPAdapter):
    """A requests adapter whose connection pools only open guarded connections."""

    def __init__(self, guard: AddressGuard, **kwargs: Any) -> None:
        self._pool_classes = _guarded_pool_classes(guard)
        super().__init__(**kwargs)

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = self._pool_classes


class _PinnedConnection(HTTPConnection):
    """Connects only to addresses of its host that ``address_guard`` accepts.

    Raises ``RefusedDestination`` (not an OSError, so urllib3 passes it through
    untouched) before any connection is attempted when an address is refused.
    """

    address_guard: ClassVar[AddressGuard]

    def _new_conn(self) -> socket.socket:
        addresses = self._resolved_addresses()
        for address in addresses:
            self.address_guard.check_address_text(address, self.host)
        failure: Exception | None = None
        for address in addresses:
            try:
                return connection.create_connection(
                    (address, self.port),
                    self.timeout,
                    source_address=self.source_address,
                    socket_options=self.socket_options,
                )
            except TimeoutError as error:
                failure = ConnectTimeoutError(
                    self, f"Connection to {self.host} timed out. (connect timeout={self.timeout})"
                )
                failure.__cause__ = error
            except OSError as error:
                failure = NewConnectionError(self, f"Failed to establish a new connection: {error}")
                failure.__cause__ = error
        raise failure or NewConnectionError(self, f"{self.host} has no addresses")

    def _resolved_addresses(self) -> list[str]:
        try:
            # Looked up through the module at call time: gevent's patch makes it cooperative.
            infos = socket.getaddrinfo(self._dns_host, self.port, type=socket.SOCK_STREAM)
        except socket.gaierror as error:
            raise NameResolutionError(self.host, self, error) from error
        return list(dict.fromkeys(str(info[4][0]) for info in infos))


class _PinnedHTTPSConnection(_PinnedConnection, HTTPSConnection):
    pass


def _guarded_pool_classes(guard: AddressGuard) -> dict[str, type[HTTPConnectionPool]]:
    # Pool and connection classes are instantiated by urllib3 itself, so the guard
    # travels as a class attribute of per-client subclasses.
    plain = type("GuardedHTTPConnection", (_PinnedConnection,), {"address_guard": guard})
    tls = type("GuardedHTTPSConnection", (_PinnedHTTPSConnection,), {"address_guard": guard})
    return {
        "http": type("GuardedHTTPConnectionPool", (HTTPConnectionPool,), {"ConnectionCls": plain}),
        "https": type("GuardedHTTPSConnectionPool", (HTTPSConnectionPool,), {"ConnectionCls": tls}),
    }
