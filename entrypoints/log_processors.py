"""The processors every log line passes through, ours and the libraries': the field
cap, the timestamp, the JSON serializer, and enums by name in the text format."""

from __future__ import annotations

import enum
import json
import time
from collections.abc import MutableMapping
from typing import Any

import orjson

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
    """``renderer``, with ``FieldCap`` applied to lines long enough to need it, giving
    bytes (for the writer) or, with ``as_text``, text (for a logging.Formatter).

    A field longer than the cap makes the rendered line longer than the cap, so a line
    within it has no field to cut: most lines skip FieldCap's walk over their fields
    (what that saves: docs/benchmarks.md). A longer line is rendered again from capped
    fields. ``keeps_fields``: the renderer leaves the event dict as it found it (JSON
    does; the console renderer pops fields, so it renders a copy).
    """

    def __init__(self, renderer: Any, keeps_fields: bool, as_text: bool = False) -> None:
        self._renderer = renderer
        self._keeps_fields = keeps_fields
        self._as_text = as_text
        self._cap = FieldCap()
        self._short = min(self._cap.max_chars, self._cap.max_traceback_chars)

    def __call__(self, logger: Any, method_name: str, event_dict: MutableMapping[str, Any]) -> Any:
        fields = event_dict if self._keeps_fields else dict(event_dict)
        line = self._renderer(logger, method_name, fields)
        if len(line) > self._short:
            line = self._renderer(logger, method_name, self._cap(logger, method_name, event_dict))
        if self._as_text:
            return line if isinstance(line, str) else line.decode()
        return line if isinstance(line, bytes) else line.encode("utf-8", "replace")


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


class UtcTimestamp:
    """structlog's ``TimeStamper(fmt="iso", utc=True)``, but the date and time of day
    are formatted once a second, not once a line (docs/benchmarks.md has what that
    saves). Always six digits of microseconds."""

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


def json_bytes(event_dict: Any, **dumps_kw: Any) -> bytes:
    """The JSON renderer's serializer: orjson, as structlog's performance guide advises
    (its bytes go to the writer as they are); json.dumps for what orjson refuses (an
    integer beyond 64 bits). ``default`` is structlog's: repr for other objects."""
    try:
        return orjson.dumps(
            event_dict, default=dumps_kw.get("default"), option=orjson.OPT_NON_STR_KEYS
        )
    except TypeError:  # orjson.JSONEncodeError is one
        return json.dumps(event_dict, **dumps_kw).encode()
