"""The exit statuses of ``jobworker`` (README, "Exit status"), and the errors behind them.

0 a clean stop; 1 any other failure; 2 usage or configuration (the input cannot be used,
nothing to retry until it is changed); 65, sysexits' EX_DATAERR, a jobs file run that
ran and reported every job it could read, but had lines that held no job (kept in its
dead-letter file); 69, sysexits' EX_UNAVAILABLE, a required service cannot be reached at
start: the input may be right, and a supervisor may retry later.
"""

from __future__ import annotations

from jobworker.domain.errors import JobWorkerError

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_MALFORMED_INPUT = 65
EXIT_UNAVAILABLE = 69
EXIT_INTERRUPTED = 130
# The reader of our output went away: 128 + SIGPIPE, what a shell shows for `git log | head`.
EXIT_BROKEN_PIPE = 141


class UsageError(JobWorkerError):
    """What the user gave cannot be used (a file, an address); printed as is, exit 2."""


class ServiceUnavailable(JobWorkerError):  # noqa: N818 - reads as the state it is
    """A service the command needs (Kafka, Core) cannot be reached at start; exit 69."""
