"""/readyz and /metrics read Core's reachability from a background ping: a request never
waits on Core, however long Core takes not to answer."""

from __future__ import annotations

import json
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import gevent
import pytest
from gevent.event import Event
from prometheus_client import CollectorRegistry

from jobworker.adapters.observability.http_server import ObservabilityServer
from jobworker.entrypoints.observability import start_observability_server
from tests.support.waiting import wait_until


class Core:
    """A sink's ``ping``: counts calls; answers ``reachable``, or never (``hang``)."""

    def __init__(self, reachable: bool = True, hang: bool = False) -> None:
        self.reachable = reachable
        self.hang = hang
        self.pings = 0
        self.release = Event()

    def ping(self, timeout_s: float = 1.0) -> bool:
        self.pings += 1
        if self.hang:
            self.release.wait()  # a Core that never answers, whatever the timeout
        return self.reachable


def fake_engine() -> Any:
    return SimpleNamespace(
        jobs_in_flight=0,
        jobs_waiting_to_retry=0,
        jobs_queue_depth=0,
        results_queue_depth=0,
        results_waiting_to_retry=0,
        results_refused=0,
        results_dead_lettered=0,
        taking_jobs=True,
        failed=Event(),
    )


def request(server: ObservabilityServer, path: str) -> tuple[str, bytes]:
    """One request through the server's WSGI app, failing (not hanging) if it waits."""
    answer: dict[str, str] = {}

    def start_response(status: str, _headers: list[tuple[str, str]]) -> None:
        answer["status"] = status

    with gevent.Timeout(5, AssertionError(f"{path} waited on something")):
        body = b"".join(server._app({"PATH_INFO": path, "REQUEST_METHOD": "GET"}, start_response))
    return answer["status"], body


@pytest.fixture
def serve() -> Iterator[Any]:
    started: list[tuple[ObservabilityServer, Core]] = []

    def start(core: Core, **options: Any) -> ObservabilityServer:
        server = start_observability_server(
            "127.0.0.1", 0, CollectorRegistry(), fake_engine(), object(), core, **options
        )
        started.append((server, core))
        return server

    yield start
    for server, core in started:
        core.release.set()
        server.stop()


def core_gauge(metrics: bytes) -> float:
    [line] = [
        line
        for line in metrics.decode().splitlines()
        if line.startswith("jobworker_core_reachable")
    ]
    return float(line.split()[-1])


def test_a_core_that_never_answers_does_not_hold_up_readyz_or_metrics(serve: Any) -> None:
    core = Core(hang=True)
    server = serve(core)
    wait_until(lambda: core.pings >= 1, message="the background ping never started")
    pings = core.pings

    status, body = request(server, "/readyz")
    _, metrics = request(server, "/metrics")

    assert core.pings == pings  # neither request pinged Core
    assert status == "200 OK"  # Core is advisory by default
    answer = json.loads(body)
    assert answer["advisory"] == {"core_reachable": False}
    assert answer["reasons"] == {}
    assert core_gauge(metrics) == 0


@pytest.mark.parametrize("reachable", [True, False])
def test_readyz_requiring_core_shows_the_last_background_ping(serve: Any, reachable: bool) -> None:
    core = Core(reachable=reachable)
    server = serve(core, readiness_requires_core=True)
    wait_until(lambda: core.pings >= 1, message="no background ping")
    pings = core.pings

    status, body = request(server, "/readyz")
    _, metrics = request(server, "/metrics")

    assert core.pings == pings
    assert status == ("200 OK" if reachable else "503 Service Unavailable")
    assert json.loads(body)["checks"]["core_reachable"] is reachable
    assert core_gauge(metrics) == float(reachable)
