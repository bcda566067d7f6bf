"""structlog for everything, on its documented fast path: a filtering bound logger (a
line below LOG_LEVEL costs one method call), orjson, and finished lines as bytes.

Our lines are rendered once, by structlog, and go straight to the batching handler on
the root logger (``log_batching``). The standard library's rules still hold for them:
a logger's own level (``kafka`` at WARNING), and, when anything else listens (a filter,
an error tracker's handler), a record of the finished line, with the exception for an
exception line. Library records (kafka-python, grpc) are rendered by the same processors.
"""

from __future__ import annotations

import logging
import sys
from typing import Any

import structlog

from jobworker.adapters.kafka.log_noise import quiet_kafka_python
from jobworker.adapters.observability.job_log import add_job_fields
from jobworker.entrypoints.log_batching import BatchedLineHandler, sole_handler
from jobworker.entrypoints.log_processors import (
    CappedRenderer,
    UtcTimestamp,
    json_bytes,
    plain_enums,
)

# Set on the records of lines structlog rendered already (see _LineLogger).
_RENDERED = {"jobworker_rendered": True}


class _LineLogger:
    """What structlog's loggers write to: structlog's BytesLogger contract (one finished
    line a call), over the standard-library logger of the same name, so that its level,
    filters and other handlers still apply; a line nothing else would see goes to our
    handler as it is, without a LogRecord (what that saves: docs/benchmarks.md)."""

    def __init__(self, name: str | None = None) -> None:
        self._logger = logging.getLogger(name)
        self.name = self._logger.name

    def debug(self, line: bytes, **kw: Any) -> None:
        self._out(logging.DEBUG, line, kw)

    def info(self, line: bytes, **kw: Any) -> None:
        self._out(logging.INFO, line, kw)

    def warning(self, line: bytes, **kw: Any) -> None:
        self._out(logging.WARNING, line, kw)

    def error(self, line: bytes, **kw: Any) -> None:
        self._out(logging.ERROR, line, kw)

    def critical(self, line: bytes, **kw: Any) -> None:
        self._out(logging.CRITICAL, line, kw)

    def _out(self, levelno: int, line: bytes, kw: dict[str, Any]) -> None:
        logger = self._logger
        if not logger.isEnabledFor(levelno):
            return
        handler = sole_handler(logger)
        if handler is not None:
            handler.write_line(line, levelno)
        else:
            logger.log(levelno, line.decode(), exc_info=kw.get("exc_info"), extra=_RENDERED)


class _Formatter(structlog.stdlib.ProcessorFormatter):
    """Renders library records; passes on our own lines, which structlog rendered."""

    def format(self, record: logging.LogRecord) -> str:
        if getattr(record, "jobworker_rendered", False):
            return str(record.msg)
        return super().format(record)


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
        # Tracebacks as text in both formats, so that the cap bounds them too (and the
        # console shows no local variables, which may hold secrets).
        structlog.processors.format_exc_info,
    ]
    renderer: Any = structlog.processors.JSONRenderer(serializer=json_bytes)
    pre_render: list[structlog.types.Processor] = []
    if fmt != "json":
        renderer = structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
        pre_render.append(plain_enums)  # JSON writes a StrEnum as its value already
    render = CappedRenderer(renderer, keeps_fields=fmt == "json")

    def to_line_logger(logger: Any, method_name: str, event_dict: Any) -> Any:
        line = render(logger, method_name, event_dict)
        # An exception line's record (if one is made) carries the exception too.
        return ((line,), {"exc_info": True}) if "exception" in event_dict else line

    structlog.configure(
        processors=[*context, *stamp, *pre_render, to_line_logger],
        wrapper_class=structlog.make_filtering_bound_logger(level.upper()),
        logger_factory=_LineLogger,
        cache_logger_on_first_use=True,
    )
    handler = BatchedLineHandler(sys.stderr)
    handler.setFormatter(
        _Formatter(
            # Library records may carry ``extra`` fields; our own lines never come here.
            foreign_pre_chain=[*context, structlog.stdlib.ExtraAdder(), *stamp],
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                *pre_render,
                CappedRenderer(renderer, keeps_fields=fmt == "json", as_text=True),
            ],
        )
    )
    # No record looks up its thread, process or caller: no line shows them, and gevent
    # makes a dummy Thread for each greenlet whose thread is asked for. (``_srcfile`` is
    # the switch the standard library's own comment names for the caller.)
    logging.logThreads = logging.logProcesses = logging.logMultiprocessing = False
    logging._srcfile = None
    root = logging.getLogger()
    for previous in root.handlers:
        if isinstance(previous, BatchedLineHandler):
            previous.close()  # a second configure (tests) must not leave a flusher behind
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    quiet_kafka_python(root.level)


def flush_logs() -> None:
    """Write out every line still waiting in a handler (tests, and before an exit)."""
    for handler in logging.getLogger().handlers:
        handler.flush()


def say_after_logs(line: str) -> None:
    """``line`` on stderr, after every log line still waiting for its batch (the CLI's
    last word: what led to it comes first)."""
    flush_logs()
    print(line, file=sys.stderr)  # noqa: T201 - the CLI's own line, not a log line
