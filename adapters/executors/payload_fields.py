"""Reading typed fields out of a JSON payload, with errors that name the field.

Every failure raises ``InvalidPayload`` (the job ends REJECTED) with a message a
producer can act on: which field, what was expected, what was found. A message quotes
at most the start of a value (``shown``): the reason goes to Core and to the log, and
the value may be a megabyte long.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Set
from typing import Any

import orjson

from jobworker.domain.errors import InvalidPayload

# Common servers refuse a request line above 8 KiB (nginx, Apache): a longer URL
# cannot work anyway.
MAX_URL_CHARS = 8192
_SHOWN_CHARS = 64
_UNKNOWN_FIELDS_SHOWN = 5


def load_object(payload: str, known_fields: Set[str]) -> dict[str, Any]:
    """Parse ``payload`` as a JSON object whose keys are all in ``known_fields``.

    Unknown keys are refused rather than ignored: a misspelt ``timout_ms`` silently
    falling back to a default is worse than a rejection that names it.
    """
    try:
        # orjson parses a small payload in a tenth of json.loads's time; what it refuses
        # (NaN, lone surrogates, invalid JSON) goes to json.loads, whose answer (and
        # error message) is the one that counts, as before. orjson reads an integer
        # beyond 64 bits as a float: out of every integer field's range either way.
        fields = orjson.loads(payload)
    except orjson.JSONDecodeError:
        try:
            fields = json.loads(payload)
        except ValueError as error:
            raise InvalidPayload(f"payload is not valid JSON: {error}") from error
    if not isinstance(fields, dict):
        raise InvalidPayload(f"payload must be a JSON object, got {_json_type(fields)}")
    if not fields.keys() <= known_fields:  # the usual payload: one subset test
        unknown = sorted(fields.keys() - known_fields)
        listed = ", ".join(map(shown, unknown[:_UNKNOWN_FIELDS_SHOWN]))
        more = len(unknown) - _UNKNOWN_FIELDS_SHOWN
        raise InvalidPayload(
            f"unknown payload field(s) {listed}{f' and {more} more' if more > 0 else ''}; "
            f"known fields: {', '.join(sorted(known_fields))}"
        )
    return fields


def required_str(fields: Mapping[str, Any], name: str, *, max_length: int) -> str:
    """A non-empty string field of at most ``max_length`` characters that must be present."""
    value = fields.get(name)
    if value is None:
        raise InvalidPayload(f"field {name!r} is required")
    if not value and isinstance(value, str):
        raise InvalidPayload(f"field {name!r} must not be empty")
    return checked_str(value, f"field {name!r}", max_length)


def optional_str(fields: Mapping[str, Any], name: str, default: str, *, max_length: int) -> str:
    """A string field of at most ``max_length`` characters; ``default`` when absent or null."""
    value = fields.get(name)
    if value is None:
        return default
    return checked_str(value, f"field {name!r}", max_length)


def checked_str(value: object, what: str, max_length: int) -> str:
    """``value`` if it is a string of at most ``max_length`` characters.

    ``what`` names it in the error (``"field 'url'"``, ``"header 'Accept'"``).
    """
    if not isinstance(value, str):
        raise InvalidPayload(f"{what} must be a string, got {_json_type(value)}")
    if len(value) > max_length:
        raise InvalidPayload(
            f"{what} is {len(value)} characters, above the {max_length} limit "
            f"(starts {shown(value)})"
        )
    return value


def shown(value: str, max_chars: int = _SHOWN_CHARS) -> str:
    """``repr(value)``, cut to its first ``max_chars`` characters (marked with …)."""
    if len(value) <= max_chars:
        return repr(value)
    return f"{value[:max_chars]!r}…"


def optional_bool(fields: Mapping[str, Any], name: str, default: bool) -> bool:
    value = fields.get(name)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise InvalidPayload(f"field {name!r} must be true or false, got {_json_type(value)}")
    return value


def required_int(fields: Mapping[str, Any], name: str, minimum: int, maximum: int) -> int:
    """An integer field in ``[minimum, maximum]`` that must be present."""
    return _int_field(fields, name, None, minimum, maximum)


def optional_int(
    fields: Mapping[str, Any], name: str, default: int, minimum: int, maximum: int
) -> int:
    """An integer field in ``[minimum, maximum]``; ``default`` when absent or null."""
    return _int_field(fields, name, default, minimum, maximum)


def _int_field(
    fields: Mapping[str, Any], name: str, default: int | None, minimum: int, maximum: int
) -> int:
    value = fields.get(name)
    if value is None:
        if default is None:
            raise InvalidPayload(f"field {name!r} is required")
        return default
    # JSON true/false are Python bools, which are ints: refuse them explicitly.
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidPayload(f"field {name!r} must be an integer, got {_json_type(value)}")
    if not minimum <= value <= maximum:
        raise InvalidPayload(f"field {name!r} must be between {minimum} and {maximum}, got {value}")
    return value


def _json_type(value: object) -> str:
    names = {
        bool: "a boolean",
        int: "a number",
        float: "a number",
        str: "a string",
        list: "an array",
        dict: "an object",
    }
    if value is None:
        return "null"
    shown = json.dumps(value) if isinstance(value, bool | int | float) else ""
    return f"{names.get(type(value), type(value).__name__)}{f' ({shown})' if shown else ''}"
