"""The configured logging, writing to a captured stderr: every line has a length cap."""

from __future__ import annotations

import io
import json
import logging
import re
import select
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import gevent
import pytest
import structlog
from kafka.errors import CoordinatorNotAvailableError, NotCoordinatorError
from structlog.typing import EventDict

from jobworker.adapters.executors import HttpExecutor, SafeHttpClient
from jobworker.adapters.kafka.log_noise import KafkaNoteAloneIsNoNews
from jobworker.adapters.memory import InMemoryJobSource, InMemoryResultSink
from jobworker.adapters.observability.job_log import LoggingJobObserver
from jobworker.application.engine import WorkerEngine
from jobworker.application.engine_config import EngineConfig
from jobworker.application.registry import ExecutorRegistry
from jobworker.domain.model import Job, JobResult, JobStatus, JobType
from jobworker.entrypoints.log_batching import BatchedLineHandler
from jobworker.entrypoints.log_processors import MAX_FIELD_CHARS, MAX_TRACEBACK_CHARS, FieldCap
from jobworker.entrypoints.logging_setup import configure_logging, flush_logs
from tests.support.waiting import wait_until

KB = 1000
# A line holds several fields, each capped; this bounds a line with a few long ones.
MAX_LINE_CHARS = 4 * MAX_FIELD_CHARS + MAX_TRACEBACK_CHARS

ReadLines = Callable[[], list[str]]
Configure = Callable[..., ReadLines]


@pytest.fixture
def logged(capsys: pytest.CaptureFixture[str]) -> Iterator[Configure]:
    """Configure logging in a format onto the captured stderr; undone afterwards."""
    root = logging.getLogger()
    saved_root = (root.handlers[:], root.level)
    saved_structlog = structlog.get_config()
    named = [logging.getLogger(name) for name in ("kafka", "kafka.coordinator.assignors.range")]
    saved_levels = [logger.level for logger in named]
    saved_flags = (logging.logThreads, logging.logProcesses, logging.logMultiprocessing)

    def configure(fmt: str, level: str = "debug") -> ReadLines:
        configure_logging(fmt, level)

        def read() -> list[str]:
            flush_logs()  # INFO lines wait for a batch (BatchedLineHandler)
            return capsys.readouterr().err.splitlines()

        return read

    yield configure
    for handler in root.handlers:
        if handler not in saved_root[0]:
            handler.close()
    root.handlers[:], level = saved_root
    root.setLevel(level)
    structlog.configure(**saved_structlog)
    for logger, logger_level in zip(named, saved_levels, strict=True):
        logger.setLevel(logger_level)
    logging.logThreads, logging.logProcesses, logging.logMultiprocessing = saved_flags


def test_a_long_field_is_cut_and_marked_in_json(logged: Configure) -> None:
    read = logged("json")

    structlog.get_logger("t").info("long", url="u" * 900 * KB, short="kept", count=3)

    [line] = read()
    event = json.loads(line)
    cut_chars = 900 * KB - MAX_FIELD_CHARS
    assert event["url"] == "u" * MAX_FIELD_CHARS + f"…[cut {cut_chars} chars]"
    assert (event["short"], event["count"]) == ("kept", 3)


def test_library_records_and_their_tracebacks_are_cut_too(
    logged: Configure,
) -> None:
    read = logged("json")

    try:
        raise OSError(36, "File name too long", "a" * 900 * KB)
    except OSError:
        logging.getLogger("some.library").exception(
            "failed on %s", "m" * 900 * KB, extra={"job_id": "j" * 900 * KB}
        )

    [line] = read()
    event = json.loads(line)
    assert len(line) < MAX_LINE_CHARS
    assert event["event"].endswith("chars]")
    assert event["job_id"].endswith(f"…[cut {900 * KB - MAX_FIELD_CHARS} chars]")
    assert event["exception"].startswith("Traceback (most recent call last)")
    assert len(event["exception"]) <= MAX_TRACEBACK_CHARS + 30


def test_the_text_format_is_capped_as_well(logged: Configure) -> None:
    read = logged("text")

    try:
        raise ValueError("v" * 900 * KB)
    except ValueError:
        structlog.get_logger("t").exception("boom", url="u" * 900 * KB)

    output = "\n".join(read())
    assert len(output) < MAX_LINE_CHARS
    assert "…[cut 898000 chars]" in output
    assert "ValueError: vvv" in output


def test_a_job_with_a_900_kb_url_or_id_leaves_only_short_log_lines(
    logged: Configure,
) -> None:
    read = logged("json")
    # Loopback URLs: refused before any connection, whatever else the worker checks.
    jobs = [
        Job(id="u", type="HTTP", payload=json.dumps({"url": "http://127.0.0.1/" + "a" * 900 * KB})),
        Job(id="i" * 900 * KB, type="HTTP", payload=json.dumps({"url": "http://127.0.0.1/"})),
    ]
    source, sink = InMemoryJobSource(jobs), InMemoryResultSink()
    client = SafeHttpClient(pool_size=1)
    engine = WorkerEngine(
        source,
        sink,
        ExecutorRegistry({"HTTP": HttpExecutor(client)}),
        EngineConfig(fetch_timeout_s=0.005),
        observers=[LoggingJobObserver()],
    )
    engine.start()
    assert engine.wait_until_drained(timeout=5)
    engine.stop(timeout=1)
    client.close()

    assert [result.status for result in sink.results] == [JobStatus.REJECTED] * 2
    lines = read()
    finished = [json.loads(line) for line in lines if '"job finished"' in line]
    assert len(finished) == 2
    assert all(len(line) < MAX_LINE_CHARS for line in lines)


def test_short_fields_are_left_alone() -> None:
    cap = FieldCap(max_chars=10)
    event = {"event": "short", "n": 10**30, "flag": None, "items": [1, 2], "obj": {"a": 1}}

    assert cap(None, "info", dict(event)) == event


def test_values_are_measured_by_their_repr() -> None:
    cap = FieldCap(max_chars=10)

    capped = cap(None, "info", {"event": "e", "items": list(range(100))})

    assert capped["items"] == "[0, 1, 2, …[cut 380 chars]"


def test_a_line_below_the_level_runs_no_processor(logged: Configure) -> None:
    read = logged("json", "warning")
    seen: list[str] = []

    def spy(logger: object, method_name: str, event_dict: EventDict) -> EventDict:
        seen.append(event_dict["event"])
        return event_dict

    processors = structlog.get_config()["processors"]
    structlog.configure(processors=[spy, *processors])
    log = structlog.get_logger("t")
    log.debug("debug")
    log.info("info", field=Unprintable())
    log.warning("warning")

    assert seen == ["warning"]
    assert [json.loads(line)["event"] for line in read()] == ["warning"]


def test_per_logger_levels_apply_to_structlog_lines_too(
    logged: Configure,
) -> None:
    read = logged("json")

    structlog.get_logger("kafka.consumer").info("chatty")
    structlog.get_logger("kafka.consumer").warning("worth reading")
    structlog.get_logger("jobworker.t").debug("debug is on")

    assert [json.loads(line)["event"] for line in read()] == ["worth reading", "debug is on"]


def test_a_line_is_rendered_once_with_the_usual_fields(logged: Configure) -> None:
    read = logged("json")

    try:
        raise ValueError("boom")
    except ValueError:
        structlog.get_logger("jobworker.t").exception("failed", job_id="j")
    logging.getLogger("some.library").warning("careful %s", "now", extra={"k": 1})

    ours, theirs = (json.loads(line) for line in read())
    assert list(ours) == ["job_id", "event", "level", "logger", "timestamp", "exception"]
    assert (ours["event"], ours["level"], ours["logger"]) == ("failed", "error", "jobworker.t")
    assert ours["exception"].startswith("Traceback") and ours["exception"].endswith("boom")
    assert list(theirs) == ["event", "level", "logger", "k", "timestamp"]
    assert (theirs["event"], theirs["k"]) == ("careful now", 1)


def test_what_an_executor_logs_during_a_job_carries_the_job_and_nothing_after(
    logged: Configure,
) -> None:
    read = logged("json")

    class Chatty:
        def execute(self, job: Job) -> str:
            structlog.get_logger("executor").info("structlog line")
            logging.getLogger("executor.lib").info("stdlib line")
            # On purpose, not a synchronisation: the job gives way, so the other jobs
            # log meanwhile, with their own ids.
            gevent.sleep(0.001)
            structlog.get_logger("executor").info("after a switch")
            return "{}"

    jobs = [Job(id=f"job-{number}", type="CHATTY") for number in range(3)]
    source, sink = InMemoryJobSource(jobs), InMemoryResultSink()
    engine = WorkerEngine(
        source,
        sink,
        ExecutorRegistry({"CHATTY": Chatty()}),
        EngineConfig(fetch_timeout_s=0.005, pool_size=3),
        observers=[LoggingJobObserver()],
    )
    engine.start()
    assert engine.wait_until_drained(timeout=5)
    engine.stop(timeout=1)
    structlog.get_logger("t").info("outside any job")

    events = [json.loads(line) for line in read()]
    by_job: dict[str, list[str]] = {}
    for event in events:
        by_job.setdefault(event.get("job_id", "-"), []).append(event["event"])
    for job in jobs:
        assert by_job[job.id] == ["structlog line", "stdlib line", "after a switch", "job finished"]
    [outside] = [e for e in events if e["event"] == "outside any job"]
    assert "job_id" not in outside
    assert {e["type"] for e in events if e["event"] == "stdlib line"} == {"CHATTY"}


class Unprintable:
    def __repr__(self) -> str:
        raise AssertionError("a line below the level was rendered")


def test_text_logs_show_enum_names_not_reprs(logged: Configure) -> None:
    read = logged("text")

    structlog.get_logger("t").info(
        "worker starting",
        job_types=[JobType.HTTP, JobType.SLEEP],
        finished={JobStatus.SUCCEEDED: 2},
        status=JobStatus.FAILED,
    )

    output = "\n".join(read())
    assert "<JobType" not in output and "<JobStatus" not in output
    assert "job_types=['HTTP', 'SLEEP']" in output
    assert "finished={'SUCCEEDED': 2}" in output
    assert "status=FAILED" in output


def test_kafka_pythons_slow_listener_warning_is_dropped_for_our_listener_only(
    logged: Configure,
) -> None:
    read = logged("json")
    coordinator = logging.getLogger("kafka.coordinator.consumer")
    message = "Rebalance listener %s.%s for group %s took %.3fs. Sync listeners block ..."
    coordinator.warning(message, "_RebalanceListener", "on_partitions_revoked", "g", 5.02)
    coordinator.warning(message, "TheirListener", "on_partitions_revoked", "g", 5.02)

    lines = read()
    assert len(lines) == 1
    assert "TheirListener" in lines[0]


def test_kafka_pythons_note_of_an_auto_created_topic_is_dropped_when_alone(
    logged: Configure,
) -> None:
    read = logged("json")
    cluster = logging.getLogger("kafka.cluster")
    cluster.error("Topic %s not found in cluster metadata", "jobs.dlq")  # created by it
    cluster.error("Topic %s not found in cluster metadata", "typo")
    cluster.error("Topic %s not found in cluster metadata", "typo")  # really missing
    cluster.error("Topic %s is not authorized for this client", "secret")

    events = [json.loads(line)["event"] for line in read()]
    assert events == [
        "Topic typo not found in cluster metadata",
        "Topic secret is not authorized for this client",
    ]


def test_a_kafka_note_alone_again_after_a_minute_is_dropped_again() -> None:
    now = [0.0]
    quiet = KafkaNoteAloneIsNoNews(clock=lambda: now[0])
    note = logging.LogRecord(
        "kafka.cluster", logging.ERROR, __file__, 1,
        "Topic %s not found in cluster metadata", ("jobs.dlq",), None,
    )  # fmt: skip
    shown = []
    for at in (0.0, 30.0, 200.0):
        now[0] = at
        shown.append(quiet.filter(note))
    assert shown == [False, True, False]


def test_kafka_pythons_note_of_a_moved_coordinator_is_dropped_when_alone(
    logged: Configure,
) -> None:
    read = logged("json")
    base = logging.getLogger("kafka.coordinator.base")
    message = "Marking the coordinator dead (node %s) for group %s: %s."
    base.warning(message, 1, "g", NotCoordinatorError())
    base.warning(message, 1, "other", CoordinatorNotAvailableError())
    base.warning(message, 1, "other", CoordinatorNotAvailableError())  # it stays away
    base.warning(message, 1, "g", "Node Disconnected")

    events = [json.loads(line)["event"] for line in read()]
    assert events == [
        "Marking the coordinator dead (node 1) for group other: [Error 15]"
        " CoordinatorNotAvailableError.",
        "Marking the coordinator dead (node 1) for group g: Node Disconnected.",
    ]


def _record(level: int, message: str) -> logging.LogRecord:
    return logging.LogRecord("t", level, __file__, 1, message, None, None)


def test_info_lines_are_written_together_and_a_warning_takes_them_along() -> None:
    stream = io.BytesIO()
    handler = BatchedLineHandler(stream, flush_interval_s=60)
    try:
        handler.handle(_record(logging.INFO, "one"))
        handler.handle(_record(logging.INFO, "two"))
        assert stream.getvalue() == b""  # waiting for the batch

        handler.handle(_record(logging.WARNING, "three"))

        assert stream.getvalue() == b"one\ntwo\nthree\n"
    finally:
        handler.close()


def test_a_waiting_line_is_written_within_the_interval_without_more_logging() -> None:
    stream = io.BytesIO()
    handler = BatchedLineHandler(stream, flush_interval_s=0.01)
    try:
        handler.handle(_record(logging.INFO, "alone"))
        wait_until(stream.getvalue, 5, "the waiting line was never written")
        assert stream.getvalue() == b"alone\n"
    finally:
        handler.close()


def test_closing_writes_what_waits() -> None:
    stream = io.BytesIO()
    handler = BatchedLineHandler(stream, flush_interval_s=60)
    handler.handle(_record(logging.INFO, "last words"))

    handler.close()

    assert stream.getvalue() == b"last words\n"


def test_json_lines_take_what_orjson_refuses(logged: Configure) -> None:
    read = logged("json")

    structlog.get_logger("t").info("big", number=2**70, parts={1: "a"}, thing=Unprintable)

    [line] = read()
    event = json.loads(line)
    assert event["number"] == 2**70
    assert event["parts"] == {"1": "a"}
    assert event["thing"].startswith("<class")


def test_a_batch_is_written_in_whole_lines_of_at_most_a_pipe_buffer() -> None:
    writes: list[str] = []

    class Recorder(io.BytesIO):
        def write(self, data: bytes) -> int:  # type: ignore[override]
            writes.append(data.decode())
            return len(data)

    handler = BatchedLineHandler(Recorder(), flush_interval_s=60)
    lines = [f"line {n} " + "x" * 300 for n in range(40)] + ["é" * 3000, "last"]
    try:
        for line in lines:
            handler.handle(_record(logging.INFO, line))
        handler.flush()
    finally:
        handler.close()

    assert "".join(writes).splitlines() == lines
    assert all(text.endswith("\n") for text in writes)
    # Several lines per write, none over the pipe's atomic size unless a line is.
    assert 1 < len(writes) < len(lines)
    assert all(len(text.encode()) <= select.PIPE_BUF or text.count("\n") == 1 for text in writes)


def test_a_record_of_several_lines_is_written_whole_and_alone() -> None:
    # A traceback in the text format: cut between its lines, another worker process's
    # line could land inside it on a shared stderr.
    writes: list[bytes] = []

    class Recorder(io.BytesIO):
        def write(self, data: bytes) -> int:  # type: ignore[override]
            writes.append(bytes(data))
            return len(data)

    handler = BatchedLineHandler(Recorder(), flush_interval_s=60)
    traceback = "Traceback (most recent call last):\n" + "  frame\n" * 600 + "ValueError: x"
    try:
        handler.handle(_record(logging.INFO, "before"))
        handler.handle(_record(logging.INFO, traceback))
        handler.handle(_record(logging.INFO, "after"))
        handler.flush()
    finally:
        handler.close()

    assert writes == [b"before\n", traceback.encode() + b"\n", b"after\n"]


@contextmanager
def records_beside_ours() -> Iterator[list[logging.LogRecord]]:
    """The records a second handler on the root logger gets while the block runs."""
    seen: list[logging.LogRecord] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            seen.append(record)

    collect = Collect()
    logging.getLogger().addHandler(collect)
    try:
        yield seen
    finally:
        logging.getLogger().removeHandler(collect)


def test_a_handler_attached_beside_ours_still_gets_every_line(
    logged: Configure,
) -> None:
    read = logged("json")

    with records_beside_ours() as seen:
        structlog.get_logger("jobworker.t").info("to both", n=1)
    structlog.get_logger("jobworker.t").info("ours only", n=2)

    assert [json.loads(line)["event"] for line in read()] == ["to both", "ours only"]
    [record] = seen
    assert json.loads(record.getMessage())["event"] == "to both"
    assert record.levelno == logging.INFO


def test_a_filter_on_a_logger_still_sees_our_lines(logged: Configure) -> None:
    read = logged("json")

    class DropSecrets(logging.Filter):
        def filter(self, record: logging.LogRecord) -> bool:
            return "secret" not in record.getMessage()

    drop = DropSecrets()
    logger = logging.getLogger("jobworker.filtered")
    logger.addFilter(drop)
    try:
        structlog.get_logger("jobworker.filtered").info("a secret")
        structlog.get_logger("jobworker.filtered").info("public")
    finally:
        logger.removeFilter(drop)

    assert [json.loads(line)["event"] for line in read()] == ["public"]


def test_our_error_lines_skip_the_batch_on_the_direct_path(
    logged: Configure, capsys: pytest.CaptureFixture[str]
) -> None:
    logged("json")
    structlog.get_logger("jobworker.t").info("first")

    structlog.get_logger("jobworker.t").error("then this")

    # Not flushed by the test: the error took the waiting line along.
    events = [json.loads(line)["event"] for line in capsys.readouterr().err.splitlines()]
    assert events == ["first", "then this"]


def test_a_stream_that_cannot_be_written_costs_lines_not_the_caller() -> None:
    stream = io.BytesIO()
    handler = BatchedLineHandler(stream, flush_interval_s=60)
    stream.close()
    try:
        handler.handle(_record(logging.INFO, "lost"))
        handler.handle(_record(logging.ERROR, "lost too"))  # flushes: the write fails
        handler.flush()
    finally:
        handler.close()


def test_a_handler_beside_ours_gets_the_exception_with_an_error_line(
    logged: Configure,
) -> None:
    read = logged("json")

    with records_beside_ours() as seen:
        try:
            raise KeyError("lost")
        except KeyError:
            structlog.get_logger("jobworker.t").exception("it broke")

    [line] = read()
    assert json.loads(line)["exception"].endswith("KeyError: 'lost'")
    [record] = seen
    assert record.levelno == logging.ERROR
    assert record.exc_info is not None and record.exc_info[0] is KeyError


@pytest.mark.parametrize("fmt", ["json", "text"])
def test_a_jobs_info_line_is_the_line_structlogs_logger_writes(logged: Configure, fmt: str) -> None:
    # The observer runs the configured processors itself (job_log._info_line): its
    # line must not differ from a bound logger's, whatever the format.
    read = logged(fmt, "info")
    job = Job(id="j-7", type="SLEEP")
    observer = LoggingJobObserver()
    observer.job_started(job, 1)
    observer.job_finished(
        job,
        JobResult(
            job_id="j-7",
            type="SLEEP",
            status=JobStatus.SUCCEEDED,
            attempts=1,
            started_at_unix_ms=1_000,
            finished_at_unix_ms=1_004,
        ),
    )
    structlog.get_logger("jobworker.jobs").info(
        "job finished", job_id="j-7", type="SLEEP", attempt=1, status="SUCCEEDED", duration_ms=4
    )

    ours, structlogs = read()
    stamp = re.compile(r"\d{4}-\d\d-\d\dT[\d:.]+Z?")
    assert "job finished" in ours
    assert stamp.sub("T", ours) == stamp.sub("T", structlogs)
