"""Results appended to a JSON Lines file, one result object per line."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from pathlib import Path
from typing import IO

from domain.errors import ResultNotDelivered
from domain.model import JobResult


def result_to_record(result: JobResult) -> dict[str, object]:
    record = dataclasses.asdict(result)
    record["status"] = result.status.value
    record["metadata"] = dict(result.metadata)
    return record


class FileResultSink:
    """Appends each result as one JSON line and flushes it before ``send`` returns.

    ``path`` ``-`` writes to stdout. Each line is written whole (one write call), so a
    reader never sees half a result even while the worker is running.
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
        for result in results:
            self.write_record(result_to_record(result))

    def write_record(self, record: dict[str, object]) -> None:
        """Append ``record`` as one JSON line and flush it."""
        try:
            stream = self._open()
            stream.write(json.dumps(record, ensure_ascii=False) + "\n")
            stream.flush()
        except OSError as error:
            raise ResultNotDelivered(f"cannot write results file {self._path}: {error}") from error

    def close(self) -> None:
        if self._stream is not None and self._path != "-":
            self._stream.close()
        self._stream = None
