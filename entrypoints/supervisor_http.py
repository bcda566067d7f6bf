"""The supervisor's one ``/metrics``, ``/healthz`` and ``/readyz`` over all its children.

Each child serves its own endpoint on a loopback port the supervisor chose; a request to
the supervisor's endpoint asks every running child at once and merges the answers:

- ``/metrics``: every child's series with a ``process`` label (``0``…``N-1``), plus the
  supervisor's own ``jobworker_worker_processes`` and ``jobworker_worker_process_restarts``.
  Not prometheus-client's multiprocess mode: it supports no custom collectors, and our
  gauges and counters are read from the live engine and consumer at scrape time
  (``LiveStateCollector``); it would also need a shared directory wiped between runs.
- ``/healthz``: alive while every running child answers its own ``/healthz`` (a child
  being restarted, or started less than 30 s ago, is the supervisor's business, and
  shows in ``/readyz``).
- ``/readyz``: ready when every child is running and ready; each child's reasons are kept.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Iterable, Mapping
from typing import Any

import gevent
from prometheus_client import CollectorRegistry
from prometheus_client.metrics_core import GaugeMetricFamily, Metric
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector

from jobworker.adapters.observability.http_server import NotReady, ObservabilityServer
from jobworker.entrypoints.supervisor import Supervisor, WorkerSlot

# A child that takes longer is counted as not answering for this request.
CHILD_TIMEOUT_S = 2.0
# A child's endpoint answers a second or two after it starts; a slow machine gets more.
START_GRACE_S = 30.0


def _fetch(port: int, path: str) -> tuple[int, bytes]:
    url = f"http://127.0.0.1:{port}{path}"
    try:
        with urllib.request.urlopen(url, timeout=CHILD_TIMEOUT_S) as reply:
            return int(reply.status), reply.read()
    except urllib.error.HTTPError as error:
        return int(error.code), error.read()
    except (OSError, ValueError):
        return 0, b""


def _ask_running(slots: Iterable[WorkerSlot], path: str) -> dict[int, tuple[int, bytes]]:
    """``path`` from every running child, concurrently: index -> (status, body)."""
    asks = {
        slot.index: gevent.spawn(_fetch, slot.metrics_port, path)
        for slot in slots
        if slot.running and slot.metrics_port
    }
    gevent.joinall(list(asks.values()), timeout=CHILD_TIMEOUT_S + 1)
    return {i: ask.value if ask.successful() else (0, b"") for i, ask in asks.items()}


class MergedChildren(Collector):
    """Every child's families, each sample labelled with the child's ``process`` index."""

    def __init__(self, supervisor: Supervisor) -> None:
        self._supervisor = supervisor

    def collect(self) -> Iterable[Metric]:
        slots = self._supervisor.slots
        merged: dict[str, Metric] = {}
        for index, (status, body) in sorted(_ask_running(slots, "/metrics").items()):
            if status != 200:
                continue
            for family in text_string_to_metric_families(body.decode()):
                into = merged.setdefault(
                    family.name, Metric(family.name, family.documentation, family.type)
                )
                into.samples.extend(
                    s._replace(labels={**s.labels, "process": str(index)}) for s in family.samples
                )
        yield from merged.values()
        running = GaugeMetricFamily(
            "jobworker_worker_processes", "Worker processes running, by state.", labels=["state"]
        )
        alive = sum(slot.running for slot in slots)
        running.add_metric(["running"], alive)
        running.add_metric(["down"], len(slots) - alive)
        yield running
        restarts = Metric(
            "jobworker_worker_process_restarts",
            "Worker processes restarted after they died.",
            "counter",
        )
        for slot in slots:
            restarts.add_sample(
                "jobworker_worker_process_restarts_total",
                {"process": str(slot.index)},
                slot.restarts,
            )
        yield restarts


def _liveness(supervisor: Supervisor) -> bool:
    answers = _ask_running(supervisor.slots, "/healthz")
    ages = {slot.index: slot.age_s for slot in supervisor.slots}
    # No answer from a child that is still starting is no sign of a stuck one.
    return all(
        status == 200 or (status == 0 and ages[index] < START_GRACE_S)
        for index, (status, _) in answers.items()
    )


def _readiness(supervisor: Supervisor) -> Mapping[str, bool | NotReady]:
    answers = _ask_running(supervisor.slots, "/readyz")
    checks: dict[str, bool | NotReady] = {}
    for slot in supervisor.slots:
        name = f"process_{slot.index}"
        if slot.index not in answers:
            why = f"restarting after {slot.last_exit}" if slot.last_exit else "starting"
            checks[name] = NotReady(f"not running: {why}")
            continue
        status, body = answers[slot.index]
        checks[name] = True if status == 200 else NotReady(_not_ready_reason(status, body))
    return checks


def _not_ready_reason(status: int, body: bytes) -> str:
    if status == 0:
        return "its endpoint does not answer (yet)"
    try:
        reply: dict[str, Any] = json.loads(body)
    except ValueError:
        return f"its /readyz answered {status}"
    failed = [name for name, ok in reply.get("checks", {}).items() if not ok]
    reasons = reply.get("reasons") or {}
    return "; ".join(f"{name}: {reasons[name]}" if name in reasons else name for name in failed)


def start_merged_endpoint(host: str, port: int, supervisor: Supervisor) -> ObservabilityServer:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(MergedChildren(supervisor))
    server = ObservabilityServer(
        host,
        port,
        registry,
        lambda: _readiness(supervisor),
        liveness=lambda: _liveness(supervisor),
    )
    server.start()
    return server
