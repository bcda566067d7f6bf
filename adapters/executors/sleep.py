"""SLEEP: the mock job. Sleeps cooperatively, optionally fails; for tests and benchmarks.

Payload ``{"ms": 250, "fail": false, "output": "...", "retryable_failures": 0}``:

- ``ms`` (required) integer milliseconds to sleep, 0..``max_ms``;
- ``fail`` ends the job FAILED after the sleep;
- ``output`` is echoed back in the result;
- ``retryable_failures`` N fails the first N attempts of each job id retryably, so a
  retried job can be seen to succeed.

Output: ``{"slept_ms": 250, "output": "..."}``.
"""

from __future__ import annotations

import json
from collections import OrderedDict

import gevent

from jobworker.adapters.executors.payload_fields import (
    load_object,
    optional_bool,
    optional_int,
    optional_str,
    required_int,
)
from jobworker.domain.errors import JobFailed, RetryableJobError
from jobworker.domain.model import Job

ONE_HOUR_MS = 3_600_000
_FIELDS = frozenset(("ms", "fail", "output", "retryable_failures"))
_MAX_RETRYABLE_FAILURES = 100
# Echoed into the result, which the runner caps at its output limit (1 MiB by
# default); this only stops a benchmark's echo from growing past any use.
_MAX_OUTPUT_CHARS = 65_536


class SleepExecutor:
    """Runs SLEEP jobs. Remembers attempt counts of at most ``max_tracked_jobs`` job ids."""

    def __init__(self, max_ms: int = ONE_HOUR_MS, max_tracked_jobs: int = 10_000) -> None:
        self.max_ms = max_ms
        self.max_tracked_jobs = max_tracked_jobs
        self._failed_attempts: OrderedDict[str, int] = OrderedDict()

    def execute(self, job: Job) -> str:
        fields = load_object(job.payload, _FIELDS)
        ms = required_int(fields, "ms", minimum=0, maximum=self.max_ms)
        fail = optional_bool(fields, "fail", default=False)
        output = optional_str(fields, "output", default="", max_length=_MAX_OUTPUT_CHARS)
        retryable_failures = optional_int(
            fields, "retryable_failures", default=0, minimum=0, maximum=_MAX_RETRYABLE_FAILURES
        )
        if ms:  # a zero sleep is no sleep: the pool slot yields to the hub on its own
            gevent.sleep(ms / 1000)
        if self._should_fail_retryably(job.id, retryable_failures):
            raise RetryableJobError(
                f"SLEEP job asked to fail retryably {retryable_failures} time(s) "
                f"(this was failure {self._failed_attempts[job.id]})"
            )
        if fail:
            raise JobFailed("SLEEP job asked to fail (fail=true)")
        # What json.dumps({"slept_ms": ms, "output": output}) gives, without building and
        # walking a dict per job: ``ms`` is an int, only ``output`` needs encoding.
        echoed = json.dumps(output) if output else '""'
        return f'{{"slept_ms": {ms}, "output": {echoed}}}'

    def _should_fail_retryably(self, job_id: str, retryable_failures: int) -> bool:
        failures = self._failed_attempts.pop(job_id, 0)
        if failures >= retryable_failures:
            return False
        self._failed_attempts[job_id] = failures + 1
        while len(self._failed_attempts) > self.max_tracked_jobs:
            self._failed_attempts.popitem(last=False)
        return True
