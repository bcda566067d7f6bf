"""The CLI's commands. Imported only after gevent has patched the process (see cli.py)."""

from __future__ import annotations

import argparse
import json
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import structlog

from adapters.file.source import JobFileError, job_to_record, parse_job_line
from domain.errors import ConfigurationError, JobWorkerError
from domain.model import Job
from entrypoints.logging_setup import configure_logging
from entrypoints.settings import Settings, settings_table

log = structlog.get_logger("jobworker")

EXIT_USAGE = 2


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="jobworker",
        description="Background jobs from Kafka, run on gevent, reported to Core over gRPC.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = commands.add_parser("run", help="run the worker (settings from the environment/.env)")
    run.add_argument("--env-file", type=Path, help="read settings from this file, not ./.env")
    run.add_argument("--jobs", metavar="FILE", help="take jobs from a JSON Lines file")
    run.add_argument("--results", metavar="FILE", help="write results to a JSON Lines file")
    run.add_argument(
        "--processes",
        metavar="N",
        help="run N worker processes in one consumer group (WORKER_PROCESSES; default 1)",
    )
    run.set_defaults(handler=cmd_run)

    core = commands.add_parser("core", help="run the reference Core service (SQLite)")
    core.add_argument("--address", default="127.0.0.1:50051", help="host:port to listen on")
    core.add_argument("--db", type=Path, default=Path("core.db"), help="SQLite file")
    core.add_argument("--max-workers", type=int, default=16, help="concurrent RPC handlers")
    core.add_argument("--grace", type=float, default=5.0, help="seconds to drain on SIGTERM")
    core.add_argument("--log-format", choices=["json", "text"], default="text")
    core.set_defaults(handler=cmd_core)

    summary = commands.add_parser("core-summary", help="summarise what a Core database holds")
    summary.add_argument("--db", type=Path, default=Path("core.db"), help="SQLite file")
    summary.add_argument("--json", action="store_true", help="print JSON")
    summary.set_defaults(handler=cmd_core_summary)

    submit = commands.add_parser("submit", help="submit jobs to Kafka or to a jobs file")
    what = submit.add_mutually_exclusive_group(required=True)
    what.add_argument("--type", help="job type of one job (SLEEP, HTTP, IMAGE_RESIZE, …)")
    what.add_argument("--file", metavar="JSONL", help="jobs from a JSON Lines file (`-`: stdin)")
    submit.add_argument("--payload", default="{}", help="the job's payload (JSON)")
    submit.add_argument("--id", help="job id (default: a new UUID)")
    submit.add_argument("--count", type=int, default=1, help="submit N copies, ids suffixed")
    submit.add_argument("--timeout-ms", type=int, default=0)
    submit.add_argument("--meta", action="append", default=[], metavar="KEY=VALUE")
    submit.add_argument("--to-file", metavar="JSONL", help="append to a jobs file, not Kafka")
    submit.add_argument("--env-file", type=Path, help="settings file for Kafka (default ./.env)")
    submit.set_defaults(handler=cmd_submit)

    show = commands.add_parser("settings", help="print every setting with its default")
    show.set_defaults(handler=lambda _args: print(settings_table()) or 0)
    return parser


def run_cli(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.handler(args))
    except ConfigurationError as error:
        print(f"jobworker: configuration error: {error}", file=sys.stderr)
    except JobWorkerError as error:
        print(f"jobworker: {error}", file=sys.stderr)
    except KeyboardInterrupt:
        return 130
    return EXIT_USAGE


# -- run -----------------------------------------------------------------------------


def cmd_run(args: argparse.Namespace) -> int:
    overrides: dict[str, str] = {}
    if args.jobs:
        overrides.update(JOB_SOURCE="file", JOB_FILE=args.jobs)
    if args.results:
        overrides.update(RESULT_SINK="file", RESULT_FILE=args.results)
    if args.processes is not None:
        overrides["WORKER_PROCESSES"] = args.processes
    settings = Settings.load(dotenv=args.env_file, environ=overrides)
    settings.validate_for_run()
    configure_logging(settings.get("LOG_FORMAT"), settings.get("LOG_LEVEL"))
    if settings.get("WORKER_PROCESSES") > 1:
        from entrypoints.supervisor import run_supervisor  # noqa: PLC0415

        return run_supervisor(settings, sys.argv[1:])

    from entrypoints.worker import run_worker  # noqa: PLC0415 - after logging is set up

    return run_worker(settings)


# -- core ----------------------------------------------------------------------------


def cmd_core(args: argparse.Namespace) -> int:
    configure_logging(args.log_format)
    from adapters.core.process import READY_LINE_PREFIX  # noqa: PLC0415
    from adapters.core.server import serve_core  # noqa: PLC0415 - grpc after patching

    def announce(port: int) -> None:
        # The one line CoreProcess (tests, demo) waits for: Core accepts calls now.
        print(f"{READY_LINE_PREFIX}{port}", flush=True)

    serve_core(
        args.address, args.db, max_workers=args.max_workers, grace_s=args.grace, on_started=announce
    )
    return 0


def cmd_core_summary(args: argparse.Namespace) -> int:
    from adapters.core.store import ResultStore, format_summary  # noqa: PLC0415

    with ResultStore(args.db, create=False) as store:
        summary = store.summary()
    print(json.dumps(summary) if args.json else format_summary(summary))
    return 0


# -- submit --------------------------------------------------------------------------


def cmd_submit(args: argparse.Namespace) -> int:
    jobs = _jobs_from_file(args.file) if args.file else _jobs_from_flags(args)
    total = None if args.file else args.count
    if args.to_file:
        sent = _submit_to_file(jobs, Path(args.to_file))
        print(f"wrote {sent} job(s) to {args.to_file}", file=sys.stderr)
        return 0
    settings = Settings.load(dotenv=args.env_file)
    from entrypoints.submit_kafka import submit_to_kafka  # noqa: PLC0415

    sent = submit_to_kafka(settings, jobs, total)
    print(f"submitted {sent} job(s) to {settings.get('KAFKA_TOPIC')}", file=sys.stderr)
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
    except JobWorkerError as error:
        raise JobWorkerError(f"{error}; {count} job(s) before it were written") from None
    finally:
        if out is not None:
            out.close()
    return count


def _now_ms() -> int:
    import time  # noqa: PLC0415

    return time.time_ns() // 1_000_000
