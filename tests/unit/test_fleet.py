"""The console's picture of the fleet, from status records alone: who is live, what each
holds, how much is left, what was done and what failed lately."""

from __future__ import annotations

import orjson
import pytest

from jobworker.adapters.observability.status_record import (
    StatusReadings,
    StatusRecords,
    UnreadableStatus,
    WorkerIdentity,
    read_status,
)
from jobworker.application.fleet import Fleet
from jobworker.domain.fleet import GroupPartition, OwnedPartition, WorkerState, WorkerStatus

T0 = 1_800_000_000_000


def status(worker_id: str, at_ms: int, interval_s: float = 5.0, **fields: object) -> WorkerStatus:
    return WorkerStatus(worker_id=worker_id, at_ms=at_ms, interval_s=interval_s, **fields)  # type: ignore[arg-type]


def test_a_worker_is_live_until_two_of_its_intervals_pass_without_a_status() -> None:
    fleet = Fleet()
    fleet.saw("w1", status("w1", T0, interval_s=2.0))
    assert [v.state for v in fleet.workers(T0 + 4_500)] == [WorkerState.LIVE]
    assert [v.state for v in fleet.workers(T0 + 4_501)] == [WorkerState.STALE]
    # Within three intervals of its last status, as a killed worker must show.
    assert fleet.workers(T0 + 6_000)[0].state == WorkerState.STALE


def test_a_new_status_makes_a_stale_worker_live_again_and_a_tombstone_removes_it() -> None:
    fleet = Fleet()
    fleet.saw("w1", status("w1", T0))
    fleet.saw("w1", status("w1", T0 + 60_000))
    assert fleet.workers(T0 + 61_000)[0].state == WorkerState.LIVE
    fleet.saw("w1", None)
    assert fleet.workers(T0 + 61_000) == []


def test_an_older_record_read_after_a_newer_one_changes_nothing() -> None:
    fleet = Fleet()
    fleet.saw("w1", status("w1", T0 + 10_000, jobs_in_flight=3))
    fleet.saw("w1", status("w1", T0, jobs_in_flight=99))
    assert fleet.workers(T0 + 10_000)[0].status.jobs_in_flight == 3


def test_live_workers_come_first_and_one_silent_for_an_hour_is_no_longer_listed() -> None:
    fleet = Fleet()
    fleet.saw("b-stale", status("b-stale", T0))
    fleet.saw("c-gone", status("c-gone", T0 - 3_600_001 + 100_000))
    fleet.saw("z-live", status("z-live", T0 + 100_000))
    listed = fleet.workers(T0 + 100_000)
    assert [(v.status.worker_id, v.state) for v in listed] == [
        ("z-live", WorkerState.LIVE),
        ("b-stale", WorkerState.STALE),
    ]


def test_throughput_counts_what_each_worker_finished_between_its_records() -> None:
    fleet = Fleet()
    for at, done in ((0, 0), (10_000, 50), (20_000, 150)):
        fleet.saw("w1", status("w1", T0 + at, finished={"SUCCEEDED": done}))
    for at, done in ((10_000, 7), (20_000, 2)):  # restarted in between: counts from zero
        fleet.saw("w2", status("w2", T0 + at, finished={"SUCCEEDED": done, "FAILED": 0}))
    buckets = fleet.throughput(T0 + 20_000, window_s=30, bucket_s=10)
    assert [b.jobs for b in buckets] == [0, 50, 102]
    assert buckets[-1].jobs_per_s == pytest.approx(10.2)


def test_failures_by_kind_recent_and_in_all_of_each_live_worker_s_life() -> None:
    fleet = Fleet()
    fleet.saw("w1", status("w1", T0, finished={"FAILED": 4}, errors={"dlq_records": 1}))
    fleet.saw("w1", status("w1", T0 + 400_000, finished={"FAILED": 10}, errors={"dlq_records": 1}))
    fleet.saw("dead", status("dead", T0, finished={"FAILED": 1000}))
    failures = {f.kind: (f.recent, f.total) for f in fleet.failures(T0 + 400_000, window_s=300)}
    assert failures["jobs FAILED"] == (6, 10)
    assert failures["dlq records"] == (0, 1)
    assert failures["jobs TIMED_OUT"] == (0, 0)


def test_a_partition_shows_its_live_holder_s_backlog_else_the_group_commit_s() -> None:
    fleet = Fleet()
    owned = OwnedPartition("jobs", 0, backlog=7, lag=40)
    fleet.saw("w1", status("w1", T0, partitions=(owned,)))
    fleet.saw("w2", status("w2", T0 - 60_000, partitions=(OwnedPartition("jobs", 1, 1, 1),)))
    group = [
        GroupPartition("jobs", 0, start=0, end=100, committed=60, finished_beyond=30),
        GroupPartition("jobs", 1, start=0, end=100, committed=60, finished_beyond=30),
        GroupPartition("jobs", 2, start=20, end=50, committed=None),
    ]
    rows = {r.partition: r for r in fleet.partitions(T0 + 1_000, group)}
    assert (rows[0].holder, rows[0].backlog, rows[0].lag, rows[0].source) == ("w1", 7, 40, "worker")
    # w2 went stale: nobody holds partition 1, the commit says 40 behind, 30 of them done.
    assert (rows[1].holder, rows[1].backlog, rows[1].lag, rows[1].source) == (
        None,
        10,
        40,
        "commit",
    )
    # Never committed: the group starts at the partition's first offset.
    assert (rows[2].backlog, rows[2].lag) == (30, 30)


def test_a_partition_held_by_a_live_worker_is_shown_when_the_group_s_offsets_are_unknown() -> None:
    fleet = Fleet()
    fleet.saw("w1", status("w1", T0, partitions=(OwnedPartition("jobs", 3, 5, 6),)))
    [row] = fleet.partitions(T0, [])
    assert (row.partition, row.holder, row.backlog, row.committed) == (3, "w1", 5, None)


def test_the_status_record_a_worker_writes_is_the_one_the_console_reads() -> None:
    readings = StatusReadings(
        jobs_in_flight=lambda: 4,
        jobs_waiting=lambda: 2,
        jobs_waiting_to_retry=lambda: 1,
        results_waiting=lambda: 0,
        finished=lambda: {"SUCCEEDED": 10},
        errors=lambda: {"dlq_records": 2},
        partitions=lambda: [{"topic": "jobs", "partition": 1, "backlog": 3, "lag": None}],
        breakers=lambda: {"api.example.com": "open"},
        limits=lambda: {"SLEEP": {"running": 1, "parked": 0}},
    )
    records = StatusRecords(WorkerIdentity("w1", "1.2.3", "host-a", 42), readings, 5.0)
    read = read_status(orjson.dumps(records.next()))
    assert (read.worker_id, read.host, read.pid, read.version) == ("w1", "host-a", 42, "1.2.3")
    assert read.partitions == (OwnedPartition("jobs", 1, 3, None),)
    assert read.finished == {"SUCCEEDED": 10}
    assert read.breakers == {"api.example.com": "open"}
    assert read.limits == {"SLEEP": {"running": 1, "parked": 0}}
    assert (read.jobs_in_flight, read.jobs_waiting, read.interval_s) == (4, 2, 5.0)


@pytest.mark.parametrize(
    ("value", "why"),
    [
        (b"not json", "not JSON"),
        (b"[1]", "not a JSON object"),
        (b'{"v": 2, "worker_id": "w"}', "version 2"),
        (b'{"v": 1, "worker_id": "w", "at_ms": "soon", "interval_s": 5}', "wrong type"),
    ],
)
def test_a_status_record_this_console_cannot_read_says_why(value: bytes, why: str) -> None:
    with pytest.raises(UnreadableStatus, match=why):
        read_status(value)


def test_fields_a_newer_worker_adds_are_ignored() -> None:
    value = b'{"v": 1, "worker_id": "w", "at_ms": 5, "interval_s": 1, "new_field": [1]}'
    assert read_status(value).worker_id == "w"
