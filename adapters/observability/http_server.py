"""``/metrics`` (Prometheus), ``/healthz`` (alive) and ``/readyz`` (able to work).

Served by gevent's WSGI server from a greenlet in the worker itself; ``liveness`` adds
what the loop cannot show by answering (the engine gave up), so an orchestrator
restarts the worker. While the event loop is held past ``max_hub_blocked_s`` the
greenlet cannot answer: a native thread answers 503 on the same port instead
(``hub_watch``).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from gevent.pywsgi import WSGIServer
from prometheus_client import CollectorRegistry, make_wsgi_app

from jobworker.adapters.observability.hub_watch import BlockedHubStandIn, HubHeartbeat


@dataclass(frozen=True)
class NotReady:
    """A failed readiness check that knows why: the reason goes into ``/readyz``'s body."""

    reason: str


ReadinessChecks = Callable[[], Mapping[str, bool | NotReady]]
"""Check name -> passed (True), failed (False), or failed for a reason (``NotReady``)."""
Advisories = Callable[[], Mapping[str, bool | NotReady]]
"""Like ``ReadinessChecks``, shown in ``/readyz`` but not deciding it (Core, by default)."""


class Background(Protocol):
    def start(self) -> None: ...
    def stop(self) -> None: ...


StartResponse = Callable[[str, list[tuple[str, str]]], Any]


class ObservabilityServer:
    """Serves the three endpoints on ``host:port`` (port 0 picks a free one)."""

    def __init__(
        self,
        host: str,
        port: int,
        registry: CollectorRegistry,
        readiness: ReadinessChecks,
        liveness: Callable[[], bool] = lambda: True,
        advisories: Advisories = dict,
        max_hub_blocked_s: float | None = None,
        background: Sequence[Background] = (),
    ) -> None:
        self._metrics_app = make_wsgi_app(registry)
        self._readiness = readiness
        self._advisories = advisories
        self._liveness = liveness
        self._server = WSGIServer((host, port), self._app, log=None, error_log=None)
        self._max_hub_blocked_s = max_hub_blocked_s
        self._heartbeat: HubHeartbeat | None = None
        self._stand_in: BlockedHubStandIn | None = None
        # What keeps the checks' answers fresh (``Sampled``): started and stopped with us.
        self._background = list(background)

    def start(self) -> int:
        for task in self._background:
            task.start()
        self._server.start()
        if self._max_hub_blocked_s is not None:
            self._heartbeat = HubHeartbeat(warn_after_s=self._max_hub_blocked_s / 2)
            self._heartbeat.start()
            self._stand_in = BlockedHubStandIn(
                self._server.socket.fileno(), self._heartbeat, self._max_hub_blocked_s
            )
            self._stand_in.start()
        return int(self._server.server_port)

    def stop(self) -> None:
        if self._stand_in is not None:
            self._stand_in.stop()
        if self._heartbeat is not None:
            self._heartbeat.stop()
        self._server.stop(timeout=1)
        for task in self._background:
            task.stop()

    def _app(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        if path == "/metrics":
            return self._metrics_app(environ, start_response)  # type: ignore[no-any-return]
        if path == "/healthz":
            if self._liveness():
                return _reply(start_response, "200 OK", {"status": "alive"})
            return _reply(start_response, "503 Service Unavailable", {"status": "failed"})
        if path == "/readyz":
            body = readiness_body(self._readiness(), self._advisories())
            ready = body["status"] == "ready"
            return _reply(start_response, "200 OK" if ready else "503 Service Unavailable", body)
        return _reply(start_response, "404 Not Found", {"error": f"no such endpoint: {path}"})


def readiness_body(
    results: Mapping[str, bool | NotReady],
    advisories: Mapping[str, bool | NotReady] | None = None,
) -> dict[str, Any]:
    """``/readyz``'s JSON: status, each check as a boolean, and the reasons known.

    ``advisory`` holds what is shown but does not decide readiness; failed ones give
    their reasons too.
    """
    checks = {name: readiness_passed(r) for name, r in results.items()}
    advisory = {name: readiness_passed(r) for name, r in (advisories or {}).items()}
    reasons = {
        name: r.reason
        for name, r in {**(advisories or {}), **results}.items()
        if isinstance(r, NotReady)
    }
    ready = all(checks.values())
    body = {"status": "ready" if ready else "not ready", "checks": checks, "reasons": reasons}
    if advisory:
        body["advisory"] = advisory
    return body


def readiness_passed(result: bool | NotReady) -> bool:
    """True for a passed check: ``True``, not ``False`` nor a ``NotReady``."""
    return not isinstance(result, NotReady) and bool(result)


def _reply(start_response: StartResponse, status: str, body: object) -> list[bytes]:
    data = json.dumps(body).encode()
    start_response(
        status, [("Content-Type", "application/json"), ("Content-Length", str(len(data)))]
    )
    return [data]
