"""An admin client opened on first use and dropped on any failure: what the probes that
ask the broker every few seconds share (lag.py, group_progress.py)."""

from __future__ import annotations

from kafka.admin import KafkaAdminClient

from jobworker.adapters.kafka.quirks import open_admin_client
from jobworker.adapters.kafka.settings import KafkaClientSettings


class LazyAdminClient:
    """``get()`` opens the client (each request waits at most ``timeout_ms``); ``close()``
    releases it, and the next ``get()`` opens a new one. Close it after a failure:
    kafka-python's admin client caches the group's coordinator for good, so a
    coordinator that moved would fail it for ever."""

    def __init__(self, settings: KafkaClientSettings, timeout_ms: int) -> None:
        self._settings = settings
        self._timeout_ms = timeout_ms
        self._admin: KafkaAdminClient | None = None

    def get(self) -> KafkaAdminClient:
        if self._admin is None:
            self._admin = open_admin_client(
                **self._settings.client_kwargs(),
                request_timeout_ms=self._timeout_ms,
                bootstrap_timeout_ms=self._timeout_ms,
            )
        return self._admin

    def close(self) -> None:
        admin, self._admin = self._admin, None
        if admin is not None:
            admin.close()
