"""The W3C trace context of a Kafka record, picked from its headers.

Runs for every record, tracing on or off, so it imports nothing of OpenTelemetry and
costs one test for a record without headers (the usual case).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from types import MappingProxyType

TRACE_HEADER_NAMES = frozenset({"traceparent", "tracestate"})
# A traceparent is 55 characters; a tracestate at most 32 members of ~257. Anything
# longer is not trace context, and a job must not carry it around.
MAX_TRACE_HEADER_BYTES = 8_192

_NONE: Mapping[str, str] = MappingProxyType({})


def trace_headers(headers: Iterable[tuple[str, bytes | None]] | None) -> Mapping[str, str]:
    """``traceparent`` and ``tracestate`` from a record's headers, as text.

    Header names are matched without regard to case (HTTP producers write them either
    way); the last one of a name wins. A value that is not UTF-8 or too long is kept
    cut and mended, not dropped: the tracing observer then finds it malformed and says
    so, and the job runs without a parent.
    """
    if not headers:
        return _NONE
    found: dict[str, str] = {}
    for name, value in headers:
        key = name.lower()
        if key not in TRACE_HEADER_NAMES or value is None:
            continue
        found[key] = value[:MAX_TRACE_HEADER_BYTES].decode("utf-8", "replace")
    return found or _NONE
