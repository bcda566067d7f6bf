"""Results as Core keeps them: one row per job in SQLite, however often it was reported."""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import TypedDict

from jobworker.domain.errors import JobWorkerError
from jobworker.domain.model import JobResult, JobStatus

_SCHEMA = """
CREATE TABLE IF NOT EXISTS results (
    job_id            TEXT PRIMARY KEY,
    type              TEXT    NOT NULL,
    status            TEXT    NOT NULL,
    output            TEXT    NOT NULL,
    error             TEXT    NOT NULL,
    attempts          INTEGER NOT NULL,
    started_at        INTEGER NOT NULL,  -- unix ms, as the worker reported it
    finished_at       INTEGER NOT NULL,
    worker_id         TEXT    NOT NULL,
    metadata_json     TEXT    NOT NULL,
    first_received_at INTEGER NOT NULL,  -- unix ms, Core's clock
    last_received_at  INTEGER NOT NULL,
    reports           INTEGER NOT NULL   -- deliveries of this job's result, duplicates included
)
"""

_RESULT_COLUMNS = (
    "type, status, output, error, attempts, started_at, finished_at, worker_id, metadata_json"
)


class ResultStoreError(JobWorkerError):
    """The results database cannot be opened or used; the message says which and why."""


@dataclass(frozen=True, slots=True)
class StoredResult:
    """A job's kept result and how Core received it."""

    result: JobResult
    reports: int
    first_received_at_unix_ms: int
    last_received_at_unix_ms: int


class ResultSummary(TypedDict):
    """Counts over the whole store. ``duplicates`` is ``reports - jobs``."""

    jobs: int
    reports: int
    duplicates: int
    by_status: dict[str, int]


def _replaces(kept_status: str) -> bool:
    """Whether a repeated report of a job replaces the result kept for it.

    Repeats come from at-least-once delivery: a worker retrying a call whose answer was
    lost (the same result again), or another worker re-running a redelivered job (maybe
    with another outcome). A success is final: the job's effects happened and its output
    is what readers may already have seen, so the first SUCCEEDED result is kept for
    good. Until then the latest report wins, so a re-run that succeeded replaces an
    earlier failure.
    """
    return kept_status != JobStatus.SUCCEEDED


class ResultStore:
    """Results in one SQLite file (WAL mode), idempotent on job id.

    One connection, its use serialized by a lock: safe to share between threads and
    greenlets. Each call is short, so a lock is enough. Other processes may read the
    file while Core writes (WAL).
    """

    def __init__(
        self, path: str | Path, *, create: bool = True, clock: Callable[[], float] = time.time
    ) -> None:
        """Open (and with ``create``, create when missing) the database at ``path``.

        Raises ``ResultStoreError`` when the file cannot be opened or is not a results
        database, or, without ``create``, does not exist.
        """
        self._path = Path(path)
        self._clock = clock
        self._lock = threading.Lock()
        if not create and not self._path.is_file():
            raise ResultStoreError(f"no results database at {self._path}")
        try:
            self._connection = sqlite3.connect(
                self._path, check_same_thread=False, isolation_level=None
            )
            self._connection.row_factory = sqlite3.Row
            self._connection.execute("PRAGMA journal_mode=WAL")
            # WAL with synchronous=NORMAL survives a process crash; only an OS crash can
            # lose the last commits, and then the workers' unacked jobs are redelivered.
            self._connection.execute("PRAGMA synchronous=NORMAL")
            self._connection.execute("PRAGMA busy_timeout=5000")
            self._connection.execute(_SCHEMA)
        except sqlite3.Error as exc:
            raise ResultStoreError(f"cannot open results database {self._path}: {exc}") from exc
        self._closed = False

    def record(self, result: JobResult) -> bool:
        """Store one report of ``result``; True when it is the first for its job.

        A repeated report adds no row: it counts in ``reports`` and replaces the kept
        result only while that is not SUCCEEDED (see ``_replaces``). Raises
        ``sqlite3.Error`` when the database fails (full disk, I/O error).
        """
        return self.record_all([result])[0]

    def record_all(self, results: Sequence[JobResult]) -> list[bool]:
        """Store reports of ``results`` in one transaction: all of them, or none.

        Per result, True when it is the first for its job (as ``record``). A job id
        twice in ``results`` counts as two reports. Raises ``sqlite3.Error`` (nothing
        stored) when the database fails.
        """
        now_ms = int(self._clock() * 1000)
        with self._lock, self._transaction():
            return [self._record_one(result, now_ms) for result in results]

    def _record_one(self, result: JobResult, now_ms: int) -> bool:
        values = (
            result.type,
            result.status.value,
            result.output,
            result.error,
            result.attempts,
            result.started_at_unix_ms,
            result.finished_at_unix_ms,
            result.worker_id,
            json.dumps(dict(result.metadata), sort_keys=True),
        )
        kept = self._connection.execute(
            "SELECT status FROM results WHERE job_id = ?", (result.job_id,)
        ).fetchone()
        if kept is None:
            self._connection.execute(
                f"INSERT INTO results (job_id, {_RESULT_COLUMNS}, first_received_at,"  # noqa: S608 - constant column list
                " last_received_at, reports) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 1)",
                (result.job_id, *values, now_ms, now_ms),
            )
            return True
        if _replaces(kept["status"]):
            self._connection.execute(
                "UPDATE results SET type = ?, status = ?, output = ?, error = ?, attempts = ?,"
                " started_at = ?, finished_at = ?, worker_id = ?, metadata_json = ?"
                " WHERE job_id = ?",
                (*values, result.job_id),
            )
        self._connection.execute(
            "UPDATE results SET reports = reports + 1, last_received_at = ? WHERE job_id = ?",
            (now_ms, result.job_id),
        )
        return False

    def get(self, job_id: str) -> StoredResult | None:
        """The kept result of ``job_id``, or None when Core never received one."""
        with self._lock:
            row = self._connection.execute(
                f"SELECT {_RESULT_COLUMNS}, first_received_at, last_received_at, reports"  # noqa: S608
                " FROM results WHERE job_id = ?",
                (job_id,),
            ).fetchone()
        if row is None:
            return None
        return StoredResult(
            result=JobResult(
                job_id=job_id,
                type=row["type"],
                status=JobStatus(row["status"]),
                output=row["output"],
                error=row["error"],
                attempts=row["attempts"],
                started_at_unix_ms=row["started_at"],
                finished_at_unix_ms=row["finished_at"],
                worker_id=row["worker_id"],
                metadata=json.loads(row["metadata_json"]),
            ),
            reports=row["reports"],
            first_received_at_unix_ms=row["first_received_at"],
            last_received_at_unix_ms=row["last_received_at"],
        )

    def job_ids(self) -> list[str]:
        """Ids of every job Core has a result for, sorted."""
        with self._lock:
            rows = self._connection.execute("SELECT job_id FROM results ORDER BY job_id").fetchall()
        return [row["job_id"] for row in rows]

    def summary(self) -> ResultSummary:
        """Jobs and reports counted, per status too (every status present, zeros included)."""
        with self._lock:
            rows = self._connection.execute(
                "SELECT status, COUNT(*), SUM(reports) FROM results GROUP BY status"
            ).fetchall()
        by_status = {status.value: 0 for status in JobStatus}
        jobs = reports = 0
        for status, status_jobs, status_reports in rows:
            by_status[status] = status_jobs
            jobs += status_jobs
            reports += status_reports
        return ResultSummary(
            jobs=jobs, reports=reports, duplicates=reports - jobs, by_status=by_status
        )

    def close(self) -> None:
        """Close the database. Idempotent."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._connection.close()

    def __enter__(self) -> ResultStore:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def _transaction(self) -> sqlite3.Connection:
        # isolation_level=None leaves transactions to us; the connection as a context
        # manager commits, or rolls back on error, what BEGIN started.
        self._connection.execute("BEGIN IMMEDIATE")
        return self._connection


def format_summary(summary: ResultSummary) -> str:
    """The summary as the ``jobworker core summary`` command prints it."""
    rows = [
        ("jobs", summary["jobs"]),
        ("reports", summary["reports"]),
        ("duplicates", summary["duplicates"]),
        *summary["by_status"].items(),
    ]
    width = max(len(name) for name, _ in rows)
    return "\n".join(f"{name:<{width}}  {count:>8}" for name, count in rows)
