from __future__ import annotations

from prometheus_client import CollectorRegistry, generate_latest

from jobworker.adapters.observability.metrics import (
    LiveState,
    LiveStateCollector,
    PrometheusJobObserver,
    ResultSendRetries,
    installed_version,
    new_registry,
)
from jobworker.domain.model import Job, JobResult, JobStatus

KNOWN_TYPES = ("HTTP", "SLEEP")


def value(registry: CollectorRegistry, name: str, **labels: str) -> float | None:
    return registry.get_sample_value(name, labels)


def test_job_counters_and_durations() -> None:
    registry = CollectorRegistry()
    observer = PrometheusJobObserver(registry, KNOWN_TYPES)
    job = Job(id="a", type="HTTP")
    observer.job_received(job)
    observer.job_retrying(job, 1, "503", 0.1)
    done = JobResult(
        job_id="a",
        type="HTTP",
        status=JobStatus.SUCCEEDED,
        started_at_unix_ms=0,
        finished_at_unix_ms=300,
    )
    observer.job_finished(job, done)
    observer.result_delivered(done)
    assert value(registry, "jobworker_jobs_consumed_total", type="HTTP") == 1
    assert value(registry, "jobworker_job_retries_total", type="HTTP") == 1
    assert value(registry, "jobworker_jobs_finished_total", type="HTTP", status="SUCCEEDED") == 1
    assert value(registry, "jobworker_results_delivered_total", status="SUCCEEDED") == 1
    assert (
        value(
            registry,
            "jobworker_job_duration_seconds_bucket",
            type="HTTP",
            status="SUCCEEDED",
            le="0.25",
        )
        == 0
    )
    assert (
        value(
            registry,
            "jobworker_job_duration_seconds_bucket",
            type="HTTP",
            status="SUCCEEDED",
            le="0.5",
        )
        == 1
    )


def test_send_retries_by_code() -> None:
    registry = CollectorRegistry()
    retries = ResultSendRetries(registry)
    retries("UNAVAILABLE", 1, 0.1)
    retries("UNAVAILABLE", 2, 0.2)
    assert value(registry, "jobworker_result_send_retries_total", code="UNAVAILABLE") == 2


def test_live_state_is_read_at_scrape_time() -> None:
    registry = CollectorRegistry()
    depth = {"now": 3}
    lag = {("jobs", 0): 5, ("jobs", 1): 0}
    registry.register(
        LiveStateCollector(
            LiveState(
                gauges={"jobworker_jobs_queue_depth": ("doc", lambda: depth["now"])},
                counters={
                    "jobworker_offset_commits": ("doc", lambda: 7),
                    "jobworker_dlq_records": ("doc", lambda: 1),
                },
                consumer_lag=lambda: lag,
                backlog=lambda: {("jobs", 0): 2, ("jobs", 1): 1},
            )
        )
    )
    assert value(registry, "jobworker_jobs_queue_depth") == 3
    depth["now"] = 0
    assert value(registry, "jobworker_jobs_queue_depth") == 0
    assert value(registry, "jobworker_consumer_lag", topic="jobs", partition="0") == 5
    assert value(registry, "jobworker_backlog", topic="jobs", partition="0") == 2
    assert value(registry, "jobworker_backlog_owned") == 3
    assert value(registry, "jobworker_offset_commits_total") == 7
    assert value(registry, "jobworker_dlq_records_total") == 1


def test_each_label_set_counts_on_its_own_however_often_it_comes_back() -> None:
    registry = CollectorRegistry()
    observer = PrometheusJobObserver(registry, KNOWN_TYPES)
    outcomes = [("HTTP", JobStatus.SUCCEEDED)] * 3 + [
        ("HTTP", JobStatus.FAILED),
        ("SLEEP", JobStatus.SUCCEEDED),
    ]
    for job_type, status in outcomes:
        job = Job(id="a", type=job_type)
        observer.job_received(job)
        observer.job_retrying(job, 1, "503", 0.1)
        result = JobResult(
            job_id="a", type=job_type, status=status, started_at_unix_ms=0, finished_at_unix_ms=20
        )
        observer.job_finished(job, result)
        observer.result_delivered(result)

    assert value(registry, "jobworker_jobs_consumed_total", type="HTTP") == 4
    assert value(registry, "jobworker_job_retries_total", type="SLEEP") == 1
    assert value(registry, "jobworker_jobs_finished_total", type="HTTP", status="SUCCEEDED") == 3
    assert value(registry, "jobworker_jobs_finished_total", type="HTTP", status="FAILED") == 1
    assert (
        value(registry, "jobworker_job_duration_seconds_count", type="HTTP", status="SUCCEEDED")
        == 3
    )
    assert (
        value(registry, "jobworker_job_duration_seconds_sum", type="SLEEP", status="SUCCEEDED")
        == 0.02
    )
    assert value(registry, "jobworker_results_delivered_total", status="SUCCEEDED") == 4
    assert value(registry, "jobworker_results_delivered_total", status="FAILED") == 1


def finish(observer: PrometheusJobObserver, job_type: str, status: JobStatus) -> None:
    job = Job(id="a", type=job_type)
    observer.job_received(job)
    observer.job_retrying(job, 1, "503", 0.1)
    result = JobResult(
        job_id="a", type=job_type, status=status, started_at_unix_ms=0, finished_at_unix_ms=20
    )
    observer.job_finished(job, result)


def test_types_without_an_executor_share_one_label_value() -> None:
    registry = CollectorRegistry()
    observer = PrometheusJobObserver(registry, KNOWN_TYPES)
    for n in range(50):  # a producer inventing types must not invent series
        finish(observer, f"TYPE_{n}", JobStatus.REJECTED)
    finish(observer, "SLEEP", JobStatus.SUCCEEDED)

    types = {
        sample.labels["type"]
        for family in registry.collect()
        for sample in family.samples
        if "type" in sample.labels
    }
    assert types == {"unknown", "SLEEP"}
    assert value(registry, "jobworker_jobs_consumed_total", type="unknown") == 50
    assert value(registry, "jobworker_job_retries_total", type="unknown") == 50
    assert value(registry, "jobworker_jobs_finished_total", type="unknown", status="REJECTED") == 50
    assert value(registry, "jobworker_jobs_finished_total", type="SLEEP", status="SUCCEEDED") == 1


def test_the_worker_registry_has_process_series_build_info_and_no_created_series() -> None:
    registry = new_registry()
    observer = PrometheusJobObserver(registry, KNOWN_TYPES)
    ResultSendRetries(registry)("UNAVAILABLE", 1, 0.1)
    finish(observer, "SLEEP", JobStatus.SUCCEEDED)

    text = generate_latest(registry).decode()
    rss = value(registry, "process_resident_memory_bytes")
    assert rss is not None and rss > 0
    assert value(registry, "process_cpu_seconds_total") is not None
    assert "python_info{" in text
    assert "python_gc_collections_total{" in text
    assert value(registry, "jobworker_build_info", version=installed_version()) == 1
    assert installed_version() != "unknown"  # the editable install has metadata
    assert "_created" not in text
    assert "jobworker_jobs_finished_total{" in text  # the counters are there, without it


def test_durations_fall_in_the_first_bucket_not_below_them_and_inf_counts_all() -> None:
    registry = CollectorRegistry()
    observer = PrometheusJobObserver(registry, KNOWN_TYPES)
    for finished_ms in (500, 500_001):  # on a bound: "less than or equal"; past the last one
        result = JobResult(
            job_id="a",
            type="SLEEP",
            status=JobStatus.SUCCEEDED,
            started_at_unix_ms=0,
            finished_at_unix_ms=finished_ms,
        )
        observer.job_finished(Job(id="a", type="SLEEP"), result)

    def bucket(le: str) -> float | None:
        return value(
            registry,
            "jobworker_job_duration_seconds_bucket",
            type="SLEEP",
            status="SUCCEEDED",
            le=le,
        )

    assert bucket("0.25") == 0
    assert bucket("0.5") == 1
    assert bucket("120.0") == 1
    assert bucket("+Inf") == 2
    assert (
        value(registry, "jobworker_job_duration_seconds_sum", type="SLEEP", status="SUCCEEDED")
        == 500.501
    )


def test_metric_families_are_listed_before_any_job() -> None:
    registry = CollectorRegistry()
    PrometheusJobObserver(registry, KNOWN_TYPES)
    text = generate_latest(registry).decode()
    # As prometheus_client's own labelled metrics list them: type lines, no samples.
    assert "# TYPE jobworker_jobs_consumed_total counter" in text
    assert "# TYPE jobworker_job_duration_seconds histogram" in text
    assert "jobworker_jobs_consumed_total{" not in text
