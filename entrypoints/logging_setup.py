"""structlog for everything: our own events and the standard-library records of the
application layer and libraries, rendered as JSON lines (for ELK/Loki) or as text."""

from __future__ import annotations

import logging
import sys
from collections.abc import MutableMapping
from typing import Any

import structlog

# A field longer than this is cut: one job's 900 KB URL must not make a 1.8 MB log
# line, which log shippers split or drop. Tracebacks get more room than other fields.
MAX_FIELD_CHARS = 2_000
MAX_TRACEBACK_CHARS = 16_000
_LONG_FIELDS = frozenset({"exception", "stack", "stack_info"})
# Values whose text is short by nature; the rest are measured by their repr.
_SHORT_TYPES = (int, float, bool, type(None))


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
        for key, value in event_dict.items():
            if isinstance(value, _SHORT_TYPES):
                continue
            cap = self.max_traceback_chars if key in _LONG_FIELDS else self.max_chars
            text = value if isinstance(value, str) else repr(value)
            if len(text) > cap:
                event_dict[key] = cut(text, cap)
        return event_dict


def cut(text: str, max_chars: int) -> str:
    """``text`` cut to ``max_chars`` characters, marked with the number cut."""
    return f"{text[:max_chars]}…[cut {len(text) - max_chars} chars]"


def configure_logging(fmt: str = "json", level: str = "info") -> None:
    """Route structlog and stdlib logging through one renderer on stderr."""
    shared: list[structlog.types.Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.stdlib.ExtraAdder(),
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        # Tracebacks as text in both formats, so that the cap below bounds them too
        # (and the console shows no local variables, which may hold secrets).
        structlog.processors.format_exc_info,
    ]
    renderer: structlog.types.Processor
    if fmt == "json":
        renderer = structlog.processors.JSONRenderer()
    else:
        renderer = structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
    structlog.configure(
        processors=[*shared, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=shared,
            # Last before the renderer: every record, ours or a library's, passes here.
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                FieldCap(),
                renderer,
            ],
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # kafka-python is chatty at INFO (every rebalance step); its warnings still show.
    logging.getLogger("kafka").setLevel(max(logging.WARNING, root.level))
    # A new group's first assignment is often made before the topic's metadata arrived;
    # the group rejoins at once with the partitions. The warning says nothing to act on.
    logging.getLogger("kafka.coordinator.assignors.range").setLevel(max(logging.ERROR, root.level))
