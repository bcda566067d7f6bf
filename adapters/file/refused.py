"""Results the sink refused for good, appended to a JSON Lines file (file-fed runs)."""

from __future__ import annotations

from pathlib import Path

from jobworker.adapters.file.sink import FileResultSink, result_to_record
from jobworker.domain.errors import ResultRefused
from jobworker.domain.model import Job, JobResult


class FileRefusedResultStore:
    """The ``RefusedResultStore`` port over a JSON Lines file.

    One line per refused result: the result's fields, as in a results file, plus
    ``refusal`` (the sink's code, details and the whole reason). Written and flushed
    before ``store`` returns; an unwritable file raises ``ResultNotDelivered``.
    """

    def __init__(self, path: Path | str) -> None:
        self.path = str(path)
        self._lines = FileResultSink(path)

    def store(self, job: Job, result: JobResult, refusal: ResultRefused) -> None:
        record = result_to_record(result)
        record["refusal"] = {
            "code": refusal.code,
            "details": refusal.details,
            "reason": str(refusal),
        }
        self._lines.write_record(record)

    def close(self) -> None:
        self._lines.close()
