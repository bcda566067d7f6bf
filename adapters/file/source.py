"""Jobs from a JSON Lines file: one job object per line.

    {"id": "job-1", "type": "SLEEP", "payload": {"ms": 100}, "timeout_ms": 5000,
     "metadata": {"tenant": "acme"}}

``payload`` may be a JSON object (stored as its JSON text) or a string. A malformed
line (not JSON, not UTF-8, no id, a field of the wrong kind) is not fatal: it is logged
with its line number, counted, written to the dead-letter file if one is given (see
``dead_letters``), and passed over. A line with an id and a payload or type the engine
cannot run still becomes a job, which the engine REJECTs with the reason.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import IO, Any

import gevent
import structlog
from gevent.fileobject import FileObjectPosix

from jobworker.adapters.file.dead_letters import DeadLetterNotWritten, JobLineDeadLetters
from jobworker.domain.errors import JobWorkerError
from jobworker.domain.model import Job

log = structlog.get_logger(__name__)


class JobFileError(JobWorkerError):
    """A line of a jobs file that cannot become a job."""


def parse_job_line(line: str, where: str = "") -> Job:
    """One JSON Lines record → a ``Job``. Raises ``JobFileError`` saying what is wrong."""
    prefix = f"{where}: " if where else ""
    try:
        record = json.loads(line)
    except json.JSONDecodeError as error:
        raise JobFileError(
            f"{prefix}not valid JSON ({error.msg} at column {error.colno})"
        ) from None
    if not isinstance(record, dict):
        raise JobFileError(f"{prefix}a job must be a JSON object, got {type(record).__name__}")
    job_id = record.get("id")
    if not isinstance(job_id, str) or not job_id.strip():
        raise JobFileError(f"{prefix}'id' must be a non-empty string")
    job_type = record.get("type")
    if not isinstance(job_type, str) or not job_type:
        raise JobFileError(f"{prefix}job {job_id}: 'type' must be a non-empty string")
    payload = record.get("payload", "")
    if not isinstance(payload, str):
        payload = json.dumps(payload)
    timeout_ms = record.get("timeout_ms", 0)
    if not isinstance(timeout_ms, int) or isinstance(timeout_ms, bool) or timeout_ms < 0:
        raise JobFileError(f"{prefix}job {job_id}: 'timeout_ms' must be a non-negative integer")
    metadata = record.get("metadata", {})
    if not isinstance(metadata, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()
    ):
        raise JobFileError(f"{prefix}job {job_id}: 'metadata' must map strings to strings")
    trace_headers = record.get("trace_headers", {})
    if not isinstance(trace_headers, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in trace_headers.items()
    ):
        raise JobFileError(f"{prefix}job {job_id}: 'trace_headers' must map strings to strings")
    created = record.get("created_at_unix_ms", 0)
    if not isinstance(created, int) or isinstance(created, bool):
        raise JobFileError(f"{prefix}job {job_id}: 'created_at_unix_ms' must be an integer")
    return Job(
        id=job_id,
        type=job_type,
        payload=payload,
        timeout_ms=timeout_ms,
        metadata=metadata,
        created_at_unix_ms=created,
        receipt=where or None,
        trace_headers={k.lower(): v for k, v in trace_headers.items()},
    )


class FileJobSource:
    """Reads a JSON Lines jobs file once, front to back. ``path`` ``-`` reads stdin.

    Acks are counted but have nowhere to go: a file has no offsets, so a run that is
    interrupted starts again from the top (use a Kafka source for redelivery).

    ``malformed`` counts the lines that hold no job, ``skipped`` says why each was
    passed over; with ``dead_letters`` each is also written there (those it could not
    write are counted in ``dead_letters_lost``, and logged whole).
    """

    def __init__(self, path: Path | str, dead_letters: JobLineDeadLetters | None = None) -> None:
        self._path = str(path)
        self._stream: IO[str] | None = None
        self._line_number = 0
        self._eof = False
        self._one_line_per_fetch = False
        self._dead_letters = dead_letters
        self.skipped: list[str] = []
        self.dead_letters_lost = 0
        self.acked = 0
        if self._path != "-":
            # Now, not at the first fetch: a file that cannot be read is the user's input
            # to fix (raised as JobFileError), not a transient failure to retry for ever.
            self._open()

    def _open(self) -> IO[str]:
        if self._stream is None:
            if self._path == "-":
                import sys  # noqa: PLC0415 - only the stdin case needs it

                # A pipe's readline would block the whole event loop: read it through
                # gevent, so jobs, results and signals go on while input is awaited.
                self._stream = FileObjectPosix(
                    sys.stdin.fileno(), "r", close=False, encoding="utf-8", errors=_BAD_BYTES
                )
                self._one_line_per_fetch = True
            else:
                try:
                    self._stream = Path(self._path).open(encoding="utf-8", errors=_BAD_BYTES)  # noqa: SIM115
                except OSError as error:
                    raise JobFileError(
                        f"cannot read jobs file {self._path}: {error.strerror}"
                    ) from None
        return self._stream

    def fetch(self, max_jobs: int, timeout_s: float) -> Sequence[Job]:
        if max_jobs <= 0 or self._eof:
            gevent.sleep(min(timeout_s, 0.05))
            return []
        stream = self._open()
        jobs: list[Job] = []
        # From a pipe, what has arrived is handed on at once, not held back until
        # ``max_jobs`` lines came.
        wanted = 1 if self._one_line_per_fetch else max_jobs
        while len(jobs) < wanted:
            line = stream.readline()
            if not line:
                self._eof = True
                break
            self._line_number += 1
            if not line.strip():
                continue
            where = f"{self._path}:{self._line_number}"
            try:
                if bad_byte := _first_undecodable(line):
                    raise JobFileError(f"{where}: not valid UTF-8 ({bad_byte})")
                jobs.append(parse_job_line(line, where))
            except JobFileError as error:
                self._set_aside(line, where, str(error).removeprefix(f"{where}: "))
        return jobs

    @property
    def malformed(self) -> int:
        """Lines read that held no job."""
        return len(self.skipped)

    @property
    def path(self) -> str:
        return self._path

    @property
    def dead_letter_file(self) -> str | None:
        return None if self._dead_letters is None else self._dead_letters.path

    def _set_aside(self, line: str, where: str, reason: str) -> None:
        self.skipped.append(f"{where}: {reason}")
        if self._dead_letters is None:
            log.warning("malformed job line: skipping it", line=where, reason=reason)
            return
        try:
            self._dead_letters.write(line, self._path, self._line_number, reason)
        except DeadLetterNotWritten as error:
            self.dead_letters_lost += 1
            # Then the log is its only record: the line itself goes there.
            log.error(
                "malformed job line, and the dead-letter file cannot be written",
                line=where,
                reason=reason,
                error=str(error),
                text=line.rstrip("\r\n"),
            )
            return
        log.warning(
            "malformed job line: written to the dead-letter file",
            line=where,
            reason=reason,
            dead_letter_file=self._dead_letters.path,
        )

    def ack(self, job: Job) -> None:
        self.acked += 1

    def exhausted(self) -> bool:
        return self._eof

    def close(self) -> None:
        if self._stream is not None and self._path != "-":
            self._stream.close()
        self._stream = None
        if self._dead_letters is not None:
            self._dead_letters.close()


# A byte that is not UTF-8 spoils its line, not the whole read: it is kept as a
# surrogate, found by _first_undecodable, and written back as it was to the dead letter.
_BAD_BYTES = "surrogateescape"


def _first_undecodable(line: str) -> str | None:
    """``byte 0xff at column 7`` for a line read with surrogateescape, else None."""
    if line.isascii():
        return None
    try:
        line.encode("utf-8")
    except UnicodeEncodeError as error:
        byte = ord(line[error.start]) - 0xDC00
        return f"byte 0x{byte:02x} at column {error.start + 1}"
    return None


def job_to_record(job: Job) -> dict[str, Any]:
    """The JSON Lines record for ``job`` (what ``jobworker submit --to-file`` writes)."""
    try:
        payload: Any = json.loads(job.payload) if job.payload else ""
    except json.JSONDecodeError:
        payload = job.payload
    record: dict[str, Any] = {"id": job.id, "type": job.type, "payload": payload}
    if job.timeout_ms:
        record["timeout_ms"] = job.timeout_ms
    if job.metadata:
        record["metadata"] = dict(job.metadata)
    if job.created_at_unix_ms:
        record["created_at_unix_ms"] = job.created_at_unix_ms
    if job.trace_headers:
        record["trace_headers"] = dict(job.trace_headers)
    return record
