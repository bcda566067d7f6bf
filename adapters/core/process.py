"""The reference Core as a child process, for tests and demos that need a real one.

Core runs in its own process so that it can be killed and restarted on the same port
and database (a Core outage), and so that its gevent patching never reaches the caller.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from types import TracebackType

READY_LINE_PREFIX = "core listening on port "

# Where the running ``jobworker`` package was imported from (site-packages, or an
# editable install's link tree: the path is not resolved): the child imports the same one.
_IMPORT_ROOT = Path(__file__).parents[3]

_READY_POLL_S = 0.02


class CoreProcess:
    """``jobworker core`` on ``127.0.0.1:port`` with results in ``db_path``.

    ``start`` returns once Core accepts calls; ``stop`` (SIGTERM, graceful) and ``kill``
    (SIGKILL, an outage) end it; ``start`` again brings it back on the same port and file.
    """

    def __init__(
        self,
        port: int,
        db_path: str | Path,
        *,
        host: str = "127.0.0.1",
        log_path: str | Path | None = None,
    ) -> None:
        """Nothing starts yet. Core's output is appended to ``log_path`` (default: beside
        the database, ``<db>.log``): a file, unlike a pipe, never fills up and blocks Core.
        """
        self.port = port
        self.db_path = Path(db_path)
        self.address = f"{host}:{port}"
        self.log_path = Path(log_path) if log_path is not None else Path(f"{db_path}.log")
        self._process: subprocess.Popen[bytes] | None = None

    def start(self, timeout_s: float = 15.0) -> None:
        """Start Core and wait until it serves; raises ``RuntimeError`` if it does not."""
        if self._process is not None:
            raise RuntimeError("Core is already running")
        command = [sys.executable, "-m", "jobworker", "core"]
        command += ["--address", self.address, "--db", str(self.db_path)]
        with self.log_path.open("ab") as log:
            log_offset = log.tell()
            self._process = subprocess.Popen(
                command,
                stdout=log,
                stderr=subprocess.STDOUT,
                env={**os.environ, "PYTHONPATH": _python_path(), "PYTHONUNBUFFERED": "1"},
            )
        if not self._wait_until_ready(log_offset, timeout_s):
            self.kill()
            output = self._log_since(log_offset) or f"no output within {timeout_s} s"
            raise RuntimeError(f"Core did not start on {self.address}:\n{output}")

    def stop(self, timeout_s: float = 10.0) -> int:
        """SIGTERM and wait; returns the exit code. A no-op (0) when not running."""
        if self._process is None:
            return 0
        process, self._process = self._process, None
        process.terminate()
        try:
            return process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
            raise

    def kill(self) -> None:
        """SIGKILL and reap: Core vanishes mid-work, as in a crash."""
        if self._process is None:
            return
        process, self._process = self._process, None
        process.kill()
        process.wait()

    def __enter__(self) -> CoreProcess:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.kill()

    def _wait_until_ready(self, log_offset: int, timeout_s: float) -> bool:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if READY_LINE_PREFIX in self._log_since(log_offset):
                return True
            if self._process is None or self._process.poll() is not None:
                return False
            time.sleep(_READY_POLL_S)
        return False

    def _log_since(self, offset: int) -> str:
        with self.log_path.open("rb") as log:
            log.seek(offset)
            return log.read().decode(errors="replace")


def _python_path() -> str:
    existing = os.environ.get("PYTHONPATH")
    return f"{_IMPORT_ROOT}{os.pathsep}{existing}" if existing else str(_IMPORT_ROOT)
