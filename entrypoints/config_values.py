"""Parsers and checks for setting values: durations (``500ms``, ``30s``, ``2m``), sizes,
booleans, choices, limits. Each raises ``ValueError`` with a one-line reason."""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from enum import StrEnum
from pathlib import Path
from typing import TypeVar

N = TypeVar("N", int, float)
M = TypeVar("M", bound=StrEnum)

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*$")
_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
_BARE_NUMBER = re.compile(r"^\d+(?:\.\d+)?$")
# A variable named for its unit (``POLL_TIMEOUT_MS``) takes a bare number in that unit.
_UNIT_SUFFIXES = (("_MS", "ms"), ("_SECONDS", "s"), ("_S", "s"))
_SIZE = re.compile(r"^\s*(\d+)\s*(b|kb|kib|mb|mib|gb|gib)?\s*$", re.IGNORECASE)
_SIZE_UNITS = {
    "b": 1,
    "kb": 1000,
    "kib": 1024,
    "mb": 1000**2,
    "mib": 1024**2,
    "gb": 1000**3,
    "gib": 1024**3,
}
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


def parse_duration(text: str) -> float:
    """``500ms`` → 0.5, ``30s`` → 30.0, ``2m`` → 120.0; ``0`` → 0.0.

    Any other number without a unit is refused: ``300000`` could be Kafka's milliseconds
    or seconds, and read as the wrong one it is a worker that never times out. A variable
    whose name says its unit gets it added first (``with_unit``).
    """
    match = _DURATION.match(text)
    if not match:
        raise ValueError(f"{text!r} is not a duration; write e.g. 500ms, 30s, 2m or 1h")
    number, unit = match.groups()
    if unit is None and float(number) != 0:
        as_ms = _in_largest_unit(float(number) / 1000)
        meant = f" (= {as_ms})" if as_ms != f"{number}ms" else ""
        raise ValueError(
            f"{text!r} has no unit: write {number}ms{meant} or {number}s (units: ms, s, m, h)"
        )
    return float(number) * _DURATION_UNITS[unit or "s"]


def _in_largest_unit(seconds: float) -> str:
    for unit in ("h", "m", "s"):
        count = seconds / _DURATION_UNITS[unit]
        if count >= 1 and count.is_integer():
            return f"{count:g}{unit}"
    return f"{seconds * 1000:g}ms"


def unit_in_name(name: str) -> str | None:
    """The unit a variable's name gives its bare numbers (``*_MS``: ms, ``*_S``: s)."""
    return next((unit for suffix, unit in _UNIT_SUFFIXES if name.endswith(suffix)), None)


def with_unit(text: str, name: str) -> str:
    """A duration as written, with the unit its variable's name gives to a bare number
    (``0`` has none: ``0s``); anything else unchanged, for ``parse_duration`` to judge."""
    number = text.strip()
    if not _BARE_NUMBER.match(number):
        return text
    unit = unit_in_name(name)
    if unit is None:
        return "0s" if float(number) == 0 else text
    return f"{number}{unit}"


def parse_size(text: str) -> int:
    """``1048576``, ``512KiB``, ``20MB``, ``1MiB`` → bytes."""
    match = _SIZE.match(text)
    if not match:
        raise ValueError(f"{text!r} is not a size; write e.g. 1048576, 512KiB or 20MiB")
    number, unit = match.groups()
    return int(number) * _SIZE_UNITS[(unit or "b").lower()]


def parse_bool(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in _TRUE:
        return True
    if lowered in _FALSE:
        return False
    raise ValueError(f"{text!r} is not a boolean; write true or false")


def parse_int(text: str) -> int:
    try:
        return int(text.strip())
    except ValueError:
        raise ValueError(f"{text!r} is not a whole number") from None


# -- checks: a parser wrapped with a rule; each raises ValueError saying what is wrong --


def one_of(modes: type[M]) -> Callable[[str], M]:
    """The mode a word names, in any case (``SASL_SSL``, ``sasl_ssl``)."""
    by_word = {mode.lower(): mode for mode in modes}

    def parse(text: str) -> M:
        mode = by_word.get(text.strip().lower())
        if mode is None:
            raise ValueError(f"{text!r} is not one of {', '.join(by_word)}")
        return mode

    return parse


def positive(parse: Callable[[str], N]) -> Callable[[str], N]:
    def check(text: str) -> N:
        value = parse(text)
        if value <= 0:
            raise ValueError(f"{text!r} must be greater than zero")
        return value

    return check


def non_negative(parse: Callable[[str], N]) -> Callable[[str], N]:
    def check(text: str) -> N:
        value = parse(text)
        if value < 0:
            raise ValueError(f"{text!r} must not be negative")
        return value

    return check


def at_most(limit: int, why: str, parse: Callable[[str], N]) -> Callable[[str], N]:
    def check(text: str) -> N:
        value = parse(text)
        if value > limit:
            raise ValueError(f"{text!r} is above the limit of {limit}: {why}")
        return value

    return check


def duration_at_least(minimum_s: float) -> Callable[[str], float]:
    def check(text: str) -> float:
        value = parse_duration(text)
        if value < minimum_s:
            raise ValueError(f"{text!r} is below the minimum of {minimum_s * 1000:g}ms")
        return value

    return check


def parse_address(text: str) -> str:
    """``host:port`` of a gRPC server, without a scheme."""
    address = text.strip()
    if "://" in address or address.startswith(("unix:", "dns:")):
        raise ValueError(f"{text!r}: give host:port, without a scheme (TLS is set by GRPC_TLS_*)")
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit() or any(c.isspace() or c in "/@" for c in host):
        raise ValueError(f"{text!r} is not host:port")
    if not 0 < int(port) < 65536:
        raise ValueError(f"{text!r}: the port must be 1-65535")
    return address


def parse_port(text: str) -> int:
    value = parse_int(text)
    if not 0 <= value <= 65535:
        raise ValueError(f"{text!r} is not a port: 0 (off) or 1-65535")
    return value


def parse_name(text: str) -> str:
    # Kafka's own rules for a topic (length, characters) are checked where it is used.
    return text.strip()


def readable_file(what: str) -> Callable[[str], str]:
    """A path that can be opened for reading now (``-``: stdin, not checked)."""

    def check(text: str) -> str:
        path = text.strip()
        if path != "-":
            try:
                open(path, "rb").close()  # noqa: PTH123 - the one true test is to open it
            except OSError as error:
                raise ValueError(f"cannot read {what} {path}: {error.strerror}") from None
        return path

    return check


def writable_file(what: str) -> Callable[[str], str]:
    """A path a file can be appended to, its missing folders made (``-``: stdout).

    Checked without creating anything: ``jobworker settings`` checks it too.
    """

    def check(text: str) -> str:
        path = text.strip()
        if path == "-":
            return path
        target = Path(path)
        if target.is_dir():
            raise ValueError(f"cannot write {what} {path}: it is a folder")
        existing = target if target.exists() else target.parent
        while not existing.exists():
            existing = existing.parent
        if existing != target and not existing.is_dir():
            raise ValueError(f"cannot write {what} {path}: {existing} is not a folder")
        if not os.access(existing, os.W_OK | (os.X_OK if existing.is_dir() else 0)):
            raise ValueError(f"cannot write {what} {path}: {existing} is not writable")
        return path

    return check
