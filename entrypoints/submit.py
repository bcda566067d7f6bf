"""``jobworker submit``: jobs from flags or a JSON Lines file, to Kafka or to a file."""

from __future__ import annotations

import argparse
import json
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

from jobworker.adapters.file.source import JobFileError, job_to_record, parse_job_line
from jobworker.domain.errors import ConfigurationError, JobWorkerError
from jobworker.domain.model import Job
from jobworker.entrypoints.exit_codes import UsageError
from jobworker.entrypoints.logging_setup import configure_logging
from jobworker.entrypoints.settings import Settings
from jobworker.entrypoints.unknown_variables import log_unknown_variables


def cmd_submit(args: argparse.Namespace) -> int:
    jobs = _jobs_from_file(args.file) if args.file else _jobs_from_flags(args)
    total = None if args.file else args.count
    if args.to_file:
        sent = _submit_to_file(jobs, Path(args.to_file))
        print(f"wrote {sent} job(s) to {args.to_file}", file=sys.stderr)
        return 0
    settings = Settings.load(dotenv=args.env_file)
    # What it waits for and why that failed are said as `run` says them.
    configure_logging(settings.log_format, settings.log_level)
    log_unknown_variables(
        settings.unknown
    )  # KAFKA_TOPC=orders would send them to the default topic
    from jobworker.entrypoints.submit_kafka import submit_to_kafka  # noqa: PLC0415

    sent = submit_to_kafka(settings, jobs, total)
    print(f"submitted {sent} job(s) to {settings.kafka_topic}", file=sys.stderr)
    return 0


def _jobs_from_flags(args: argparse.Namespace) -> Iterator[Job]:
    try:
        json.loads(args.payload)
    except json.JSONDecodeError as error:
        raise ConfigurationError("--payload", f"is not valid JSON ({error.msg})") from None
    metadata = {}
    for item in args.meta:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigurationError("--meta", f"{item!r} is not KEY=VALUE")
        metadata[key] = value
    if args.count < 1:
        raise ConfigurationError("--count", "must be at least 1")
    if args.timeout_ms < 0:
        raise ConfigurationError("--timeout-ms", "must not be negative")
    base = args.id or str(uuid.uuid4())
    for index in range(args.count):
        yield Job(
            id=base if args.count == 1 else f"{base}-{index}",
            type=args.type.upper(),
            payload=args.payload,
            timeout_ms=args.timeout_ms,
            metadata=metadata,
            created_at_unix_ms=_now_ms(),
        )


def _jobs_from_file(path: str) -> Iterator[Job]:
    stream = sys.stdin if path == "-" else _open_jobs_file(path)
    with stream:
        for number, line in enumerate(stream, start=1):
            if line.strip():
                job = parse_job_line(line, f"{path}:{number}")
                yield Job(
                    id=job.id,
                    type=job.type,
                    payload=job.payload,
                    timeout_ms=job.timeout_ms,
                    metadata=job.metadata,
                    created_at_unix_ms=job.created_at_unix_ms or _now_ms(),
                )


def _open_jobs_file(path: str):  # type: ignore[no-untyped-def]
    try:
        return Path(path).open(encoding="utf-8")
    except OSError as error:
        raise JobFileError(f"cannot read jobs file {path}: {error.strerror}") from None


def _submit_to_file(jobs: Iterator[Job], target: Path) -> int:
    count = 0
    out = None
    try:
        for job in jobs:  # parse before opening: a bad first job leaves no file behind
            if out is None:
                out = target.open("a", encoding="utf-8")
            out.write(json.dumps(job_to_record(job)) + "\n")
            count += 1
    except ConfigurationError:
        raise  # a flag: nothing was written
    except JobWorkerError as error:  # a bad line of the input file
        raise UsageError(f"{error}; {count} job(s) before it were written") from None
    finally:
        if out is not None:
            out.close()
    return count


def _now_ms() -> int:
    return time.time_ns() // 1_000_000
