"""Making a kafka-python client whose first connection a broker refuses ends at once.

kafka-python 3.0 retries every failed bootstrap connection until its bootstrap timeout
(30 s), a wrong password or an unverified certificate as much as a broker that is not
up yet, and then reports only "Unable to bootstrap". ``open_client`` watches the
client's own connections through its public ``kafka_client`` option: the first one
refused for a reason retrying cannot fix (``refusals.is_connection_refusal``) closes
the client, and ``AccessRefused`` says which setting to change. Anything else (no
broker answering, timeouts) is left to kafka-python's retries as before.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from kafka.errors import KafkaError, UnsupportedSaslMechanismError
from kafka.net.compat import KafkaNetClient
from kafka.net.manager import KafkaConnectionManager
from kafka.net.selector import NetworkSelector
from kafka.protocol.sasl import SaslHandshakeRequest

from jobworker.adapters.kafka.quirks import keep_bytes_before_disconnect
from jobworker.adapters.kafka.refusals import connection_refusal_message, is_connection_refusal
from jobworker.adapters.kafka.settings import SASL_MECHANISMS, KafkaClientSettings
from jobworker.domain.errors import AccessRefused

Client = TypeVar("Client")
# How long asking a broker which SASL mechanisms it offers may take.
_MECHANISMS_PROBE_MS = 3_000


class _RefusalWatchingManager(KafkaConnectionManager):  # type: ignore[misc]
    """kafka-python's connection manager, closed by the first connection refused while
    it bootstraps (see the module docstring)."""

    def __init__(self, net: Any, **configs: Any) -> None:
        super().__init__(net, **configs)
        self.refusal: BaseException | None = None
        self.refused_by = ""

    def get_connection(self, node_id: Any, *args: Any, **kwargs: Any) -> Any:
        known = self._conns.get(node_id)
        conn = super().get_connection(node_id, *args, **kwargs)
        if conn is not known and not self.bootstrapped:
            broker = self.cluster.broker_metadata(node_id)
            address = f"{broker.host}:{broker.port}" if broker is not None else str(node_id)
            conn.init_future.add_errback(lambda error: self._failed(error, address))
            _keep_refusals(conn)
        return conn

    def _failed(self, error: BaseException, address: str) -> None:
        if self.refusal is None and not self.bootstrapped and is_connection_refusal(error):
            self.refusal, self.refused_by = error, address
            # Not from inside the failing connection's callbacks: on the next loop turn.
            self.call_soon(self.close)


def _keep_refusals(conn: Any) -> None:
    """See ``quirks.keep_bytes_before_disconnect``: on each transport ``conn`` gets."""
    made = conn.connection_made

    def connection_made(transport: Any) -> None:
        keep_bytes_before_disconnect(transport)
        made(transport)

    conn.connection_made = connection_made


class _RefusalWatch:
    """The ``kafka_client`` a consumer or producer is given, and what it saw."""

    def __init__(self) -> None:
        self.client: KafkaNetClient | None = None

    def make_client(self, **configs: Any) -> KafkaNetClient:
        net = NetworkSelector(**configs)
        self.client = KafkaNetClient(net=net, manager=_RefusalWatchingManager(net, **configs))
        return self.client

    @property
    def manager(self) -> _RefusalWatchingManager | None:
        return None if self.client is None else self.client._manager

    def close(self) -> None:
        # A client that failed to start leaves its I/O thread running: stop it.
        if self.client is not None:
            self.client.close()


def open_client(
    make: Callable[..., Client], settings: KafkaClientSettings, **config: Any
) -> Client:
    """``make(**config, kafka_client=…)`` (a KafkaConsumer, a KafkaProducer), or
    ``AccessRefused`` as soon as a broker refuses its first connection for good.

    With SASL, the first broker is asked beforehand which mechanisms it offers (one
    connection more): kafka-python often loses the broker's refusal of a mechanism and
    would retry it as a dropped connection. Other start-up failures (KafkaError: no
    broker answered in time) are raised as they come, with nothing left running.
    """
    broker = settings.bootstrap_servers[0]
    if settings.security_protocol.startswith("SASL_"):
        offered = offered_sasl_mechanisms(settings)
        if offered is not None and settings.sasl_mechanism not in offered:
            refusal: BaseException = UnsupportedSaslMechanismError()
            raise AccessRefused(connection_refusal_message(refusal, settings, broker, offered))
    watch = _RefusalWatch()
    try:
        return make(**config, kafka_client=watch.make_client)
    except KafkaError:
        watch.close()
        manager = watch.manager
        if manager is None or manager.refusal is None:
            raise
        refusal, broker = manager.refusal, manager.refused_by
    offered = None
    if isinstance(refusal, UnsupportedSaslMechanismError):
        offered = offered_sasl_mechanisms(settings)
    raise AccessRefused(connection_refusal_message(refusal, settings, broker, offered)) from None


def offered_sasl_mechanisms(settings: KafkaClientSettings) -> Sequence[str] | None:
    """The SASL mechanisms the first bootstrap broker offers, or None if it cannot be
    asked (it does not answer, TLS fails, it accepts none of ``SASL_MECHANISMS``).

    kafka-python drops the list when the broker refuses the configured mechanism, so
    this connects without SASL and sends the handshake itself, naming the configured
    mechanism first. A broker that refuses a mechanism closes the connection with its
    answer, and kafka-python drops an answer that comes with the close: so then the
    other mechanisms jobworker knows are named in turn, and the first one the broker
    accepts brings the list.
    """
    first = settings.sasl_mechanism or SASL_MECHANISMS[0]
    for mechanism in (first, *(m for m in SASL_MECHANISMS if m != first)):
        offered = _ask_sasl_mechanisms(settings, mechanism)
        if offered is not _DROPPED:
            return offered
    return None


# The broker took the connection and dropped it on the handshake (see above).
_DROPPED: list[str] = []


def _ask_sasl_mechanisms(settings: KafkaClientSettings, mechanism: str) -> list[str] | None:
    """What the broker offers; ``_DROPPED``; None when it could not be reached."""
    kwargs = settings.client_kwargs()
    kwargs["security_protocol"] = kwargs["security_protocol"].removeprefix("SASL_")
    client = KafkaNetClient(**kwargs)
    manager = client._manager

    async def ask() -> list[str] | None:
        broker = manager.cluster.bootstrap_brokers()[0]
        conn = manager.get_connection(
            broker.node_id, timeout_ms=_MECHANISMS_PROBE_MS, refresh_metadata_on_err=False
        )
        _keep_refusals(conn)
        try:
            await manager.wait_for(conn.init_future, _MECHANISMS_PROBE_MS)
        except KafkaError:
            return None
        request = SaslHandshakeRequest(mechanism=mechanism, max_version=1)
        try:
            response = await manager.wait_for(conn.send_request(request), _MECHANISMS_PROBE_MS)
        except KafkaError:
            return _DROPPED
        return list(response.mechanisms)

    try:
        return client._net.run(ask)  # type: ignore[no-any-return]
    except Exception:  # the offer is a hint: without it, kafka-python's own errors
        return None
    finally:
        client.close()
