"""Where an IMAGE_RESIZE job's source bytes come from, and reading them within limits.

A source string is one of:

- ``http://...`` or ``https://...``: fetched through the SSRF-guarded HTTP client;
- ``data:image/png;base64,<data>``: inline bytes (a base64 ``data:`` URL);
- anything else: a relative path under the input root (no ``..``, no symlink out).
"""

from __future__ import annotations

import base64
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Protocol

from jobworker.adapters.executors.contained_paths import check_relative_path, resolve_inside
from jobworker.adapters.executors.payload_fields import MAX_URL_CHARS, checked_str, shown
from jobworker.domain.errors import InvalidPayload, JobFailed

_DATA_URL = re.compile(r"data:(?P<media_type>[^,;]*)(?P<params>(;[^,;]*)*),(?P<data>.*)", re.DOTALL)
_WHITESPACE = re.compile(r"\s+")


class SourceFetcher(Protocol):
    """What the image executor needs from an HTTP client (``SafeHttpClient`` fits)."""

    def get_bytes(self, url: str, max_bytes: int, timeout_s: float) -> bytes:
        """Return the body of a 2xx GET of ``url``; raise the domain errors otherwise."""
        ...


@dataclass(frozen=True, slots=True)
class ImageSource:
    """A parsed ``source`` field; ``location`` is a URL, base64 text or a relative path."""

    kind: Literal["url", "data", "file"]
    location: str


def max_source_chars(max_source_bytes: int) -> int:
    """The longest ``source`` field worth reading: a data: URL of ``max_source_bytes``.

    That is its base64 text, an eighth more for line breaks in it, and room for the
    ``data:image/png;base64,`` header and its parameters.
    """
    return (max_source_bytes + 2) // 3 * 4 * 9 // 8 + 256


def parse_source(value: str, max_source_bytes: int) -> ImageSource:
    """Classify a ``source`` field; raise ``InvalidPayload`` for a malformed or too long one.

    Each kind has its own length limit: a URL ``MAX_URL_CHARS``, a path that of
    ``check_relative_path``, a data: URL ``max_source_chars(max_source_bytes)``.
    """
    lowered = value[:8].lower()
    if lowered.startswith(("http://", "https://")):
        return ImageSource("url", checked_str(value, "field 'source' URL", MAX_URL_CHARS))
    if lowered.startswith("data:"):
        checked_str(value, "field 'source' data URL", max_source_chars(max_source_bytes))
        match = _DATA_URL.fullmatch(value)
        if match is None or ";base64" not in match["params"].lower():
            raise InvalidPayload(
                "field 'source' data URL must look like 'data:image/png;base64,<base64 data>'"
            )
        return ImageSource("data", match["data"])
    if "://" in value:
        scheme = value.split("://", 1)[0]
        raise InvalidPayload(
            f"field 'source' has unsupported scheme {shown(scheme)}; use an http(s) URL, "
            "a base64 data: URL or a path relative to the input directory"
        )
    check_relative_path(value, "source")
    return ImageSource("file", value)


def decode_data(encoded: str, max_bytes: int) -> bytes:
    """Decode base64 ``data:`` URL content, refusing more than ``max_bytes`` decoded."""
    compact = _WHITESPACE.sub("", encoded)
    if len(compact) // 4 * 3 > max_bytes + 2:
        raise InvalidPayload(
            f"field 'source' inline image is larger than the {max_bytes}-byte source limit"
        )
    try:
        data = base64.b64decode(compact, validate=True)
    except ValueError as error:  # binascii.Error, or non-ASCII characters
        raise InvalidPayload(f"field 'source' data URL is not valid base64: {error}") from error
    if len(data) > max_bytes:
        raise InvalidPayload(
            f"field 'source' inline image is larger than the {max_bytes}-byte source limit"
        )
    return data


def read_file(input_root: Path, relative: str, max_bytes: int) -> bytes:
    """Read a source file under ``input_root`` (resolved); blocking, run it off the hub.

    A missing file is the job's fault (REJECTED); a missing ``input_root`` the worker's
    (FAILED, naming the setting): it is not made at start, having nothing to hold.
    """
    if not input_root.is_dir():
        raise JobFailed(
            f"field 'source': the worker's input folder {input_root} (IMAGE_INPUT_ROOT)"
            f" does not exist, so {relative!r} cannot be read from it"
        )
    path = resolve_inside(input_root, relative, "source")
    try:
        if not path.exists():
            raise InvalidPayload(f"field 'source': no file {relative!r} in the input directory")
        if not path.is_file():  # a FIFO or device would block the reading thread forever
            raise InvalidPayload(f"field 'source': {relative!r} is not a regular file")
        with path.open("rb") as source:
            data = source.read(max_bytes + 1)
    except OSError as error:
        raise InvalidPayload(
            f"field 'source': cannot read {relative!r}: {error.strerror}"
        ) from error
    if len(data) > max_bytes:
        raise InvalidPayload(
            f"field 'source': file {relative!r} is larger than the {max_bytes}-byte source limit"
        )
    return data
