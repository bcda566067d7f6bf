"""Paths a job names, kept inside the directory the worker was given for them.

A job's payload comes from whoever can write to the jobs topic; a path like
``../../etc/passwd`` or a symlink out of the root must not let it read or overwrite
files the worker can reach.
"""

from __future__ import annotations

from pathlib import Path, PurePosixPath

from domain.errors import InvalidPayload


def resolve_inside(root: Path, relative: str, field: str) -> Path:
    """Return ``root / relative`` with symlinks resolved, refusing anything outside ``root``.

    ``root`` must already be resolved. Raises ``InvalidPayload`` naming ``field`` for an
    empty, absolute or ``..``-containing path, or one that a symlink leads out of root.
    """
    if not relative or "\x00" in relative:
        raise InvalidPayload(f"field {field!r} must be a non-empty relative path")
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
