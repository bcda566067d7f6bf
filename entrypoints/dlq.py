"""``jobworker dlq ls | show | replay``: what the worker set aside, looked into and redriven.

The operations are the application's ``DeadLetterService``; this module reads the
flags, opens the service on the chosen topic, and prints.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import signal
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import gevent
import structlog
from gevent.event import Event

from jobworker.adapters.kafka.republisher import ReplayTargetMissing
from jobworker.application.dead_letter_service import (
    DeadLetterService,
    ReplayOptions,
    ReplaySummary,
)
from jobworker.domain.dead_letters import DeadLetterTopicMissing, Letter, LetterFilter
from jobworker.domain.errors import AccessRefused, ConfigurationError, JobWorkerError
from jobworker.domain.ports import ResultSink
from jobworker.entrypoints.config_values import parse_duration
from jobworker.entrypoints.container import Container
from jobworker.entrypoints.dlq_output import print_document, print_summary, print_table, summary_row
from jobworker.entrypoints.exit_codes import (
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    EXIT_USAGE,
    ServiceUnavailable,
    UsageError,
)
from jobworker.entrypoints.logging_setup import configure_logging, flush_logs
from jobworker.entrypoints.settings import Settings
from jobworker.entrypoints.unknown_variables import log_unknown_variables

log = structlog.get_logger("jobworker.dlq")

# Tries of one call to Core before replay gives up on it (about a minute of backoff):
# a replay must end, and what it sent is checkpointed either way.
CORE_ATTEMPTS = 12


def add_dlq_commands(commands: Any) -> None:
    dlq = commands.add_parser(
        "dlq",
        help="list, show and replay what the worker set aside in the dead-letter topics",
        description="Look into the dead-letter topics (KAFKA_DLQ_TOPIC: poison records and"
        " unreadable batches; KAFKA_RESULTS_DLQ_TOPIC with --results: results Core refused)"
        " and send their letters back: jobs to their topic, results to Core.",
    )
    actions = dlq.add_subparsers(
        dest="dlq_command", required=True, metavar="ACTION", help="ls, show or replay"
    )
    ls = actions.add_parser(
        "ls",
        help="list letters, then counts by reason",
        description="List the letters of a dead-letter topic, partition by partition, then"
        " their counts by reason. Reads without joining a group; commits nothing.",
    )
    _add_topic(ls)
    _add_filters(ls)
    ls.add_argument("--json", action="store_true", help="one JSON object per letter, no table")
    ls.set_defaults(handler=cmd_ls)

    show = actions.add_parser(
        "show",
        help="print one letter: every header and its decoded value, as JSON",
        description="Print a letter as JSON: every header, its decoded JobTask or JobResult"
        " (an unreadable batch: its records, if its codec can be read now, or why not) and"
        " its size. LETTER is PARTITION:OFFSET as `ls` shows it (OFFSET alone for a topic"
        " of one partition); --job-id prints every letter of that job.",
    )
    _add_topic(show)
    show.add_argument("letter", nargs="?", metavar="LETTER", help="PARTITION:OFFSET")
    show.add_argument("--job-id", help="every letter of this job id instead")
    show.set_defaults(handler=cmd_show)

    replay = actions.add_parser(
        "replay",
        help="send letters back: jobs to their topic, results to Core",
        description="Send the letters the filters take back where they belong: a job letter"
        " to its source topic (or --to) with its key and headers plus provenance headers"
        " (x-replay-*), an unreadable batch record by record if it can be read now, a"
        " result to Core. Never deletes a letter. A checkpoint (consumer group"
        " <KAFKA_GROUP_ID>.dlq-replay) records every letter sent, so a second replay goes on"
        " where the first stopped and never sends one twice; Ctrl-C stops after the letters"
        " in flight. Exit 0 when every letter taken was sent or skipped on purpose, 1 when"
        " Core refused some again, 130 when interrupted.",
    )
    _add_topic(replay)
    _add_filters(replay)
    replay.add_argument("--to", metavar="TOPIC", help="send job letters to TOPIC instead")
    replay.add_argument(
        "--rate", type=_rate, metavar="N/s", help="send at most N records per second"
    )
    replay.add_argument(
        "--dry-run", action="store_true", help="send nothing: say what would go where"
    )
    replay.add_argument("--yes", action="store_true", help="do not ask for confirmation")
    replay.add_argument(
        "--from-start",
        action="store_true",
        help="ignore the checkpoint: take letters sent before too",
    )
    replay.add_argument(
        "--force",
        action="store_true",
        help="send letters replayed DLQ_MAX_REPLAYS times already too",
    )
    replay.set_defaults(handler=cmd_replay)


def _add_topic(parser: argparse.ArgumentParser) -> None:
    which = parser.add_mutually_exclusive_group()
    which.add_argument(
        "--results",
        action="store_true",
        help="the results dead-letter topic (KAFKA_RESULTS_DLQ_TOPIC) instead of KAFKA_DLQ_TOPIC",
    )
    which.add_argument("--topic", help="this dead-letter topic instead of KAFKA_DLQ_TOPIC")
    parser.add_argument("--env-file", type=Path, help="settings file (default: ./.env)")


def _add_filters(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--since",
        type=_moment,
        metavar="TIME",
        help="letters from TIME on (ISO date-time, UTC unless it says; or a duration ago: 2h)",
    )
    parser.add_argument("--until", type=_moment, metavar="TIME", help="letters before TIME")
    parser.add_argument("--reason", help="letters whose reason contains this text (any case)")
    parser.add_argument(
        "--partition",
        type=_non_negative,
        metavar="N",
        help="letters of this partition of the dead-letter topic",
    )
    parser.add_argument("--type", dest="job_type", metavar="TYPE", help="letters of this job type")
    parser.add_argument("--job-id", help="letters of this job id")
    parser.add_argument("--limit", type=_non_negative, metavar="N", help="at most N letters")


# -- flag values ---------------------------------------------------------------------


def _moment(text: str) -> int:
    """A time as epoch milliseconds: ISO 8601 (UTC unless it gives an offset) or a
    duration before now (``90m``)."""
    try:
        ago = parse_duration(text)
    except ValueError:
        pass
    else:
        return int((time.time() - ago) * 1000)
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is neither an ISO date-time (2026-12-07T10:00) nor a duration (2h)"
        ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return int(moment.timestamp() * 1000)


def _rate(text: str) -> float:
    number = text.strip().removesuffix("/s")
    try:
        rate = float(number)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a rate (100 or 100/s)") from None
    if not rate > 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be greater than zero")
    return rate


def _non_negative(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text!r} must not be negative")
    return value


def _filter(args: argparse.Namespace) -> LetterFilter:
    return LetterFilter(
        reason=args.reason,
        partition=args.partition,
        job_type=args.job_type,
        job_id=args.job_id,
        since_ms=args.since,
        until_ms=args.until,
        limit=args.limit,
    )


# -- the commands --------------------------------------------------------------------


def cmd_ls(args: argparse.Namespace) -> int:
    with _opened(args) as (_settings, service):
        letters = service.letters(_filter(args))
        if args.json:
            import json  # noqa: PLC0415 - only here

            for letter in letters:
                print(json.dumps(summary_row(letter), ensure_ascii=False))
        else:
            print_table(letters, service.topic)
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    if (args.letter is None) == (args.job_id is None):
        raise UsageError("name one letter: PARTITION:OFFSET, or --job-id ID")
    with _opened(args) as (_settings, service):
        if args.job_id is not None:
            found = list(service.letters(LetterFilter(job_id=args.job_id)))
            what = f"of job {args.job_id!r}"
        else:
            partition, offset = _letter_place(args.letter, service)
            letter = service.letter_at(partition, offset)
            found = [] if letter is None else [letter]
            what = f"at {partition}:{offset}"
        for letter in found:
            print_document(letter)
    if not found:
        flush_logs()
        print(f"jobworker: no letter {what} in {service.topic}", file=sys.stderr)
        return EXIT_FAILED
    return 0


def _letter_place(text: str, service: DeadLetterService) -> tuple[int, int]:
    head, sep, tail = text.partition(":")
    try:
        if sep:
            return int(head), int(tail)
        offset = int(head)
    except ValueError:
        raise UsageError(f"{text!r} is not PARTITION:OFFSET (as `dlq ls` shows)") from None
    partitions = service.partitions()
    if len(partitions) != 1:
        raise UsageError(
            f"{service.topic} has {len(partitions)} partitions: name the letter as"
            f" PARTITION:OFFSET (as `dlq ls` shows)"
        )
    return partitions[0], offset


def cmd_replay(args: argparse.Namespace) -> int:
    with _opened(args, replay=True) as (settings, service):
        options = ReplayOptions(
            max_replays=settings.dlq_max_replays,
            to_topic=args.to,
            rate_per_s=args.rate,
            dry_run=args.dry_run,
            from_start=args.from_start,
            force=args.force,
        )
        which = _filter(args)
        if not args.dry_run and not args.yes:
            _confirm(service, which, options)
        stop = _StopOnSignal()
        stop.install()
        with _ReplayLines(dry_run=args.dry_run) as lines:
            summary = service.replay(which, options, lines, should_stop=stop.requested)
        print_summary(summary, service.topic)
    return _replay_status(summary)


def _confirm(service: DeadLetterService, which: LetterFilter, options: ReplayOptions) -> None:
    """Count what would go, and ask; without a terminal, ask for --yes instead."""
    plan = service.replay(which, _dry(options), _Quiet())
    if plan.stopped_by is not None:
        raise plan.stopped_by
    if plan.replayed_total == 0:
        return  # nothing to send: the run says so
    targets = ", ".join(f"{count} to {target}" for target, count in plan.targets.most_common())
    question = f"replay {plan.replayed_total} letter(s) of {service.topic}: {targets}"
    if not sys.stdin.isatty():
        raise UsageError(f"{question} — pass --yes to do it (--dry-run lists them)")
    flush_logs()
    answer = input(f"{question}. Go on? [y/N] ")
    if answer.strip().lower() not in {"y", "yes"}:
        raise _DeclinedError


def _dry(options: ReplayOptions) -> ReplayOptions:
    return dataclasses.replace(options, dry_run=True, rate_per_s=None)


class _DeclinedError(JobWorkerError):
    """The user answered no: nothing was sent."""


def _replay_status(summary: ReplaySummary) -> int:
    error = summary.stopped_by
    if error is not None:
        flush_logs()
        print(f"jobworker: replay stopped: {error}", file=sys.stderr)
        if isinstance(error, ServiceUnavailable):
            return 69
        usage = (AccessRefused, ReplayTargetMissing, ConfigurationError)
        return EXIT_USAGE if isinstance(error, usage) else EXIT_FAILED
    if summary.interrupted:
        return EXIT_INTERRUPTED
    return EXIT_FAILED if summary.refused else 0


# -- opening the service -------------------------------------------------------------


@contextmanager
def _opened(
    args: argparse.Namespace, *, replay: bool = False
) -> Iterator[tuple[Settings, DeadLetterService]]:
    """The settings, and the service on the topic the flags choose; closed after."""
    settings = Settings.load(dotenv=args.env_file)
    settings.validate_for_dead_letters(replay=replay)
    configure_logging(settings.log_format, settings.log_level)
    log_unknown_variables(settings.unknown)
    if args.topic:
        topic, variable = args.topic, "--topic"
    elif args.results:
        topic, variable = settings.kafka_results_dlq_topic, "KAFKA_RESULTS_DLQ_TOPIC"
    else:
        topic, variable = settings.kafka_dlq_topic, "KAFKA_DLQ_TOPIC"
    container = replay_container(settings)
    service = None
    try:
        service = container.dead_letters(
            topic=topic, variable=variable, sink=core_opener(settings, container)
        )
        yield settings, service
    except DeadLetterTopicMissing:
        raise UsageError(
            f"Kafka has no topic {topic!r} ({variable}): nothing was dead-lettered there"
            " yet, or the name is not the one the workers use"
        ) from None
    except _DeclinedError:
        raise UsageError("nothing replayed") from None
    finally:
        if service is not None:
            service.close()
        container.shutdown_resources()


def replay_container(settings: Settings) -> Container:
    """The container replay is made from: a call to Core is tried ``CORE_ATTEMPTS``
    times, so a replay always ends."""
    container = Container(settings=settings)
    container.core_max_attempts.override(CORE_ATTEMPTS)
    return container


def core_opener(settings: Settings, container: Container) -> Callable[[], ResultSink]:
    """Opens Core for result replays, once it answers (CORE_START_TIMEOUT), else raises
    ``ServiceUnavailable``; gRPC is loaded only then."""

    def core() -> ResultSink:
        from jobworker.adapters.grpc.runtime import init_grpc_for_gevent  # noqa: PLC0415
        from jobworker.entrypoints.worker import wait_for_core  # noqa: PLC0415 - grpc late

        init_grpc_for_gevent(concurrent_calls=1)
        wait_for_core(settings, container, Event())
        sink: ResultSink = container.core_sink()
        return sink

    return core


# -- what replay shows while it runs --------------------------------------------------


class _ReplayLines:
    """A progress bar on a terminal (stderr), and one line per letter left behind; in a
    dry run, one line per letter saying where it would go (stdout)."""

    def __init__(self, *, dry_run: bool) -> None:
        # Imported here: every command loads this module, only replay draws a bar.
        from tqdm import tqdm  # noqa: PLC0415

        self._dry_run = dry_run
        self._bar = tqdm(unit="letter", file=sys.stderr, disable=None if not dry_run else True)

    def __enter__(self) -> _ReplayLines:
        return self

    def __exit__(self, *_: object) -> None:
        self._bar.close()

    def sent(self, letter: Letter, target: str) -> None:
        if self._dry_run:
            print(f"would send {letter.where} ({_named(letter)}) to {target}")
        else:
            self._bar.update()

    def left(self, letter: Letter, why: str, *, refused: bool) -> None:
        verb = "refused again" if refused else "skipped"
        line = f"{verb} {letter.where} ({_named(letter)}): {why}"
        flush_logs()
        if self._bar.disable:
            print(line, file=sys.stderr)
        else:
            self._bar.write(line, file=sys.stderr)


class _Quiet:
    def sent(self, letter: Letter, target: str) -> None:
        pass

    def left(self, letter: Letter, why: str, *, refused: bool) -> None:
        pass


def _named(letter: Letter) -> str:
    if letter.job_id:
        return f"{letter.kind} {letter.job_id}"
    return str(letter.kind)


class _StopOnSignal:
    """First SIGINT/SIGTERM: stop after the letters in flight. Second: exit at once."""

    def __init__(self) -> None:
        self._count = 0

    def install(self) -> None:
        for signum in (signal.SIGINT, signal.SIGTERM):
            gevent.signal_handler(signum, self._received, signum)

    def requested(self) -> bool:
        return self._count > 0

    def _received(self, signum: int) -> None:
        self._count += 1
        if self._count == 1:
            log.info(
                "stopping after the letters in flight; the checkpoint will cover exactly"
                " what was sent",
                signal=signal.Signals(signum).name,
            )
            return
        flush_logs()
        print(
            "jobworker: second signal: exiting now; the last chunk (at most 100 letters)"
            " may be sent again by the next replay",
            file=sys.stderr,
        )
        os._exit(128 + signum)
