"""The finished offsets above a committed one, written into the commit's metadata string.

A partition's committed offset cannot pass a job that is still running, so without more
a restart redoes every job behind it that was already done. Each commit therefore
carries those done offsets in its metadata, and the next owner skips them.

Encoding, version 1 (``jw1``)::

    jw1:<committed offset>:<runs>

``runs`` is URL-safe base64 without padding of unsigned LEB128 varints: the lengths of
alternating runs of offsets starting at the committed offset, the first run not done
(possibly 0 long), the next done, and so on; offsets after the last run are not done.
The committed offset is repeated so that metadata left beside another offset (an
operator's reset) is recognised as stale. Any other text is not ours: it is ignored.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Iterable

VERSION = "jw1"
# Kafka's default offset.metadata.max.bytes: a longer string fails the whole commit.
METADATA_MAX_BYTES = 4096
# A string of at most 4096 bytes cannot honestly describe more offsets than this; a
# larger claim is garbage, refused before it can take memory.
MAX_OFFSETS = 4096 * 8 * 128


class UnreadableMetadataError(ValueError):
    """Commit metadata that claims to be ours but cannot be read (or is stale)."""


def encode(committed: int, finished: Iterable[int]) -> str:
    """The metadata string for ``committed`` and the done offsets above it ("" if none)."""
    runs: list[int] = []
    expected = committed  # the next offset, were the current done run to go on
    run_start = committed
    for offset in sorted(set(finished)):
        if offset < committed:
            continue
        if offset != expected:
            if runs:  # close the done run
                runs.append(expected - run_start)
            runs.append(offset - expected)  # the not-done gap before this offset
            run_start = offset
        elif not runs and offset == committed:
            runs.append(0)  # the committed offset itself is done: an empty first run
            run_start = offset
        expected = offset + 1
    if not runs:
        return ""
    runs.append(expected - run_start)
    data = bytearray()
    for run in runs:
        data += _varint(run)
    text = base64.urlsafe_b64encode(bytes(data)).rstrip(b"=").decode("ascii")
    return f"{VERSION}:{committed}:{text}"


def encode_within(
    committed: int, finished: Iterable[int], max_bytes: int = METADATA_MAX_BYTES
) -> tuple[str, bool]:
    """Like ``encode``, cut to ``max_bytes``: the metadata and whether it says it all.

    When the runs do not all fit, the leading ones that do are kept (the offsets after
    them count as not done, which is safe: they are redone), so a commit beside a
    scattered window still spares the next owner most of the finished work.
    """
    metadata = encode(committed, finished)
    if fits(metadata, max_bytes):
        return metadata, True
    prefix = f"{VERSION}:{committed}:"
    # base64 without padding: n bytes take ceil(4n / 3) characters.
    budget = (max_bytes - len(prefix)) * 3 // 4
    data = _runs_bytes(metadata[len(prefix) :])
    kept = bytearray()
    pending = bytearray()  # a not-done gap, kept only with the done run after it
    for index, run in enumerate(_varints(data)):
        encoded = _varint(run)
        if index % 2 == 0:
            pending = bytearray(encoded)
            continue
        if len(kept) + len(pending) + len(encoded) > budget:
            break
        kept += pending + encoded
    if not kept:
        return "", False
    text = base64.urlsafe_b64encode(bytes(kept)).rstrip(b"=").decode("ascii")
    return prefix + text, False


def fits(metadata: str, max_bytes: int = METADATA_MAX_BYTES) -> bool:
    """Whether the broker takes ``metadata`` (its limit counts UTF-8 bytes)."""
    return len(metadata.encode("utf-8")) <= max_bytes


def decode(metadata: str, committed: int) -> frozenset[int]:
    """The done offsets ``metadata`` records above ``committed``.

    Empty for "" (a commit without them). Raises UnreadableMetadataError for anything
    else that is not version 1 written beside ``committed``. A trailing NUL is not part
    of it: confluent-kafka writes one after the metadata it commits.
    """
    metadata = metadata.removesuffix("\x00")
    if not metadata:
        return frozenset()
    version, _, rest = metadata.partition(":")
    if version != VERSION:
        raise UnreadableMetadataError(f"not {VERSION} metadata: {metadata[:40]!r}")
    base_text, _, runs_text = rest.partition(":")
    if not base_text.isdigit() or int(base_text) != committed:
        raise UnreadableMetadataError(f"written beside offset {base_text!r}, not {committed}")
    runs = _varints(_runs_bytes(runs_text))
    if sum(runs) > MAX_OFFSETS:
        raise UnreadableMetadataError("claims more offsets than fit in the metadata")
    finished: set[int] = set()
    offset = committed
    for index, run in enumerate(runs):
        if index % 2:
            finished.update(range(offset, offset + run))
        offset += run
    return frozenset(finished)


def _runs_bytes(text: str) -> bytes:
    try:
        padded = text + "=" * (-len(text) % 4)
        return base64.b64decode(padded, altchars=b"-_", validate=True)
    except (binascii.Error, ValueError) as error:
        raise UnreadableMetadataError(f"bad base64: {error}") from None


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _varints(data: bytes) -> list[int]:
    values: list[int] = []
    value = shift = 0
    for byte in data:
        value |= (byte & 0x7F) << shift
        shift += 7
        if shift > 63:
            raise UnreadableMetadataError("varint too long")
        if not byte & 0x80:
            values.append(value)
            value = shift = 0
    if shift:
        raise UnreadableMetadataError("cut off in the middle of a varint")
    return values
