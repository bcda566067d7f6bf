"""The reference Core's result store: one row per job however often it is reported."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from jobworker.adapters.core.store import ResultStore, ResultStoreError, format_summary
from jobworker.domain.model import JobResult, JobStatus


class StepClock:
    """A clock that moves one second each time it is read."""

    def __init__(self, start_s: float = 1_700_000_000.0) -> None:
        self.now_s = start_s

    def __call__(self) -> float:
        self.now_s += 1.0
        return self.now_s


def a_result(
    job_id: str = "job-1", status: JobStatus = JobStatus.SUCCEEDED, **fields: object
) -> JobResult:
    return JobResult(job_id=job_id, type="SLEEP", status=status, **fields)  # type: ignore[arg-type]


@pytest.fixture
def store(tmp_path: Path) -> Iterator[ResultStore]:
    with ResultStore(tmp_path / "core.db", clock=StepClock()) as store:
        yield store


def test_a_first_report_is_stored_with_every_field(store: ResultStore) -> None:
    result = a_result(
        output='{"ok": true}',
        error="",
        attempts=3,
        started_at_unix_ms=1_000,
        finished_at_unix_ms=1_250,
        worker_id="worker-a",
        metadata={"trace_id": "t-1", "tenant": "acme"},
    )

    assert store.record(result) is True

    stored = store.get("job-1")
    assert stored is not None
    assert stored.result == result
    assert stored.reports == 1
    assert stored.first_received_at_unix_ms == stored.last_received_at_unix_ms == 1_700_000_001_000


def test_a_repeated_report_adds_no_row_and_counts_as_a_duplicate(store: ResultStore) -> None:
    store.record(a_result())

    assert store.record(a_result()) is False

    assert store.job_ids() == ["job-1"]
    stored = store.get("job-1")
    assert stored is not None
    assert stored.reports == 2
    assert stored.first_received_at_unix_ms < stored.last_received_at_unix_ms
    assert store.summary() == {
        "jobs": 1,
        "reports": 2,
        "duplicates": 1,
        "by_status": {"SUCCEEDED": 1, "FAILED": 0, "TIMED_OUT": 0, "REJECTED": 0},
    }


def test_a_later_report_replaces_a_failure(store: ResultStore) -> None:
    store.record(a_result(status=JobStatus.FAILED, error="boom", worker_id="worker-a"))

    store.record(a_result(status=JobStatus.SUCCEEDED, output="{}", worker_id="worker-b"))

    stored = store.get("job-1")
    assert stored is not None
    assert (stored.result.status, stored.result.error, stored.result.worker_id) == (
        JobStatus.SUCCEEDED,
        "",
        "worker-b",
    )


def test_a_success_is_kept_whatever_is_reported_after_it(store: ResultStore) -> None:
    first_success = a_result(status=JobStatus.SUCCEEDED, output='{"n": 1}', worker_id="worker-a")
    store.record(first_success)

    store.record(a_result(status=JobStatus.TIMED_OUT, error="timed out", worker_id="worker-b"))
    store.record(a_result(status=JobStatus.SUCCEEDED, output='{"n": 2}', worker_id="worker-c"))

    stored = store.get("job-1")
    assert stored is not None
    assert stored.result == first_success
    assert stored.reports == 3


def test_summary_counts_jobs_by_their_kept_status(store: ResultStore) -> None:
    store.record(a_result("a", JobStatus.SUCCEEDED))
    store.record(a_result("b", JobStatus.FAILED))
    store.record(a_result("b", JobStatus.FAILED))
    store.record(a_result("c", JobStatus.REJECTED))
    store.record(a_result("d", JobStatus.TIMED_OUT))
    store.record(a_result("d", JobStatus.SUCCEEDED))

    assert store.summary() == {
        "jobs": 4,
        "reports": 6,
        "duplicates": 2,
        "by_status": {"SUCCEEDED": 2, "FAILED": 1, "TIMED_OUT": 0, "REJECTED": 1},
    }
    assert store.job_ids() == ["a", "b", "c", "d"]


def test_an_empty_store_sums_to_zero_and_knows_no_job(store: ResultStore) -> None:
    assert store.summary() == {
        "jobs": 0,
        "reports": 0,
        "duplicates": 0,
        "by_status": {"SUCCEEDED": 0, "FAILED": 0, "TIMED_OUT": 0, "REJECTED": 0},
    }
    assert store.get("job-1") is None
    assert store.job_ids() == []


def test_results_outlive_the_store_that_wrote_them(tmp_path: Path) -> None:
    with ResultStore(tmp_path / "core.db") as writer:
        writer.record(a_result())
        writer.record(a_result())

    with ResultStore(tmp_path / "core.db", create=False) as reader:
        assert reader.summary()["duplicates"] == 1
        assert reader.job_ids() == ["job-1"]


def test_concurrent_reports_from_threads_are_each_counted_once(store: ResultStore) -> None:
    def report_all() -> None:
        for index in range(50):
            store.record(a_result(f"job-{index:02d}"))

    threads = [threading.Thread(target=report_all) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    summary = store.summary()
    assert (summary["jobs"], summary["reports"], summary["duplicates"]) == (50, 200, 150)


def test_opening_a_missing_database_without_create_names_the_path(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere.db"

    with pytest.raises(ResultStoreError, match=r"no results database at .*nowhere\.db"):
        ResultStore(missing, create=False)
    assert not missing.exists()


def test_a_file_that_is_no_database_is_refused_clearly(tmp_path: Path) -> None:
    not_a_database = tmp_path / "notes.txt"
    not_a_database.write_text("these are not the results you are looking for\n" * 100)

    with pytest.raises(ResultStoreError, match=r"cannot open results database .*notes\.txt"):
        ResultStore(not_a_database)


def test_close_is_idempotent(tmp_path: Path) -> None:
    store = ResultStore(tmp_path / "core.db")
    store.close()
    store.close()


def test_format_summary_prints_one_aligned_line_per_count() -> None:
    text = format_summary(
        {
            "jobs": 4,
            "reports": 6,
            "duplicates": 2,
            "by_status": {"SUCCEEDED": 2, "FAILED": 1, "TIMED_OUT": 0, "REJECTED": 1},
        }
    )

    assert text.splitlines() == [
        "jobs               4",
        "reports            6",
        "duplicates         2",
        "SUCCEEDED          2",
        "FAILED             1",
        "TIMED_OUT          0",
        "REJECTED           1",
    ]
