"""The CLI's commands. Imported only after gevent has patched the process (see cli.py)."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any, NoReturn

import structlog

from jobworker import __version__
from jobworker.adapters.file.source import JobFileError
from jobworker.domain.errors import (
    AccessRefused,
    ConfigurationError,
    JobWorkerError,
    SourceFailed,
)
from jobworker.entrypoints.dlq import add_dlq_commands
from jobworker.entrypoints.exit_codes import (
    EXIT_BROKEN_PIPE,
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    EXIT_UNAVAILABLE,
    EXIT_USAGE,
    ServiceUnavailable,
    UsageError,
)
from jobworker.entrypoints.logging_setup import configure_logging, say_after_logs
from jobworker.entrypoints.settings import (
    ConfigurationErrors,
    Setting,
    Settings,
    settings_table,
)
from jobworker.entrypoints.submit import cmd_submit
from jobworker.entrypoints.unknown_variables import log_unknown_variables

log = structlog.get_logger("jobworker")

# Options that set one setting each: a flag wins over the environment and ``.env``.
# Adding one is adding a line; its help is the setting's own, naming the variable.
SETTING_FLAGS: list[tuple[tuple[str, ...], Setting[Any], str]] = [
    (("-c", "--concurrency"), Settings.worker_pool_size, "N"),
    (("-l", "--log-level"), Settings.log_level, "LEVEL"),
    (("--log-format",), Settings.log_format, "FORMAT"),
    (("--processes",), Settings.worker_processes, "N"),
]
LOG_FLAGS = SETTING_FLAGS[1:3]
WEB_FLAGS: list[tuple[tuple[str, ...], Setting[Any], str]] = [
    (("--host",), Settings.web_host, "HOST"),
    (("--port",), Settings.web_port, "PORT"),
]


class _Parser(argparse.ArgumentParser):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        # No abbreviated flags: `--proc 2` must not pass for `--processes 2` (the
        # supervisor strips the full flag from its children's arguments), and a flag
        # added later must not change what an old abbreviation meant.
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> NoReturn:
        # One line, like every other error (argparse prints the whole usage first).
        self.exit(EXIT_USAGE, f"{self.prog}: {message} (see {self.prog} --help)\n")


def _add_setting_flags(parser: argparse.ArgumentParser, flags: list[Any]) -> None:
    for names, entry, metavar in flags:
        parser.add_argument(
            *names,
            dest=entry.attribute,
            metavar=metavar,
            help=f"{entry.help} [{entry.name}, default {entry.default_text()}]",
        )


def _add_run_inputs(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--env-file", type=Path, help="read settings from this file (default: ./.env)"
    )
    parser.add_argument(
        "--jobs",
        metavar="FILE",
        help="take jobs from a JSON Lines file [JOB_SOURCE=file, JOB_FILE]",
    )
    parser.add_argument(
        "--results",
        metavar="FILE",
        help="write results to a JSON Lines file [RESULT_SINK=file, RESULT_FILE]",
    )
    _add_setting_flags(parser, SETTING_FLAGS)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="jobworker",
        description="Background jobs from Kafka, run on gevent, reported to Core over gRPC.",
        epilog="Exit status: 0 clean stop, 1 failure, 2 usage or configuration error,"
        " 65 a jobs file had lines that held no job (<file>.dlq.jsonl),"
        " 69 Kafka or Core unreachable at start (CORE_START_TIMEOUT).",
    )
    parser.add_argument("-V", "--version", action="version", version=f"jobworker {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = commands.add_parser(
        "run",
        help="run the worker (settings from flags, the environment, .env)",
        description="Run the worker: take jobs from Kafka (or a jobs file), run them and"
        " report each result to Core (or a results file) until SIGTERM or SIGINT. Settings"
        " come from the flags, the environment and ./.env: a flag wins over its variable,"
        " which wins over .env. `jobworker settings` shows them.",
    )
    _add_run_inputs(run)
    run.set_defaults(handler=cmd_run)

    core = commands.add_parser(
        "core",
        help="run the reference Core service (SQLite)",
        description="Run the reference Core: the gRPC service workers report results to"
        " (GRPC_SERVER_ADDRESS), keeping each in a SQLite file, for the demo, tests and"
        " local runs. It prints `core listening on port N` once it takes calls, and stops"
        " on SIGTERM or SIGINT.",
    )
    core.add_argument(
        "--address",
        default="127.0.0.1:50051",
        help="host:port to listen on; port 0 takes a free one (default: %(default)s)",
    )
    core.add_argument(
        "--db", type=Path, default=Path("core.db"), help="SQLite file (default: %(default)s)"
    )
    core.add_argument(
        "--max-workers",
        type=int,
        default=16,
        help="concurrent RPC handlers (default: %(default)s)",
    )
    core.add_argument(
        "--grace",
        type=float,
        default=5.0,
        metavar="SECONDS",
        help="on SIGTERM, seconds to let calls in flight finish (default: %(default)s)",
    )
    _add_setting_flags(core, LOG_FLAGS)
    core.set_defaults(handler=cmd_core)

    summary = commands.add_parser(
        "core-summary",
        help="summarise what a Core database holds",
        description="Print what a Core database holds: jobs, reports, duplicates (a job"
        " reported more than once) and jobs by status. Exit 2 if the file is not one.",
    )
    summary.add_argument(
        "--db", type=Path, default=Path("core.db"), help="SQLite file (default: %(default)s)"
    )
    summary.add_argument("--json", action="store_true", help="print JSON, not a table")
    summary.set_defaults(handler=cmd_core_summary)

    submit = commands.add_parser(
        "submit",
        help="submit jobs to Kafka or to a jobs file",
        description="Submit jobs to KAFKA_TOPIC on KAFKA_BROKERS (read from the environment"
        " and .env, as `run` reads them), or append them to a jobs file (--to-file): one job"
        " (--type and --payload), --count copies of it, or every line of a JSON Lines file"
        " (--file).",
    )
    what = submit.add_mutually_exclusive_group(required=True)
    what.add_argument("--type", help="job type of one job (SLEEP, HTTP, IMAGE_RESIZE, …)")
    what.add_argument("--file", metavar="JSONL", help="jobs from a JSON Lines file (`-`: stdin)")
    submit.add_argument(
        "--payload", default="{}", help="the job's payload (JSON) (default: %(default)s)"
    )
    submit.add_argument("--id", help="job id (default: a new UUID)")
    submit.add_argument(
        "--count",
        type=int,
        default=1,
        metavar="N",
        help="submit N copies, ids suffixed -0, -1 … (default: %(default)s)",
    )
    submit.add_argument(
        "--timeout-ms",
        type=int,
        default=0,
        metavar="MS",
        help="the job's own deadline in milliseconds; 0: the worker's MAX_JOB_TIMEOUT"
        " (default: %(default)s)",
    )
    submit.add_argument(
        "--meta",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a metadata entry of the job; repeat for more",
    )
    submit.add_argument("--to-file", metavar="JSONL", help="append to a jobs file, not Kafka")
    submit.add_argument("--env-file", type=Path, help="settings file for Kafka (default: ./.env)")
    submit.set_defaults(handler=cmd_submit)

    add_dlq_commands(commands)

    web = commands.add_parser(
        "web",
        help="serve the fleet console: workers, partitions, throughput, dead letters",
        description="Serve a web console of the fleet, read from Kafka alone: the workers'"
        " status records (KAFKA_STATUS_TOPIC), the group's offsets in KAFKA_TOPIC and the"
        " dead-letter topics. Read-only unless --allow-actions, which adds replay buttons"
        " that ask for WEB_ACTION_TOKEN. Listens on WEB_HOST:WEB_PORT (loopback by"
        " default) until SIGTERM or SIGINT.",
    )
    web.add_argument("--env-file", type=Path, help="settings file (default: ./.env)")
    _add_setting_flags(web, WEB_FLAGS)
    web.add_argument(
        "--allow-actions",
        action="store_true",
        help="add replay buttons; each asks for the token WEB_ACTION_TOKEN",
    )
    web.set_defaults(handler=cmd_web)

    show = commands.add_parser(
        "settings",
        help="print the settings in force, where each comes from, and check them",
        description="Print every setting in force (secrets masked) with its source: default,"
        " .env, environment, flag or derived. Then every problem, one line each: an error"
        " (exit 2, as `run` would refuse to start) or a warning (a variable that looks like"
        " a setting but is none; alone, exit 0).",
    )
    _add_run_inputs(show)
    show.add_argument(
        "--defaults", action="store_true", help="print the defaults as a Markdown table (README)"
    )
    show.set_defaults(handler=cmd_settings)
    return parser


def run_cli(argv: list[str]) -> int:  # noqa: PLR0911 - one exit status per outcome
    args = build_parser().parse_args(argv)
    try:
        return int(args.handler(args))
    except ConfigurationError as error:
        for each in error.errors if isinstance(error, ConfigurationErrors) else [error]:
            say_after_logs(f"jobworker: configuration error: {each}")
        return EXIT_USAGE
    except ServiceUnavailable as error:
        say_after_logs(f"jobworker: {error}")
        return EXIT_UNAVAILABLE
    except (UsageError, JobFileError, SourceFailed, AccessRefused) as error:
        # AccessRefused, SourceFailed: the broker refused what the settings ask
        # (credentials, ACLs, group settings) or KAFKA_UNREADABLE_BATCHES=fail stopped
        # it: change input, not retry.
        say_after_logs(f"jobworker: {error}")
        return EXIT_USAGE
    except JobWorkerError as error:
        say_after_logs(f"jobworker: {error}")
        return EXIT_FAILED
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        # The reader went away (``jobworker settings | head``): stop quietly, as a
        # command killed by SIGPIPE would, and keep the interpreter's final flush of
        # stdout from raising again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_BROKEN_PIPE


# -- run -----------------------------------------------------------------------------


def load_settings(args: argparse.Namespace, flags: list[Any] = SETTING_FLAGS) -> Settings:
    """The settings of ``.env``, the environment and the flags given (which win)."""
    given: dict[str, tuple[str, str]] = {}
    if getattr(args, "jobs", None) is not None:
        given.update(JOB_SOURCE=("--jobs", "file"), JOB_FILE=("--jobs", args.jobs))
    if getattr(args, "results", None) is not None:
        given.update(RESULT_SINK=("--results", "file"), RESULT_FILE=("--results", args.results))
    for names, entry, _metavar in flags:
        text = getattr(args, entry.attribute, None)
        if text is not None:
            given[entry.name] = (names[-1], text)
    return Settings.load(dotenv=getattr(args, "env_file", None), flags=given)


def cmd_run(args: argparse.Namespace) -> int:
    settings = load_settings(args)
    try:
        settings.validate_for_run()
    except ConfigurationError:
        _say_unknown(settings)  # a misspelt name may be why a setting is missing
        raise
    configure_logging(settings.log_format, settings.log_level)
    log_unknown_variables(settings.unknown)
    if settings.worker_processes > 1:
        from jobworker.entrypoints.supervisor import run_supervisor  # noqa: PLC0415

        return run_supervisor(settings, sys.argv[1:])

    from jobworker.entrypoints.worker import run_worker  # noqa: PLC0415 - after logging is set up

    return run_worker(settings)


def cmd_web(args: argparse.Namespace) -> int:
    from jobworker.entrypoints.web import serve_console  # noqa: PLC0415 - only this command's

    settings = load_settings(args, WEB_FLAGS)
    settings.validate_for_web(actions=args.allow_actions)
    configure_logging(settings.log_format, settings.log_level)
    log_unknown_variables(settings.unknown)
    return serve_console(settings, allow_actions=args.allow_actions)


def cmd_settings(args: argparse.Namespace) -> int:
    if args.defaults:
        print(settings_table())
        return 0
    settings = load_settings(args)
    problems = settings.problems()
    rows = settings.in_force()
    width = max(len(name) for name, _, _ in rows)
    value_width = min(40, max(len(value) for _, value, _ in rows))
    for name, value, source in rows:
        print(f"{name:<{width}}  {value:<{value_width}}  {source}")
    sys.stdout.flush()  # the table first, then what is wrong with it
    _say_unknown(settings)
    for problem in problems:
        print(f"jobworker: configuration error: {problem}", file=sys.stderr)
    return EXIT_USAGE if problems else 0


def _say_unknown(settings: Settings) -> None:
    """Variables like settings, as lines of the CLI's own (before logging is set up)."""
    for unknown in settings.unknown:
        print(f"jobworker: warning: {unknown}", file=sys.stderr)


# -- core ----------------------------------------------------------------------------


def cmd_core(args: argparse.Namespace) -> int:
    settings = load_settings(args, LOG_FLAGS)
    configure_logging(settings.log_format, settings.log_level)
    from jobworker.adapters.core.process import READY_LINE_PREFIX  # noqa: PLC0415
    from jobworker.adapters.core.server import CoreServerError, serve_core  # noqa: PLC0415 - grpc late
    from jobworker.adapters.core.store import ResultStoreError  # noqa: PLC0415

    def announce(port: int) -> None:
        # The one line CoreProcess (tests, demo) waits for: Core accepts calls now.
        print(f"{READY_LINE_PREFIX}{port}", flush=True)

    try:
        serve_core(
            args.address,
            args.db,
            max_workers=args.max_workers,
            grace_s=args.grace,
            on_started=announce,
        )
    except (CoreServerError, ResultStoreError) as error:
        raise UsageError(str(error)) from None  # --address or --db cannot be used
    return 0


def cmd_core_summary(args: argparse.Namespace) -> int:
    from jobworker.adapters.core.store import ResultStore, ResultStoreError, format_summary  # noqa: PLC0415

    try:
        with ResultStore(args.db, create=False) as store:
            summary = store.summary()
    except ResultStoreError as error:
        raise UsageError(str(error)) from None
    print(json.dumps(summary) if args.json else format_summary(summary))
    return 0
