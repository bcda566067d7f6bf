"""JSON Lines files as a job source and a result sink, for local runs and the demo."""

from jobworker.adapters.file.sink import FileResultSink
from jobworker.adapters.file.source import FileJobSource, JobFileError, parse_job_line

__all__ = ["FileJobSource", "FileResultSink", "JobFileError", "parse_job_line"]
