"""Results appended to a JSON Lines file, one result object per line."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from jobworker.adapters.file.json_lines import AppendedJsonLines, json_line
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


class FileResultSink:
    """Appends each result as one JSON line and flushes it before ``send`` returns.

    ``path`` ``-`` writes to stdout. Each line is written whole (a batch's lines in one
    write call), so a reader never sees half a result even while the worker is running.
    """

    def __init__(self, path: Path | str) -> None:
        self._lines = AppendedJsonLines(path)

    def send(self, result: JobResult) -> None:
        self.write_record(result_to_record(result))

    def send_batch(self, results: Sequence[JobResult]) -> None:
        # One write and one flush for the batch: a flush per line is a system call each.
        self._write("".join(json_line(result_to_record(result)) for result in results))

    def write_record(self, record: dict[str, object]) -> None:
        """Append ``record`` as one JSON line and flush it."""
        self._write(json_line(record))

    def _write(self, lines: str) -> None:
        try:
            self._lines.append(lines)
        except OSError as error:
            raise ResultNotDelivered(
                f"cannot write results file {self._lines.path}: {error}"
            ) from error

    def close(self) -> None:
        self._lines.close()
