"""Results appended to a JSON Lines file, one result object per line."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import IO

from jobworker.domain.errors import ResultNotDelivered
from jobworker.domain.model import JobResult


def result_to_record(result: JobResult) -> dict[str, object]:
    """``result`` as a JSON-ready dict: its fields in order, the status as its name."""
    # Field by field: ``dataclasses.asdict`` deep-copies every value, and costs more
    # than writing the line. A test checks that no field of JobResult is left out.
    return {
        "job_id": result.job_id,
        "type": result.type,
        "status": result.status.value,
        "output": result.output,
        "error": result.error,
        "attempts": result.attempts,
        "started_at_unix_ms": result.started_at_unix_ms,
        "finished_at_unix_ms": result.finished_at_unix_ms,
        "worker_id": result.worker_id,
        "metadata": dict(result.metadata),
    }


# json.dumps builds a new encoder on every call that passes an option.
_encode = json.JSONEncoder(ensure_ascii=False).encode


def _line(record: dict[str, object]) -> str:
    return _encode(record) + "\n"


class FileResultSink:
    """Appends each result as one JSON line and flushes it before ``send`` returns.

    ``path`` ``-`` writes to stdout. Each line is written whole (a batch's lines in one
    write call), so a reader never sees half a result even while the worker is running.
    """

    def __init__(self, path: Path | str) -> None:
        self._path = str(path)
        self._stream: IO[str] | None = None

    def _open(self) -> IO[str]:
        if self._stream is None:
            if self._path == "-":
                import sys  # noqa: PLC0415 - only the stdout case needs it

                self._stream = sys.stdout
            else:
                target = Path(self._path)
                target.parent.mkdir(parents=True, exist_ok=True)
                self._stream = target.open("a", encoding="utf-8")
        return self._stream

    def send(self, result: JobResult) -> None:
        self.write_record(result_to_record(result))

    def send_batch(self, results: Sequence[JobResult]) -> None:
        # One write and one flush for the batch: a flush per line is a system call each.
        self._write("".join(_line(result_to_record(result)) for result in results))

    def write_record(self, record: dict[str, object]) -> None:
        """Append ``record`` as one JSON line and flush it."""
        self._write(_line(record))

    def _write(self, lines: str) -> None:
        try:
            stream = self._open()
            stream.write(lines)
            stream.flush()
        except OSError as error:
            raise ResultNotDelivered(f"cannot write results file {self._path}: {error}") from error

    def close(self) -> None:
        if self._stream is not None and self._path != "-":
            self._stream.close()
        self._stream = None
