"""Paths a job names, kept inside the directory the worker was given for them.

A job's payload comes from whoever can write to the jobs topic; a path like
``../../etc/passwd`` or a symlink out of the root must not let it read or overwrite
files the worker can reach.
"""

from __future__ import annotations

import os
from pathlib import Path, PurePosixPath

from jobworker.adapters.executors.payload_fields import shown
from jobworker.domain.errors import InvalidPayload

# Linux refuses a file name over 255 bytes and a path over 4096 with ENAMETOOLONG, an
# OSError deep in pathlib; checked here first, a long path is a plain invalid payload.
# 1 KiB leaves the root directory 3 KiB, and no sane job names a deeper file.
MAX_RELATIVE_PATH_BYTES = 1024
MAX_NAME_BYTES = 255


def resolve_inside(root: Path, relative: str, field: str) -> Path:
    """Return ``root / relative`` with symlinks resolved, refusing anything outside ``root``.

    ``root`` must already be resolved. Raises ``InvalidPayload`` naming ``field`` for an
    empty, absolute, too long or ``..``-containing path, or one that a symlink leads out
    of root.
    """
    check_relative_path(relative, field)
    pure = PurePosixPath(relative)
    if pure.is_absolute():
        raise InvalidPayload(
            f"field {field!r} must be a path relative to its root directory, got {relative!r}"
        )
    if ".." in pure.parts:
        raise InvalidPayload(f"field {field!r} must not contain '..', got {relative!r}")
    try:
        resolved = (root / pure).resolve()
    except (OSError, RuntimeError) as error:  # RuntimeError: a symlink loop
        raise InvalidPayload(f"field {field!r}: cannot resolve {relative!r}: {error}") from error
    if resolved == root or not resolved.is_relative_to(root):
        raise InvalidPayload(f"field {field!r} leads outside its root directory: {relative!r}")
    return resolved


def check_relative_path(relative: str, field: str) -> None:
    """Raise ``InvalidPayload`` unless ``relative`` is a path the file system can take."""
    if not relative or "\x00" in relative:
        raise InvalidPayload(f"field {field!r} must be a non-empty relative path")
    try:
        encoded = os.fsencode(relative)
    except UnicodeEncodeError:
        raise InvalidPayload(f"field {field!r} is not valid Unicode text") from None
    if len(encoded) > MAX_RELATIVE_PATH_BYTES:
        raise InvalidPayload(
            f"field {field!r} is a path of {len(encoded)} bytes, above the "
            f"{MAX_RELATIVE_PATH_BYTES}-byte limit (starts {shown(relative)})"
        )
    longest = max(encoded.split(b"/"), key=len)
    if len(longest) > MAX_NAME_BYTES:
        raise InvalidPayload(
            f"field {field!r} has a file name of {len(longest)} bytes, above the "
            f"{MAX_NAME_BYTES}-byte limit (starts {shown(os.fsdecode(longest))})"
        )
