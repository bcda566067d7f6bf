"""Bounds on what a job may carry, checked before any executor sees it.

A job comes from whoever can write to the jobs topic. Without bounds, a 900 KB id, a
payload nested 100,000 deep (``json.loads`` dies with ``RecursionError``) or a
megabyte of metadata copied into the result turns bad input into tracebacks, huge
log lines and results Core cannot take. Checked here, such a job ends REJECTED with a
short reason.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, fields

from jobworker.domain.model import Job

MIB = 1024 * 1024

# A JSON string, escapes included; an unterminated one runs to the end of the text,
# as it would for the parser, which then fails without looking further.
_JSON_STRING = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"?', re.DOTALL)
_NOT_A_BRACKET = re.compile(r"[^\[\]{}]+")


@dataclass(frozen=True, slots=True)
class JobLimits:
    """The largest job the worker runs. Defaults are far above any sane producer's.

    - ``max_id_chars`` 256: ids are UUIDs (36) or ULIDs (26); keys of that size are
      already unusual in Kafka or a database.
    - ``max_type_chars`` 128: type names are short words (``IMAGE_RESIZE``).
    - ``max_payload_bytes`` 1 MiB (UTF-8): Kafka's default message limit is 1 MB, so
      a larger payload did not come through the usual route; the setting
      ``MAX_PAYLOAD_BYTES`` raises it for a deployment that needs more.
    - ``max_payload_depth`` 64: the built-in payloads are two levels deep; the JSON
      parser recurses once per level and would fail near 1,000.
    - metadata (correlation ids, tenant, trace context): 64 entries, keys of at most
      256 and values of at most 4,096 characters, 16 KiB in all. It is copied into the
      result, so it must not crowd out the output there.
    """

    max_id_chars: int = 256
    max_type_chars: int = 128
    max_payload_bytes: int = MIB
    max_payload_depth: int = 64
    max_metadata_entries: int = 64
    max_metadata_key_chars: int = 256
    max_metadata_value_chars: int = 4096
    max_metadata_bytes: int = 16 * 1024

    def __post_init__(self) -> None:
        for limit in fields(self):
            if getattr(self, limit.name) < 1:
                raise ValueError(f"{limit.name} must be at least 1")

    def violation(self, job: Job) -> str | None:
        """Why ``job`` is over a limit, in one short line; None when it is within all."""
        if len(job.id) > self.max_id_chars:
            return f"job id is {len(job.id)} characters, above the {self.max_id_chars} limit"
        if len(job.type) > self.max_type_chars:
            return f"job type is {len(job.type)} characters, above the {self.max_type_chars} limit"
        return self._payload_violation(job.payload) or _metadata_cut(job.metadata, self)[1]

    def capped_metadata(self, metadata: Mapping[str, str]) -> dict[str, str]:
        """The entries of ``metadata``, in order, up to the first that breaks a limit."""
        return _metadata_cut(metadata, self)[0]

    def _payload_violation(self, payload: str) -> str | None:
        # A character is at most 4 UTF-8 bytes: most payloads need no encoding to tell.
        if len(payload) * 4 > self.max_payload_bytes:
            size = len(payload.encode("utf-8", "surrogatepass"))
            if size > self.max_payload_bytes:
                return (
                    f"invalid payload: {size} bytes, above the {self.max_payload_bytes}-byte limit"
                )
        if nested_deeper_than(payload, self.max_payload_depth):
            return f"invalid payload: nested deeper than {self.max_payload_depth} levels"
        return None


DEFAULT_LIMITS = JobLimits()


def nested_deeper_than(text: str, max_depth: int) -> bool:
    """Whether JSON ``text`` nests arrays/objects deeper than ``max_depth``.

    Neither parses nor recurses: brackets inside strings are dropped, then the rest
    are counted, so a 100,000-deep payload costs milliseconds and no stack. Text that
    is not JSON is judged the same way; a parser would refuse it anyway, and no deeper
    than the brackets counted here.
    """
    if text.count("[") + text.count("{") <= max_depth:
        return False
    depth = 0
    for bracket in _NOT_A_BRACKET.sub("", _JSON_STRING.sub("", text)):
        if bracket in "[{":
            depth += 1
            if depth > max_depth:
                return True
        elif depth:
            depth -= 1
    return False


def _metadata_cut(
    metadata: Mapping[str, str], limits: JobLimits
) -> tuple[dict[str, str], str | None]:
    """The entries within the limits, and why the next one was left out (None: none was)."""
    kept: dict[str, str] = {}
    total = 0
    for key, value in metadata.items():
        if len(kept) == limits.max_metadata_entries:
            return kept, (
                f"metadata has {len(metadata)} entries, above the "
                f"{limits.max_metadata_entries} limit"
            )
        if len(key) > limits.max_metadata_key_chars:
            return kept, (
                f"metadata key is {len(key)} characters, above the "
                f"{limits.max_metadata_key_chars} limit"
            )
        if len(value) > limits.max_metadata_value_chars:
            return kept, (
                f"metadata value of {key!r} is {len(value)} characters, above the "
                f"{limits.max_metadata_value_chars} limit"
            )
        total += len(key.encode("utf-8", "surrogatepass"))
        total += len(value.encode("utf-8", "surrogatepass"))
        if total > limits.max_metadata_bytes:
            size = _utf8_size(metadata)
            return kept, (
                f"metadata is {size} bytes, above the {limits.max_metadata_bytes}-byte limit"
            )
        kept[key] = value
    return kept, None


def _utf8_size(metadata: Mapping[str, str]) -> int:
    return sum(
        len(key.encode("utf-8", "surrogatepass")) + len(value.encode("utf-8", "surrogatepass"))
        for key, value in metadata.items()
    )
