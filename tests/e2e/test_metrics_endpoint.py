"""The worker's own /metrics, /healthz and /readyz while it works, as a scraper sees them."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from jobworker.adapters.core.process import CoreProcess
from jobworker.domain.model import Job
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
    metric: str = "jobworker_consumer_lag",
) -> dict[int, float]:
    return {
        int(dict(labels)["partition"]): value
        for (name, labels), value in samples.items()
        if name == metric
    }


def readiness(base: str) -> tuple[int, dict[str, Any]]:
    status, body = get(f"{base}/readyz")
    return status, json.loads(body) if body else {}


def test_metrics_follow_the_run_and_readiness_does_not_follow_core(
    kafka_servers: str, core: CoreProcess, start_worker: StartWorker
) -> None:
    # Types no executor is registered for: each would be a label value of its own.
    strangers = [Job(id=f"stranger-{n}", type=f"TYPE_{40 + n}") for n in range(5)]
    jobs = sleep_jobs(JOBS, ms=100) + strangers
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
        "broker_answered": True,
    }
    assert readiness(base)[1]["advisory"] == {"core_reachable": True}

    # Scrape while the jobs run: the finished counter climbs, lag shows per partition.
    finished_seen: set[float] = set()
    lag_seen: list[dict[int, float]] = []

    def watch_until_done() -> bool:
        samples = scrape(base)
        finished_seen.add(finished_jobs(samples))
        lag_seen.append(lag_by_partition(samples))
        return len(results_in_core(core.db_path, job_ids)) == len(job_ids)

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
    samples = scrape(base)
    assert finished_jobs(samples) == len(job_ids)
    # Nothing left to do: no backlog either, per partition and in all.
    assert lag_by_partition(samples, "jobworker_backlog") == dict.fromkeys(range(PARTITIONS), 0)
    assert samples[("jobworker_backlog_owned", ())] == 0
    # Bounded labels: the strangers share one value.
    types = {
        dict(labels).get("type") for (name, labels) in samples if name.startswith("jobworker_")
    }
    assert types == {None, "SLEEP", "unknown"}, types
    assert samples[
        ("jobworker_jobs_finished_total", (("status", "REJECTED"), ("type", "unknown")))
    ] == len(strangers)
    # What dashboards expect beside ours; no *_created twin of each counter.
    assert samples[("process_resident_memory_bytes", ())] > 0
    assert any(name == "jobworker_build_info" for (name, _) in samples)
    assert not [name for (name, _) in samples if name.endswith("_created")]
    assert samples[("jobworker_core_reachable", ())] == 1

    # Core down: shown on its gauge and in /readyz, but the worker stays ready (it holds
    # results back and pauses intake, as it should); READINESS_REQUIRES_CORE reverts it.
    core.kill()
    assert wait_while_running(
        lambda: scrape(base).get(("jobworker_core_reachable", ())) == 0, TIMEOUT_S, worker
    )
    status, body = readiness(base)
    assert status == 200, body
    assert body["advisory"] == {"core_reachable": False}
    assert get(f"{base}/healthz")[0] == 200
    assert worker.stop(60) == 0


def test_readiness_can_require_core(
    kafka_servers: str, core: CoreProcess, start_worker: StartWorker
) -> None:
    topic = create_topic(kafka_servers, 1)
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    worker = start_worker(
        "worker-needs-core",
        worker_settings(
            kafka_servers,
            topic,
            unique_name("group"),
            core.address,
            METRICS_HOST="127.0.0.1",
            METRICS_PORT=str(port),
            READINESS_REQUIRES_CORE="true",
        ),
    )
    assert wait_while_running(lambda: readiness(base)[0] == 200, TIMEOUT_S, worker)
    assert readiness(base)[1]["checks"]["core_reachable"] is True
    core.kill()
    assert wait_while_running(lambda: readiness(base)[0] == 503, TIMEOUT_S, worker)
    assert readiness(base)[1]["checks"]["core_reachable"] is False
    assert "advisory" not in readiness(base)[1]
    assert worker.stop(60) == 0
