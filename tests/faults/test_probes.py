"""/readyz and /healthz under the faults they exist to report, on a real worker process.

- The broker frozen (SIGSTOP: connections stay open, nothing answers) and thawed: the
  worker stays joined all along, so only "the broker answered within
  READINESS_BROKER_TIMEOUT" can take it out of readiness, and put it back.
- The event loop held by a job that never yields: /healthz must fail while it is held
  (the worker's own server cannot answer then), and pass again after.

The broker that is frozen is a private one (``tools/kafka/broker.sh`` on free ports),
never the shared one.
"""

from __future__ import annotations

import json
import os
import signal
import textwrap
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from jobworker.adapters.core.process import CoreProcess
from jobworker.domain.model import Job
from tests.support.e2e import publish, results_in_core, sleep_jobs, worker_settings
from tests.support.faults import PrivateBroker
from tests.support.fixtures import Report, StartWorker
from tests.support.kafka import create_topic, unique_name
from tests.support.processes import ROOT, free_port, log_tail, wait_while_running

pytestmark = pytest.mark.faults

BROKER_TIMEOUT_S = 8
MAX_BLOCKED_S = 2
HOG_S = 10


def get(url: str) -> tuple[int, dict[str, Any]]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:  # noqa: S310 - loopback
            return int(response.status), json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())
    except OSError:
        return 0, {}


@pytest.fixture
def broker(kafka_servers: str, tmp_path: Path) -> Iterator[PrivateBroker]:
    # kafka_servers: with no broker tools at hand this skips (or fails on CI) as the
    # other Kafka tiers do.
    private = PrivateBroker(tmp_path / "kafka")
    with private:
        yield private


def broker_pid(broker: PrivateBroker) -> int:
    return int((broker.state_dir / f"broker-{broker.port}" / "kafka.pid").read_text())


def test_readiness_follows_a_frozen_and_thawed_broker(
    broker: PrivateBroker, core: CoreProcess, start_worker: StartWorker, report: Report
) -> None:
    servers = broker.bootstrap
    topic = create_topic(servers, partitions=2, prefix="faults-frozen")
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    worker = start_worker(
        "frozen-broker-worker",
        worker_settings(
            servers,
            topic,
            unique_name("faults-frozen"),
            core.address,
            METRICS_HOST="127.0.0.1",
            METRICS_PORT=str(port),
            READINESS_BROKER_TIMEOUT=f"{BROKER_TIMEOUT_S}s",
        ),
    )
    assert wait_while_running(lambda: get(f"{base}/readyz")[0] == 200, 90, worker), log_tail(worker)
    assert get(f"{base}/readyz")[1]["checks"]["broker_answered"] is True

    pid = broker_pid(broker)
    os.kill(pid, signal.SIGSTOP)
    frozen_at = time.monotonic()
    try:
        assert wait_while_running(lambda: get(f"{base}/readyz")[0] == 503, 60, worker), (
            get(f"{base}/readyz"),
            log_tail(worker),
        )
        unready_after = time.monotonic() - frozen_at
        _, body = get(f"{base}/readyz")
        assert body["checks"]["broker_answered"] is False
        assert "has not answered" in body["reasons"]["broker_answered"]
        # Restarting the worker would not bring the broker back: it stays alive.
        assert get(f"{base}/healthz")[0] == 200
        frozen_for = time.monotonic() - frozen_at
    finally:
        os.kill(pid, signal.SIGCONT)
    thawed_at = time.monotonic()

    assert wait_while_running(lambda: get(f"{base}/readyz")[0] == 200, 90, worker), (
        get(f"{base}/readyz"),
        log_tail(worker),
    )
    ready_after = time.monotonic() - thawed_at
    # And it works: jobs published after the thaw reach Core.
    jobs = sleep_jobs(20, ms=10, prefix="after-thaw")
    publish(servers, topic, jobs)
    ids = [job.id for job in jobs]
    assert wait_while_running(
        lambda: len(results_in_core(core.db_path, ids)) == len(ids), 90, worker
    ), log_tail(worker)
    report(
        f"frozen broker: unready {unready_after:.1f} s after SIGSTOP"
        f" (READINESS_BROKER_TIMEOUT={BROKER_TIMEOUT_S}s), frozen {frozen_for:.0f} s,"
        f" ready again {ready_after:.1f} s after SIGCONT"
    )
    assert worker.stop(60) == 0, log_tail(worker)


HOG_PLUGIN = """
    import json
    import time


    class HubHog:
        \"\"\"Spins the CPU for payload["s"] seconds without ever yielding to gevent.\"\"\"

        def execute(self, job):
            end = time.monotonic() + json.loads(job.payload)["s"]
            while time.monotonic() < end:
                pass
            return "{}"
"""


def hog_plugin(folder: Path) -> Path:
    """A ``TYPE_99`` executor plugin, found through an entry point on PYTHONPATH."""
    folder.mkdir()
    (folder / "hub_hog.py").write_text(textwrap.dedent(HOG_PLUGIN))
    dist = folder / "hub_hog-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: hub-hog\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[jobworker.executors]\nTYPE_99 = hub_hog:HubHog\n")
    return folder


def test_liveness_fails_while_a_job_holds_the_event_loop(
    kafka_servers: str,
    core: CoreProcess,
    start_worker: StartWorker,
    tmp_path: Path,
    report: Report,
) -> None:
    plugins = hog_plugin(tmp_path / "plugins")
    topic = create_topic(kafka_servers, partitions=1, prefix="faults-hog")
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    worker = start_worker(
        "hub-hog-worker",
        worker_settings(
            kafka_servers,
            topic,
            unique_name("faults-hog"),
            core.address,
            METRICS_HOST="127.0.0.1",
            METRICS_PORT=str(port),
            LIVENESS_MAX_BLOCKED=f"{MAX_BLOCKED_S}s",
            PYTHONPATH=f"{ROOT}{os.pathsep}{plugins}",
        ),
    )
    assert wait_while_running(lambda: get(f"{base}/readyz")[0] == 200, 90, worker), log_tail(worker)
    assert get(f"{base}/healthz") == (200, {"status": "alive"})

    hog = Job(id="hog-1", type="TYPE_99", payload=json.dumps({"s": HOG_S}))
    publish(kafka_servers, topic, [hog])
    answers: list[tuple[float, int, dict[str, Any]]] = []
    started = time.monotonic()

    def held_and_released() -> bool:
        status, body = get(f"{base}/healthz")
        answers.append((time.monotonic() - started, status, body))
        return any(s == 503 for _, s, _ in answers) and status == 200

    assert wait_while_running(held_and_released, 90, worker, interval_s=0.5), answers
    failed = [(t, b) for t, s, b in answers if s == 503]
    assert all("event loop has been blocked" in body["reason"] for _, body in failed), failed
    assert wait_while_running(lambda: results_in_core(core.db_path, ["hog-1"]), 60, worker)
    assert "the event loop was blocked" in worker.log()
    report(
        f"hub held {HOG_S} s by a job: /healthz answered 503 {len(failed)} times"
        f" (first at {failed[0][0]:.1f} s after publishing, LIVENESS_MAX_BLOCKED="
        f"{MAX_BLOCKED_S}s), 200 again at {answers[-1][0]:.1f} s"
    )
    assert worker.stop(60) == 0, log_tail(worker)
