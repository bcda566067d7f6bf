"""/healthz and /readyz as a prober sees them, including while the event loop is held.

The prober runs in a native thread (this test process is not monkey-patched) so it
can ask while the main thread holds gevent's hub with a plain ``time.sleep``.
"""

from __future__ import annotations

import json
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from typing import Any

import gevent
import pytest
from prometheus_client import CollectorRegistry

from jobworker.adapters.observability.http_server import (
    NotReady,
    ObservabilityServer,
    readiness_body,
)

MAX_BLOCKED_S = 1.0


def ask(url: str) -> tuple[int, dict[str, Any]]:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:  # noqa: S310 - loopback
            return int(response.status), json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def ask_from_a_thread(url: str, hold_hub: Callable[[], None]) -> tuple[int, dict[str, Any]]:
    """Ask ``url`` from a native thread while the main thread runs ``hold_hub``, then let
    the hub turn until the answer is in."""
    answers: list[tuple[int, dict[str, Any]]] = []
    prober = threading.Thread(target=lambda: answers.append(ask(url)))
    prober.start()
    hold_hub()
    while prober.is_alive():
        gevent.sleep(0.05)
    return answers[0]


@pytest.fixture
def server() -> Iterator[str]:
    probes = ObservabilityServer(
        "127.0.0.1",
        0,
        CollectorRegistry(),
        readiness=lambda: {"taking_jobs": True},
        max_hub_blocked_s=MAX_BLOCKED_S,
    )
    port = probes.start()
    gevent.sleep(0.3)  # the heartbeat's first beats
    yield f"http://127.0.0.1:{port}"
    probes.stop()


def test_a_hub_that_turns_is_alive(server: str) -> None:
    assert ask_from_a_thread(f"{server}/healthz", lambda: gevent.sleep(0.5)) == (
        200,
        {"status": "alive"},
    )


def test_a_blocked_hub_fails_liveness_and_readiness_while_blocked(server: str) -> None:
    # time.sleep is not patched here: it holds the hub, as a loop that never yields does.
    status, body = ask_from_a_thread(f"{server}/healthz", lambda: time.sleep(MAX_BLOCKED_S * 4))
    assert status == 503
    assert body["status"] == "failed"
    assert "event loop has been blocked" in body["reason"]

    status, body = ask_from_a_thread(f"{server}/readyz", lambda: time.sleep(MAX_BLOCKED_S * 4))
    assert status == 503

    # The hub turns again: the worker's own server answers, alive and ready.
    gevent.sleep(0.5)
    assert ask_from_a_thread(f"{server}/healthz", lambda: gevent.sleep(0.5))[0] == 200
    assert ask_from_a_thread(f"{server}/readyz", lambda: gevent.sleep(0.5))[0] == 200


def test_a_short_block_is_not_a_failure(server: str) -> None:
    # Under the bound the prober waits for the hub, and the hub answers: alive.
    status, _ = ask_from_a_thread(f"{server}/healthz", lambda: time.sleep(MAX_BLOCKED_S / 2))
    assert status == 200


def test_advisories_are_shown_with_their_reasons_and_do_not_decide() -> None:
    body = readiness_body(
        {"taking_jobs": True, "broker_answered": True},
        {"core_reachable": NotReady("TLS: certificate verify failed")},
    )
    assert body == {
        "status": "ready",
        "checks": {"taking_jobs": True, "broker_answered": True},
        "reasons": {"core_reachable": "TLS: certificate verify failed"},
        "advisory": {"core_reachable": False},
    }
    body = readiness_body({"broker_answered": NotReady("the broker has not answered for 20 s")})
    assert body["status"] == "not ready"
    assert body["reasons"] == {"broker_answered": "the broker has not answered for 20 s"}
