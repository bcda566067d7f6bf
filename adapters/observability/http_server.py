"""``/metrics`` (Prometheus), ``/healthz`` (alive) and ``/readyz`` (able to work).

Served by gevent's WSGI server from a greenlet in the worker itself: an answer from
``/healthz`` proves the event loop is not stuck, and ``liveness`` adds what the loop
cannot show by answering (the engine gave up), so an orchestrator restarts the worker.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from gevent.pywsgi import WSGIServer
from prometheus_client import CollectorRegistry, make_wsgi_app


@dataclass(frozen=True)
class NotReady:
    """A failed readiness check that knows why: the reason goes into ``/readyz``'s body."""

    reason: str


ReadinessChecks = Callable[[], Mapping[str, bool | NotReady]]
"""Check name -> passed (True), failed (False), or failed for a reason (``NotReady``)."""
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
    ) -> None:
        self._metrics_app = make_wsgi_app(registry)
        self._readiness = readiness
        self._liveness = liveness
        self._server = WSGIServer((host, port), self._app, log=None, error_log=None)

    def start(self) -> int:
        self._server.start()
        return int(self._server.server_port)

    def stop(self) -> None:
        self._server.stop(timeout=1)

    def _app(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        if path == "/metrics":
            return self._metrics_app(environ, start_response)  # type: ignore[no-any-return]
        if path == "/healthz":
            if self._liveness():
                return _reply(start_response, "200 OK", {"status": "alive"})
            return _reply(start_response, "503 Service Unavailable", {"status": "failed"})
        if path == "/readyz":
            body = readiness_body(self._readiness())
            ready = body["status"] == "ready"
            return _reply(start_response, "200 OK" if ready else "503 Service Unavailable", body)
        return _reply(start_response, "404 Not Found", {"error": f"no such endpoint: {path}"})


def readiness_body(results: Mapping[str, bool | NotReady]) -> dict[str, Any]:
    """``/readyz``'s JSON: status, each check as a boolean, and the reasons known."""
    checks = {name: not isinstance(r, NotReady) and bool(r) for name, r in results.items()}
    reasons = {name: r.reason for name, r in results.items() if isinstance(r, NotReady)}
    ready = all(checks.values())
    return {"status": "ready" if ready else "not ready", "checks": checks, "reasons": reasons}


def _reply(start_response: StartResponse, status: str, body: object) -> list[bytes]:
    data = json.dumps(body).encode()
    start_response(
        status, [("Content-Type", "application/json"), ("Content-Length", str(len(data)))]
    )
    return [data]
