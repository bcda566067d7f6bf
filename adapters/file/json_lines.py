"""A JSON Lines file that is appended to: results, refused results, dead letters."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import IO

# json.dumps builds a new encoder on every call that passes an option.
_encode = json.JSONEncoder(ensure_ascii=False).encode


def json_line(record: dict[str, object]) -> str:
    """``record`` as one line of a JSON Lines file, newline included."""
    return _encode(record) + "\n"


class AppendedJsonLines:
    """Appends whole lines and flushes them before ``append`` returns.

    The file (and its folder) is made on the first append, so a run that writes nothing
    leaves nothing behind; ``-`` is stdout. An unwritable file raises OSError: the
    caller says what the file was for.
    """

    def __init__(self, path: Path | str) -> None:
        self.path = str(path)
        self._stream: IO[str] | None = None

    def append(self, lines: str) -> None:
        if self._stream is None:
            if self.path == "-":
                self._stream = sys.stdout
            else:
                target = Path(self.path)
                target.parent.mkdir(parents=True, exist_ok=True)
                self._stream = target.open("a", encoding="utf-8")
        self._stream.write(lines)
        self._stream.flush()

    def close(self) -> None:
        if self._stream is not None and self.path != "-":
            self._stream.close()
        self._stream = None
