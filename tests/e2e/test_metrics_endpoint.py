"""The worker's own /metrics, /healthz and /readyz while it works, as a scraper sees them."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from adapters.core.process import CoreProcess
from tests.support.e2e import publish, results_in_core, sleep_jobs, worker_settings
from tests.support.fixtures import StartWorker
from tests.support.kafka import create_topic, unique_name
from tests.support.processes import free_port, wait_while_running

JOBS = 200
PARTITIONS = 2
TIMEOUT_S = 60


def get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:  # noqa: S310 - loopback
            return int(response.status), response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()
    except OSError:
        return 0, b""


def scrape(base: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample on /metrics, keyed by name and sorted labels (empty when unreachable)."""
    status, body = get(f"{base}/metrics")
    if status != 200:
        return {}
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(body.decode())
        for sample in family.samples
    }


def finished_jobs(samples: dict[tuple[str, tuple[tuple[str, str], ...]], float]) -> float:
    return sum(v for (name, _), v in samples.items() if name == "jobworker_jobs_finished_total")


def lag_by_partition(
    samples: dict[tuple[str, tuple[tuple[str, str], ...]], float],
) -> dict[int, float]:
    return {
        int(dict(labels)["partition"]): value
        for (name, labels), value in samples.items()
        if name == "jobworker_consumer_lag"
    }


def readiness(base: str) -> tuple[int, dict[str, Any]]:
    status, body = get(f"{base}/readyz")
    return status, json.loads(body) if body else {}


def test_metrics_follow_the_run_and_readiness_follows_core(
    kafka_servers: str, core: CoreProcess, start_worker: StartWorker
) -> None:
    jobs = sleep_jobs(JOBS, ms=100)
    job_ids = [job.id for job in jobs]
    topic = create_topic(kafka_servers, PARTITIONS)
    publish(kafka_servers, topic, jobs)
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    worker = start_worker(
        "worker-1",
        worker_settings(
            kafka_servers,
            topic,
            unique_name("group"),
            core.address,
            WORKER_POOL_SIZE="4",
            KAFKA_SESSION_TIMEOUT="8s",
            METRICS_HOST="127.0.0.1",
            METRICS_PORT=str(port),
        ),
    )
    assert wait_while_running(lambda: get(f"{base}/healthz")[0] == 200, TIMEOUT_S, worker)
    assert wait_while_running(lambda: readiness(base)[0] == 200, TIMEOUT_S, worker)
    assert readiness(base)[1]["checks"] == {
        "taking_jobs": True,
        "joined_group": True,
        "core_reachable": True,
    }

    # Scrape while the jobs run: the finished counter climbs, lag shows per partition.
    finished_seen: set[float] = set()
    lag_seen: list[dict[int, float]] = []

    def watch_until_done() -> bool:
        samples = scrape(base)
        finished_seen.add(finished_jobs(samples))
        lag_seen.append(lag_by_partition(samples))
        return len(results_in_core(core.db_path, job_ids)) == JOBS

    assert wait_while_running(watch_until_done, TIMEOUT_S, worker, interval_s=0.1)
    assert len({n for n in finished_seen if 0 < n < JOBS}) >= 2, sorted(finished_seen)
    assert any(set(lag) == set(range(PARTITIONS)) and sum(lag.values()) > 0 for lag in lag_seen), (
        lag_seen
    )
    # Done and committed: no lag left on any partition.
    assert wait_while_running(
        lambda: lag_by_partition(scrape(base)) == dict.fromkeys(range(PARTITIONS), 0),
        TIMEOUT_S,
        worker,
    ), lag_by_partition(scrape(base))
    assert finished_jobs(scrape(base)) == JOBS

    core.kill()
    assert wait_while_running(lambda: readiness(base)[0] == 503, TIMEOUT_S, worker)
    assert readiness(base)[1]["checks"]["core_reachable"] is False
    assert get(f"{base}/healthz")[0] == 200
    assert worker.stop(60) == 0
