"""structlog for everything: our own events and the standard-library records of the
application layer and libraries, rendered as JSON lines (for ELK/Loki) or as text.

A line costs in proportion to whether it is written: the level is asked before any
processor runs, so a line filtered out costs one check. Our own events are rendered by
structlog and handed to the standard library as finished text, so the handler (and
anything else attached to the root logger) still sees every line, but no line is
processed twice. Lines reach stderr in batches (see ``BatchedLineHandler``): one write
per line was the largest part of a line's cost at 10,000 jobs/s.
"""

from __future__ import annotations

import _thread
import contextlib
import enum
import json
import logging
import select
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping, MutableMapping
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

import orjson
import structlog

# A field longer than this is cut: one job's 900 KB URL must not make a 1.8 MB log
# line, which log shippers split or drop. Tracebacks get more room than other fields.
MAX_FIELD_CHARS = 2_000
MAX_TRACEBACK_CHARS = 16_000
_LONG_FIELDS = frozenset({"exception", "stack", "stack_info"})
# Values whose text is short by nature; the rest are measured by their repr.
_SHORT_TYPES = (int, float, bool, type(None))
# Set on the records of lines structlog rendered already (see _HandOver).
_RENDERED = "jobworker_rendered"
# INFO and DEBUG lines wait at most this long for the lines after them (one write for
# all); a WARNING or worse line is written at once, with every line before it.
FLUSH_INTERVAL_S = 0.1
_MAX_PENDING_CHARS = 64 * 1024
# What a pipe writes without interleaving another writer's bytes (POSIX: at least 512;
# 4096 on Linux).
_PIPE_BUF = getattr(select, "PIPE_BUF", 512)

# The fields of the job the current greenlet runs. One context variable set once per
# attempt: binding three of structlog's contextvars per job, and clearing them (which
# walks a copy of the whole context), cost more than the job's own log line.
_job_fields: ContextVar[Mapping[str, Any] | None] = ContextVar("jobworker_job", default=None)


def bind_job_fields(fields: Mapping[str, Any]) -> None:
    """Add ``fields`` to every line logged in this greenlet until ``clear_job_fields``.

    Fields given to the log call itself win over these.
    """
    _job_fields.set(fields)


def clear_job_fields() -> None:
    _job_fields.set(None)


def current_job_fields() -> Mapping[str, Any]:
    """The job fields bound in this greenlet (empty when none)."""
    return _job_fields.get() or {}


def add_job_fields(
    _logger: Any, _method_name: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    """A processor: the fields of ``bind_job_fields``, behind the event's own."""
    fields = _job_fields.get()
    if fields:
        for key, value in fields.items():
            event_dict.setdefault(key, value)
    return event_dict


class FieldCap:
    """A processor that cuts every field longer than its cap and says how much it cut.

    A string is measured as it is; any other value (a dict, a list, an object) by its
    repr, and replaced by the cut repr only when that is too long.
    """

    def __init__(
        self, max_chars: int = MAX_FIELD_CHARS, max_traceback_chars: int = MAX_TRACEBACK_CHARS
    ) -> None:
        self.max_chars = max_chars
        self.max_traceback_chars = max_traceback_chars

    def __call__(
        self, logger: Any, method_name: str, event_dict: MutableMapping[str, Any]
    ) -> MutableMapping[str, Any]:
        # Every line passes here: short plain strings, the usual field, cost one test.
        short = min(self.max_chars, self.max_traceback_chars)
        for key, value in event_dict.items():
            if value.__class__ is str:
                if len(value) <= short:
                    continue
                text = value
            elif isinstance(value, _SHORT_TYPES):
                continue
            else:
                text = value if isinstance(value, str) else repr(value)
            cap = self.max_traceback_chars if key in _LONG_FIELDS else self.max_chars
            if len(text) > cap:
                event_dict[key] = cut(text, cap)
        return event_dict


class CappedRenderer:
    """``renderer``, with ``FieldCap`` applied to lines long enough to need it.

    A field longer than the cap makes the rendered line longer than the cap, so a line
    within it has no field to cut: most lines skip FieldCap's walk over their fields
    (0.7 µs of a 7 µs line). A longer line is rendered again from capped fields.
    ``keeps_fields``: the renderer leaves the event dict as it found it (JSON does; the
    console renderer pops fields, so it renders a copy).
    """

    def __init__(self, renderer: Any, keeps_fields: bool, cap: FieldCap | None = None) -> None:
        self._renderer = renderer
        self._keeps_fields = keeps_fields
        self._cap = cap or FieldCap()
        self._short = min(self._cap.max_chars, self._cap.max_traceback_chars)

    def __call__(self, logger: Any, method_name: str, event_dict: MutableMapping[str, Any]) -> Any:
        fields = event_dict if self._keeps_fields else dict(event_dict)
        line = self._renderer(logger, method_name, fields)
        if len(line) <= self._short:
            return line
        return self._renderer(logger, method_name, self._cap(logger, method_name, event_dict))


def cut(text: str, max_chars: int) -> str:
    """``text`` cut to ``max_chars`` characters, marked with the number cut."""
    return f"{text[:max_chars]}…[cut {len(text) - max_chars} chars]"


def _plain(value: Any) -> Any:
    if isinstance(value, enum.Enum):
        return value.name
    if isinstance(value, dict):
        return {_plain(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [_plain(item) for item in value]
    return value


def plain_enums(
    _logger: Any, _method_name: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    """A processor for the text format: enums by name (``HTTP``), also inside lists and
    dicts, whose text would otherwise show each member's repr (``<JobType.HTTP: 'HTTP'>``).
    """
    for key, value in event_dict.items():
        if isinstance(value, enum.Enum | dict | list | tuple | set | frozenset):
            event_dict[key] = _plain(value)
    return event_dict


class LevelFirstBoundLogger(structlog.stdlib.BoundLogger):
    """A stdlib BoundLogger that asks its logger's level before any processor runs.

    structlog's own BoundLogger runs every processor and lets the standard library
    drop the result. Per-logger levels (``kafka`` at WARNING) still apply: the check
    is the standard library's ``isEnabledFor``, which caches its answer. A line that is
    written goes through the processors in one step (``_emit``), not through the two
    layers of ``_proxy_to_logger`` that each repacked its fields.
    """

    def _emit(self, method_name: str, event: str | None, args: Any, kw: dict[str, Any]) -> Any:
        # What structlog.stdlib.BoundLogger._proxy_to_logger and the base class's do.
        if args:
            kw["positional_args"] = args
        try:
            out_args, out_kw = self._process_event(method_name, event, kw)
        except structlog.DropEvent:
            return None
        return getattr(self._logger, method_name)(*out_args, **out_kw)

    def debug(self, event: str | None = None, *args: Any, **kw: Any) -> Any:
        if not self._logger.isEnabledFor(logging.DEBUG):
            return None
        return self._emit("debug", event, args, kw)

    def info(self, event: str | None = None, *args: Any, **kw: Any) -> Any:
        if not self._logger.isEnabledFor(logging.INFO):
            return None
        return self._emit("info", event, args, kw)

    def warning(self, event: str | None = None, *args: Any, **kw: Any) -> Any:
        if not self._logger.isEnabledFor(logging.WARNING):
            return None
        return self._emit("warning", event, args, kw)

    warn = warning

    def error(self, event: str | None = None, *args: Any, **kw: Any) -> Any:
        if not self._logger.isEnabledFor(logging.ERROR):
            return None
        return self._emit("error", event, args, kw)

    def exception(self, event: str | None = None, *args: Any, **kw: Any) -> Any:
        if not self._logger.isEnabledFor(logging.ERROR):
            return None
        kw.setdefault("exc_info", True)
        return self._emit("exception", event, args, kw)

    def critical(self, event: str | None = None, *args: Any, **kw: Any) -> Any:
        if not self._logger.isEnabledFor(logging.CRITICAL):
            return None
        return self._emit("critical", event, args, kw)

    fatal = critical

    def log(self, level: int, event: str | None = None, *args: Any, **kw: Any) -> Any:
        if not self._logger.isEnabledFor(level):
            return None
        return super().log(level, event, *args, **kw)


class BatchedLineHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """A StreamHandler that writes its lines in batches instead of one write per line.

    A line waits at most ``FLUSH_INTERVAL_S`` (or until 64 KiB are pending); a WARNING
    or worse line goes out at once, behind the lines before it, so what explains a
    failure is on stderr before the process can die of it. A SIGKILL loses at most the
    last interval's INFO lines. On a terminal every line is written as it comes.
    """

    def __init__(self, stream: Any, flush_interval_s: float = FLUSH_INTERVAL_S) -> None:
        super().__init__(stream)
        self._interval = flush_interval_s
        self._pending: list[str] = []
        self._pending_chars = 0
        self._oldest = 0.0  # when the first pending line came
        self._each_line = bool(getattr(stream, "isatty", lambda: False)())
        self._flusher: threading.Thread | None = None
        self._closed = False

    def createLock(self) -> None:  # noqa: N802 - logging.Handler's name
        # The C lock even where gevent patched threading (its Python RLock cost ~1 µs a
        # line): it keeps other OS threads out, and greenlets need no keeping out, since
        # nothing done while holding it yields to another greenlet.
        self.lock = _thread.RLock()

    def emit(self, record: logging.LogRecord) -> None:
        try:
            line = self.format(record)
        except RecursionError:
            raise
        except Exception:
            self.handleError(record)
            return
        self._add(line, record.levelno)

    def write_line(self, line: str, levelno: int) -> None:
        """A line rendered already, at ``levelno``: as ``handle`` of a record of it would."""
        if levelno < self.level:
            return
        with self.lock:  # type: ignore[union-attr]  # created by Handler.__init__
            self._add(line, levelno)

    def _add(self, line: str, levelno: int) -> None:
        now = time.monotonic()
        if not self._pending:
            self._oldest = now
        self._pending.append(line)
        self._pending_chars += len(line)
        if (
            levelno >= logging.WARNING
            or self._each_line
            or self._pending_chars >= _MAX_PENDING_CHARS
            or now - self._oldest >= self._interval
        ):
            self.flush()
        elif self._flusher is None:
            # A thread (a greenlet where gevent patched threading) for the quiet
            # moments after a burst: no line waits longer than the interval.
            self._flusher = threading.Thread(
                target=self._flush_every_interval, name="log-flusher", daemon=True
            )
            self._flusher.start()

    def flush(self) -> None:
        with self.lock:  # type: ignore[union-attr]  # created by Handler.__init__
            if not self._pending:
                return  # every chunk written was flushed with it
            lines, self._pending, self._pending_chars = self._pending, [], 0
            try:
                for chunk in _whole_line_chunks(lines):
                    self.stream.write(chunk)
                    self.stream.flush()
            except Exception as error:
                # As StreamHandler's handleError: a broken or closed stderr must not
                # break the worker (or whichever greenlet logged); the lines are lost.
                if logging.raiseExceptions and sys.__stderr__ is not None:
                    with contextlib.suppress(Exception):
                        sys.__stderr__.write(f"--- logging could not write its lines: {error!r}\n")

    def close(self) -> None:
        self._closed = True
        self.flush()
        super().close()

    def _flush_every_interval(self) -> None:
        while not self._closed:
            time.sleep(self._interval)
            self.flush()


def _whole_line_chunks(lines: list[str]) -> Iterator[str]:
    """``lines`` joined into texts of at most PIPE_BUF bytes (a longer line alone).

    Each is written and flushed on its own: a pipe writes up to PIPE_BUF bytes at once
    without interleaving, so the lines of worker processes sharing one stderr
    (``run --processes N``) never cut into each other.
    """
    chunk: list[str] = []
    size = 0
    for line in lines:
        length = (len(line) if line.isascii() else len(line.encode("utf-8", "replace"))) + 1
        if chunk and size + length > _PIPE_BUF:
            yield "\n".join(chunk) + "\n"
            chunk, size = [], 0
        chunk.append(line)
        size += length
    if chunk:
        yield "\n".join(chunk) + "\n"


class UtcTimestamp:
    """structlog's ``TimeStamper(fmt="iso", utc=True)`` at a third of the cost: the date
    and time of day are formatted once a second. Always six digits of microseconds."""

    def __init__(self) -> None:
        self._second = -1
        self._prefix = ""

    def __call__(
        self, _logger: Any, _method_name: str, event_dict: MutableMapping[str, Any]
    ) -> MutableMapping[str, Any]:
        now_ns = time.time_ns()
        second = now_ns // 1_000_000_000
        if second != self._second:
            self._prefix = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
            self._second = second
        event_dict["timestamp"] = f"{self._prefix}.{now_ns // 1000 % 1_000_000:06d}Z"
        return event_dict


def _json_text(event_dict: Any, **dumps_kw: Any) -> str:
    """orjson, a fifth of json.dumps's cost per line; json.dumps for what orjson refuses
    (an integer beyond 64 bits). ``default`` is structlog's: repr for other objects."""
    try:
        return orjson.dumps(
            event_dict, default=dumps_kw.get("default"), option=orjson.OPT_NON_STR_KEYS
        ).decode()
    except TypeError:  # orjson.JSONEncodeError is one
        return json.dumps(event_dict, **dumps_kw)


def flush_logs() -> None:
    """Write out every line still waiting in a handler (tests, and before an exit)."""
    for handler in logging.getLogger().handlers:
        handler.flush()


def say_after_logs(line: str) -> None:
    """``line`` on stderr, after every log line still waiting for its batch (the CLI's
    last word: what led to it comes first)."""
    flush_logs()
    print(line, file=sys.stderr)  # noqa: T201 - the CLI's own line, not a log line


def _hand_over(_logger: Any, _method_name: str, line: Any) -> tuple[tuple[str], dict[str, Any]]:
    """The last processor: the rendered line to the standard library, marked as done."""
    return (line,), {"extra": {_RENDERED: True}}


class _Formatter(structlog.stdlib.ProcessorFormatter):
    """Renders library records; passes on our own lines, which structlog rendered."""

    def format(self, record: logging.LogRecord) -> str:
        if getattr(record, _RENDERED, False):
            return str(record.msg)
        return super().format(record)


class _LineOut:
    """What our structlog loggers write their finished lines to: a standard-library
    logger, skipped when nothing but our handler would see the line.

    A record costs more than the rest of a line (LogRecord, the logger's and the
    handler's filters and locks, 4 µs of a 10 µs line): when the logger and its parents
    have no filter and no handler but ours, the line goes to our handler as it is.
    Anything else attached (a test's capture, an error tracker's handler) gets records
    as before. Every other attribute is the standard-library logger's.
    """

    def __init__(self, logger: logging.Logger) -> None:
        self._logger = logger
        # Asked on every line: found here, not through __getattr__.
        self.name = logger.name
        self.isEnabledFor = logger.isEnabledFor

    def __getattr__(self, name: str) -> Any:
        return getattr(self._logger, name)

    def debug(self, line: str, **kw: Any) -> None:
        self._out(logging.DEBUG, line, kw)

    def info(self, line: str, **kw: Any) -> None:
        self._out(logging.INFO, line, kw)

    def warning(self, line: str, **kw: Any) -> None:
        self._out(logging.WARNING, line, kw)

    def error(self, line: str, **kw: Any) -> None:
        self._out(logging.ERROR, line, kw)

    def exception(self, line: str, **kw: Any) -> None:
        # format_exc_info rendered the traceback into the line already; a record still
        # carries the exception for handlers that want it (an error tracker's).
        self._out(logging.ERROR, line, kw, self._logger.exception)

    def critical(self, line: str, **kw: Any) -> None:
        self._out(logging.CRITICAL, line, kw)

    warn = warning
    fatal = critical

    def _out(
        self, levelno: int, line: str, kw: dict[str, Any], record: Callable[..., None] | None = None
    ) -> None:
        """To our handler alone, or as a record by ``record`` (``log`` at ``levelno``)."""
        handler = _only_handler(self._logger)
        if handler is not None:
            handler.write_line(line, levelno)
        elif record is not None:
            record(line, **kw)
        else:
            self._logger.log(levelno, line, **kw)


def _only_handler(logger: logging.Logger) -> BatchedLineHandler | None:
    """Our handler, when it is the only one a record of ``logger`` would reach and no
    filter could drop or change the record; else None."""
    found: BatchedLineHandler | None = None
    current: logging.Logger | None = logger
    while current is not None:
        if current.filters or current.disabled:
            return None
        for handler in current.handlers:
            if found is not None or not isinstance(handler, BatchedLineHandler):
                return None
            found = handler
        if not current.propagate:
            break
        current = current.parent
    return None if found is None or found.filters else found


def _stdlib_logger(*args: Any) -> _LineOut:
    # Not structlog's LoggerFactory: it makes every logger of the process (libraries'
    # too) walk the stack for a caller on each line, and no line shows the caller.
    return _LineOut(logging.getLogger(args[0] if args else None))


def configure_logging(fmt: str = "json", level: str = "info") -> None:
    """Route structlog and stdlib logging through one renderer on stderr."""
    context: list[structlog.types.Processor] = [
        structlog.contextvars.merge_contextvars,
        add_job_fields,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
    ]
    stamp: list[structlog.types.Processor] = [
        UtcTimestamp(),
        # Tracebacks as text in both formats, so that the cap below bounds them too
        # (and the console shows no local variables, which may hold secrets).
        structlog.processors.format_exc_info,
    ]
    renderer: structlog.types.Processor
    finish: list[structlog.types.Processor] = []
    if fmt == "json":
        renderer = structlog.processors.JSONRenderer(serializer=_json_text)
    else:
        renderer = structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
        finish.append(plain_enums)  # JSON writes a StrEnum as its value already
    # Last: every line, ours or a library's, passes here.
    finish.append(CappedRenderer(renderer, keeps_fields=fmt == "json"))
    structlog.configure(
        processors=[*context, *stamp, *finish, _hand_over],
        logger_factory=_stdlib_logger,
        wrapper_class=LevelFirstBoundLogger,
        cache_logger_on_first_use=True,
    )
    handler = BatchedLineHandler(sys.stderr)
    handler.setFormatter(
        _Formatter(
            # Library records may carry ``extra`` fields; our own lines never come here.
            foreign_pre_chain=[*context, structlog.stdlib.ExtraAdder(), *stamp],
            processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, *finish],
        )
    )
    # No line shows the thread or process. Looking the thread up makes gevent create a
    # dummy Thread for each job's greenlet that logs: the costliest part of a record.
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    # No line shows the caller either: without this the standard library walks the
    # stack for it on every record (its own comment names this switch for the purpose).
    logging._srcfile = None
    root = logging.getLogger()
    for previous in root.handlers:
        if isinstance(previous, BatchedLineHandler):
            previous.close()  # a second configure (tests) must not leave a flusher behind
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # kafka-python is chatty at INFO (every rebalance step); its warnings still show.
    logging.getLogger("kafka").setLevel(max(logging.WARNING, root.level))
    # A new group's first assignment is often made before the topic's metadata arrived;
    # the group rejoins at once with the partitions. The warning says nothing to act on.
    logging.getLogger("kafka.coordinator.assignors.range").setLevel(max(logging.ERROR, root.level))
    coordinator = logging.getLogger("kafka.coordinator.consumer")
    if not any(isinstance(f, _OurSlowRevokeIsExpected) for f in coordinator.filters):
        coordinator.addFilter(_OurSlowRevokeIsExpected())
    for name in KafkaNoteAloneIsNoNews.LOGGERS:
        logger = logging.getLogger(name)
        for old in [f for f in logger.filters if isinstance(f, KafkaNoteAloneIsNoNews)]:
            logger.removeFilter(old)  # what a previous configure saw is forgotten
        logger.addFilter(KafkaNoteAloneIsNoNews())


class _OurSlowRevokeIsExpected(logging.Filter):
    """Drops kafka-python's "Rebalance listener ... took Ns. Sync listeners block ..."
    warning for our own listener: it is a coroutine that waits up to the revoke grace
    (KafkaJobSource's ``revoke_grace_s``) on the consumer's I/O loop, which keeps serving
    heartbeats meanwhile, so the warning's advice does not apply. Other listeners' slow
    calls still show."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (
            isinstance(record.msg, str)
            and record.msg.startswith("Rebalance listener")
            and bool(record.args)
            and isinstance(record.args, tuple)
            and record.args[0] == "_RebalanceListener"
        )


class KafkaNoteAloneIsNoNews(logging.Filter):
    """Drops kafka-python's warnings and errors about what it recovers from at once
    when they come alone, and lets them through when they recur within a minute.

    - ``Topic … not found in cluster metadata`` (and ``… not available during
      auto-create initialization``): a topic the broker creates on its first write, as a
      dead-letter topic is by its first letter; one that is really missing is asked for
      again and again, and shows from the second time.
    - ``Marking the coordinator dead … NotCoordinatorError`` (or
      ``CoordinatorNotAvailableError``): the group's coordinator moved or was still
      loading (a fresh broker's first group); the client finds the new one at once. One
      that stays unavailable (an offsets topic the cluster cannot create) recurs.
    """

    LOGGERS = ("kafka.cluster", "kafka.coordinator.base")
    _TOPIC_NOTES = frozenset(
        (
            "Topic %s not found in cluster metadata",
            "Topic %s is not available during auto-create initialization",
        )
    )
    _COORDINATOR_MOVED = frozenset(("NotCoordinatorError", "CoordinatorNotAvailableError"))
    RECUR_WITHIN_S = 60.0

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__()
        self._clock = clock
        self._last_seen: dict[tuple[str, str], float] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        key = self._key(record)
        if key is None:
            return True
        now = self._clock()
        last = self._last_seen.get(key)
        self._last_seen[key] = now
        return last is not None and now - last < self.RECUR_WITHIN_S

    def _key(self, record: logging.LogRecord) -> tuple[str, str] | None:
        args = record.args if isinstance(record.args, tuple) else ()
        if record.msg in self._TOPIC_NOTES and len(args) == 1:
            return (str(record.msg), str(args[0]))
        if (
            isinstance(record.msg, str)
            and record.msg.startswith("Marking the coordinator dead")
            and len(args) == 3  # (node, group, error)
            and type(args[2]).__name__ in self._COORDINATOR_MOVED
        ):
            return (record.msg, str(args[1]))
        return None


# Where kafka-python logs each failed connection attempt (four lines per try; two more
# from the transport when an address takes the connection and drops it).
_KAFKA_CONNECTION_LOGGERS = (
    "kafka.net.manager",
    "kafka.net.connection",
    "kafka.net.transport",
    "kafka.conn",
)


@contextmanager
def held_back_connection_errors() -> Iterator[list[str]]:
    """Hold back kafka-python's per-attempt connection lines while the worker first
    reaches the brokers, keeping their messages (the list yielded) for one line of our own.

    Unreachable brokers would otherwise print some 70 lines in the 30 s before the
    worker gives up; once connected, outages are logged as they come.
    """
    held: list[str] = []

    class _Hold(logging.Filter):
        def filter(self, record: logging.LogRecord) -> bool:
            if record.levelno >= logging.WARNING:
                held.append(record.getMessage())
            return False

    hold = _Hold()
    loggers = [logging.getLogger(name) for name in _KAFKA_CONNECTION_LOGGERS]
    for logger in loggers:
        logger.addFilter(hold)
    try:
        yield held
    finally:
        for logger in loggers:
            logger.removeFilter(hold)


def first_error(held: list[str]) -> str | None:
    """The first connection failure among held-back lines (the cause, not the give-up)."""
    return next((line for line in held if line.startswith("Connection failed")), None) or (
        held[0] if held else None
    )
