"""Lines of a jobs file that hold no job, kept in a JSON Lines file beside it.

What the Kafka source does with a poison record (its dead-letter topic, the
``x-dlq-*`` headers), for a file: one line per malformed jobs-file line, saying why it
is dead and where it came from, so that nothing read is lost without a trace.
"""

from __future__ import annotations

import base64
import time
from pathlib import Path
from typing import Any

from jobworker.adapters.file.json_lines import AppendedJsonLines, json_line
from jobworker.domain.errors import JobWorkerError

# Beside ``<RESULT_FILE>.refused.jsonl`` (results Core refused), as Kafka's
# ``<KAFKA_TOPIC>.dlq`` is beside the jobs topic.
SUFFIX = ".dlq.jsonl"
# Jobs read from stdin have no file to sit beside: this one, in the working directory.
STDIN_DEAD_LETTERS = "stdin.dlq.jsonl"


def dead_letter_path(job_file: str) -> str:
    """Where the malformed lines of ``job_file`` (``-``: stdin) go."""
    return STDIN_DEAD_LETTERS if job_file == "-" else f"{job_file}{SUFFIX}"


class DeadLetterNotWritten(JobWorkerError):  # noqa: N818 - reads as what happened
    """The dead-letter file could not be written."""


def dead_letter_record(
    raw: str, source: str, line_number: int, reason: str, worker_id: str, at_unix_ms: int
) -> dict[str, Any]:
    """One dead letter: the line as read (``line_base64`` if it is not UTF-8), and the
    fields of the Kafka dead letter's headers (``x-dlq-reason``, ``-source-*``, ``-worker``)."""
    text = raw.rstrip("\r\n")
    record: dict[str, Any] = {
        "reason": reason,
        "source_file": source,
        "source_line": line_number,
        "worker": worker_id,
        "dead_lettered_at_unix_ms": at_unix_ms,
    }
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:  # read with surrogateescape: the bytes are still there
        raw_bytes = text.encode("utf-8", "surrogateescape")
        record["line_base64"] = base64.b64encode(raw_bytes).decode("ascii")
    else:
        record["line"] = text
    return record


class JobLineDeadLetters:
    """Appends dead letters to ``path``, each flushed before ``write`` returns.

    The file is made on the first malformed line: a clean run leaves none behind.
    """

    def __init__(self, path: Path | str, worker_id: str = "") -> None:
        self._lines = AppendedJsonLines(path)
        self._worker_id = worker_id

    @property
    def path(self) -> str:
        return self._lines.path

    def write(self, raw: str, source: str, line_number: int, reason: str) -> None:
        record = dead_letter_record(
            raw, source, line_number, reason, self._worker_id, time.time_ns() // 1_000_000
        )
        try:
            self._lines.append(json_line(record))
        except OSError as error:
            raise DeadLetterNotWritten(
                f"cannot write dead-letter file {self.path}: {error.strerror}"
            ) from None

    def close(self) -> None:
        self._lines.close()
