"""The root handler: finished log lines written to stderr in batches of whole lines."""

from __future__ import annotations

import _thread
import contextlib
import logging
import select
import sys
import threading
import time
from typing import Any

# INFO and DEBUG lines wait at most this long for the lines after them (one write for
# all); a WARNING or worse line is written at once, with every line before it.
FLUSH_INTERVAL_S = 0.1
_MAX_PENDING_BYTES = 64 * 1024
# What a pipe writes without interleaving another writer's bytes (POSIX: at least 512;
# 4096 on Linux).
_PIPE_BUF = getattr(select, "PIPE_BUF", 512)


class BatchedLineHandler(logging.Handler):
    """Writes its lines in batches instead of one write per line.

    The policy is ``logging.handlers.MemoryHandler(flushLevel=WARNING)``'s plus a
    timer: a line waits at most ``flush_interval_s`` (or until 64 KiB wait); a WARNING
    or worse line goes out at once, behind the lines before it, so what explains a
    failure is on stderr before the process can die of it. A SIGKILL loses at most the
    last interval's INFO lines. On a terminal every line is written as it comes.

    Not MemoryHandler itself: it keeps records and formats them when it flushes, in
    whichever greenlet flushes, so a line would lose the job fields of the greenlet that
    logged it; and it hands its target one record, so one write, at a time.
    """

    def __init__(self, stream: Any, flush_interval_s: float = FLUSH_INTERVAL_S) -> None:
        super().__init__()
        # Lines are bytes (structlog's JSON renderer makes bytes); a text stream's
        # buffer takes them as they are.
        self._write = getattr(stream, "buffer", stream).write
        self._stream = stream
        self._interval = flush_interval_s
        # The waiting lines, each ended by a newline, in one buffer. Kept as a list of
        # bytes objects (some 320 to a batch) and joined at the write, a line cost about
        # 1 µs more (issue 21; docs/benchmarks.md, "The cost of one log line").
        self._pending = bytearray()
        self._oldest = 0.0  # when the first pending line came
        self._each_line = bool(getattr(stream, "isatty", lambda: False)())
        self._flusher: threading.Thread | None = None
        self._closed = False

    def createLock(self) -> None:  # noqa: N802 - logging.Handler's name
        # The C lock even where gevent patched threading: it keeps other OS threads out,
        # and greenlets need no keeping out, since nothing done while holding it yields
        # to another greenlet. (gevent's Python RLock: see docs/benchmarks.md.)
        self.lock = _thread.RLock()

    def emit(self, record: logging.LogRecord) -> None:
        # Formatted now, in the greenlet that logged: its job fields are on the line.
        try:
            line = self.format(record).encode("utf-8", "replace")
        except RecursionError:
            raise
        except Exception:
            self.handleError(record)
            return
        self._add(line, record.levelno)

    def write_line(self, line: bytes, levelno: int) -> None:
        """A line rendered already, at ``levelno``: as ``handle`` of a record of it would."""
        if levelno < self.level:
            return
        with self.lock:  # type: ignore[union-attr]  # created by Handler.__init__
            self._add(line, levelno)

    def _add(self, line: bytes, levelno: int) -> None:
        now = time.monotonic()
        pending = self._pending
        if b"\n" in line:
            # A record of several lines (a traceback in the text format) is written
            # alone and whole, after what waits: the batch is cut only between records.
            self.flush()
            self._write_out(line + b"\n")
            return
        if not pending:
            self._oldest = now
        pending += line
        pending.append(0x0A)
        if (
            levelno >= logging.WARNING
            or self._each_line
            or len(pending) >= _MAX_PENDING_BYTES
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
            lines, self._pending = self._pending, bytearray()
            self._write_out(*_whole_line_chunks(lines))

    def _write_out(self, *chunks: bytes) -> None:
        try:
            for chunk in chunks:
                self._write(chunk)
                self._stream.flush()
        except Exception as error:
            # As StreamHandler's handleError: a broken or closed stderr must not break
            # the worker (or whichever greenlet logged); the lines are lost.
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


def sole_handler(logger: logging.Logger) -> BatchedLineHandler | None:
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


def _whole_line_chunks(lines: bytearray) -> list[bytes]:
    """``lines`` (each ended by a newline, none holding another) cut into chunks of whole
    lines of at most PIPE_BUF bytes (a longer line alone).

    Each is written and flushed on its own: a pipe writes up to PIPE_BUF bytes at once
    without interleaving, so the lines of worker processes sharing one stderr
    (``run --processes N``) never cut into each other.
    """
    chunks = []
    start, end = 0, len(lines)
    while start < end:
        stop = end
        if end - start > _PIPE_BUF:
            last = lines.rfind(b"\n", start, start + _PIPE_BUF)
            stop = last + 1 if last >= start else lines.index(b"\n", start) + 1
        chunks.append(bytes(lines[start:stop]))
        start = stop
    return chunks
