"""The end-to-end benchmark's child processes: the counting Core and the worker CLI."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
# The programs a run starts unless told otherwise (bench/vs_go.py starts Go ones).
E2E_CORE = (sys.executable, "-m", "bench.e2e_core")
JOBWORKER_RUN = (sys.executable, "-m", "jobworker", "run")
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
# Set by ``bench/e2e.py --profile DIR``: every worker is sampled by py-spy into DIR.
PROFILE_DIR: Path | None = None


def child_env(**settings: str) -> dict[str, str]:
    """This environment minus every jobworker setting, plus ``settings``."""
    from jobworker.entrypoints.settings import SETTINGS  # noqa: PLC0415 - only the harness needs it

    names = {s.name for s in SETTINGS}
    env = {k: v for k, v in os.environ.items() if k not in names}
    existing = env.get("PYTHONPATH")
    env["PYTHONPATH"] = f"{ROOT}{os.pathsep}{existing}" if existing else str(ROOT)
    return env | settings


class BenchCore:
    """``bench/e2e_core.py`` as a child process, driven over its stdin and stdout; or
    ``program``, any Core that speaks the same lines."""

    def __init__(self, mode: str, program: Sequence[str] = E2E_CORE) -> None:
        self.mode = mode
        self._process = subprocess.Popen(
            [*program, "--mode", mode],
            cwd=ROOT,
            env=child_env(PYTHONUNBUFFERED="1"),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        ready = self._read()
        if not ready.startswith("listening "):
            self.close()
            raise RuntimeError(f"bench Core did not start: {ready!r}")
        self.address = f"127.0.0.1:{ready.split()[1]}"

    def _read(self) -> str:
        assert self._process.stdout is not None
        return self._process.stdout.readline().strip()

    def command(self, line: str) -> str:
        assert self._process.stdin is not None
        self._process.stdin.write(line + "\n")
        self._process.stdin.flush()
        return self._read()

    def stats(self) -> dict[str, Any]:
        return dict(json.loads(self.command("stats")))

    def receipts(self, path: Path) -> dict[str, tuple[float, int, int]]:
        """job id -> (receipt time in ms since the epoch, the job's own time in ms, the
        job's start in ms since the epoch, by the worker's clock: the same machine's)."""
        self.command(f"receipts {path}")
        found: dict[str, tuple[float, int, int]] = {}
        with path.open(encoding="utf-8") as lines:
            for line in lines:
                job_id, at, job_ms, started = line.split()
                found.setdefault(job_id, (float(at), int(job_ms), int(started)))
        return found

    def close(self) -> None:
        if self._process.poll() is None:
            assert self._process.stdin is not None
            self._process.stdin.close()
            try:
                self._process.wait(10)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()

    def __enter__(self) -> BenchCore:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()


class WorkerProcess:
    """``python -m jobworker run`` (or ``argv``) with ``settings``; its output goes to
    ``log_path``."""

    def __init__(
        self, settings: dict[str, str], log_path: Path, argv: Sequence[str] = JOBWORKER_RUN
    ) -> None:
        self.log_path = log_path
        with log_path.open("ab") as log:
            self.process = subprocess.Popen(
                list(argv),
                cwd=ROOT,
                env=child_env(**settings),
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        self.pid = self.process.pid
        self.started = time.time() * 1000
        self.profiler: subprocess.Popen[bytes] | None = None
        if PROFILE_DIR is not None:
            # py-spy samples the worker for its whole life (``--profile DIR``): the
            # profile of exactly the run whose figures are printed.
            out = PROFILE_DIR / f"{log_path.stem}.txt"
            py_spy = str(Path(sys.executable).parent / "py-spy")
            self.profiler = subprocess.Popen(
                (py_spy, "record", "-r200", "-fraw", "--nonblocking", f"-o{out}", f"-p{self.pid}"),
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )

    def running(self) -> bool:
        return self.process.poll() is None

    def check_running(self) -> None:
        if not self.running():
            tail = self.log_path.read_text(errors="replace").splitlines()[-20:]
            raise RuntimeError(
                f"the worker exited ({self.process.returncode}); its log ends:\n" + "\n".join(tail)
            )

    def memory(self) -> tuple[int, int]:
        """(VmRSS, VmHWM) in bytes: resident now, and the peak since start."""
        fields = {}
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            name, _, value = line.partition(":")
            if name in {"VmRSS", "VmHWM"}:
                fields[name] = int(value.split()[0]) * 1024
        return fields["VmRSS"], fields["VmHWM"]

    def cpu_s(self) -> float:
        """User + system CPU time so far."""
        stat = Path(f"/proc/{self.pid}/stat").read_text()
        fields = stat.rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS

    def stop(self, timeout_s: float = 30) -> None:
        """SIGTERM and wait for the graceful exit; SIGKILL after ``timeout_s``."""
        if not self.running():
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.kill()
        self.wait_profiler()

    def kill(self) -> None:
        if self.running():
            self.process.kill()
        self.process.wait()
        self.wait_profiler()

    def wait_profiler(self) -> None:
        if self.profiler is not None:
            try:
                self.profiler.wait(30)  # py-spy writes its file once the worker is gone
            except subprocess.TimeoutExpired:
                self.profiler.kill()
