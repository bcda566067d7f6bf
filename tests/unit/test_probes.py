"""/healthz and /readyz as a prober sees them, including while the event loop is held.

The prober runs in a native thread (this test process is not monkey-patched) so it
can ask while the main thread holds gevent's hub with a native (unpatched) wait.
"""

from __future__ import annotations

import json
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from jobworker.adapters.observability.http_server import (
    NotReady,
    ObservabilityServer,
    readiness_body,
)
from tests.support.waiting import wait_until

MAX_BLOCKED_S = 1.0


def ask(url: str) -> tuple[int, dict[str, Any]]:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:  # noqa: S310 - loopback
            return int(response.status), json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def ask_from_a_thread(
    url: str, hold_hub: Callable[[threading.Event], object] | None = None
) -> tuple[int, dict[str, Any]]:
    """Ask ``url`` from a native thread while the main thread runs ``hold_hub`` (given the
    event the prober sets once answered), then let the hub turn until the answer is in."""
    answers: list[tuple[int, dict[str, Any]]] = []
    answered = threading.Event()

    def probe() -> None:
        answers.append(ask(url))
        answered.set()

    threading.Thread(target=probe).start()
    if hold_hub is not None:
        hold_hub(answered)
    wait_until(answered.is_set, 30, "the prober got no answer")
    return answers[0]


def until_answered(answered: threading.Event) -> None:
    """Holds the hub, as a loop that never yields does, until the prober has its answer:
    threading's wait is not patched here, so nothing else runs meanwhile."""
    answered.wait(30)


def wait_for_the_hub_to_answer(url: str) -> None:
    """The worker's own server answers alive once the hub turns (the stand-in, not the
    server, answered while it was held)."""
    wait_until(lambda: ask_from_a_thread(url)[0] == 200, 30, f"{url} never answered 200")


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
    wait_for_the_hub_to_answer(f"http://127.0.0.1:{port}/healthz")
    yield f"http://127.0.0.1:{port}"
    probes.stop()


def test_a_hub_that_turns_is_alive(server: str) -> None:
    assert ask_from_a_thread(f"{server}/healthz") == (200, {"status": "alive"})


def test_a_blocked_hub_fails_liveness_and_readiness_while_blocked(server: str) -> None:
    status, body = ask_from_a_thread(f"{server}/healthz", until_answered)
    assert status == 503
    assert body["status"] == "failed"
    assert "event loop has been blocked" in body["reason"]

    status, body = ask_from_a_thread(f"{server}/readyz", until_answered)
    assert status == 503

    # The hub turns again: the worker's own server answers, alive and ready.
    wait_for_the_hub_to_answer(f"{server}/healthz")
    assert ask_from_a_thread(f"{server}/readyz")[0] == 200


def test_a_short_block_is_not_a_failure(server: str) -> None:
    # Under the bound the prober waits for the hub, and the hub answers: alive. The hold
    # is a deliberate stretch of time, a quarter of the bound (time.sleep is not patched
    # here: it holds the hub); a slow machine leaves the answer later, never a 503.
    status, _ = ask_from_a_thread(f"{server}/healthz", lambda _: time.sleep(MAX_BLOCKED_S / 4))
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
