"""JSON Lines files as a job source and a result sink, for local runs and the demo."""

from adapters.file.sink import FileResultSink
from adapters.file.source import FileJobSource, JobFileError, parse_job_line

__all__ = ["FileJobSource", "FileResultSink", "JobFileError", "parse_job_line"]
