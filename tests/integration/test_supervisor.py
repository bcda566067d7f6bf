"""The supervisor itself, with a stand-in child program: restarts with backoff and the
reason logged, a graceful stop, a child that will not stop, and a second signal.

The supervisor runs in its own process (gevent-patched, as under the CLI): gevent's
child watcher reaps children, which must not happen inside the pytest process."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.support.processes import ROOT, wait_until

pytestmark = pytest.mark.integration

HARNESS = """
from gevent import monkey

monkey.patch_all()
import sys

from jobworker.entrypoints import supervisor
from jobworker.entrypoints.logging_setup import configure_logging

configure_logging("json", "info")
supervisor.BACKOFF_FIRST_S, supervisor.BACKOFF_MAX_S, supervisor.STOP_MARGIN_S = 0.05, 0.2, 0.5
sup = supervisor.Supervisor(
    1, [], worker_id="t", client_id=None, shutdown_timeout_s=float(sys.argv[2]), metrics=False,
    command=[sys.executable, sys.argv[1]],
)
sup.install_signals()
sys.exit(sup.run())
"""

# Exits 3 on its first three runs; then runs until SIGTERM, which it obeys (exit 0) or
# ignores, as the file "mode" says.
CHILD = """
import os, signal, sys
from pathlib import Path

here = Path(__file__).parent
runs = here / "runs"
n = int(runs.read_text()) if runs.exists() else 0
runs.write_text(str(n + 1))
if n < 3:
    sys.exit(3)
if (here / "mode").read_text() == "stubborn":
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
else:
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
(here / "ready.tmp").write_text(str(os.getpid()))
(here / "ready.tmp").rename(here / "ready")
while True:
    signal.pause()
"""


def _start(tmp_path: Path, mode: str, shutdown_timeout_s: float = 5) -> subprocess.Popen[str]:
    (tmp_path / "child.py").write_text(CHILD)
    (tmp_path / "mode").write_text(mode)
    return subprocess.Popen(
        [sys.executable, "-c", HARNESS, str(tmp_path / "child.py"), str(shutdown_timeout_s)],
        cwd=ROOT,
        env=os.environ | {"PYTHONPATH": str(ROOT)},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )


def _ready(tmp_path: Path) -> int:
    assert wait_until((tmp_path / "ready").exists, 30)
    return int((tmp_path / "ready").read_text())


def _events(stderr: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stderr.splitlines() if line.startswith("{")]


def _gone(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat.rsplit(")", 1)[1].split()[0] in {"Z", "X"}


def test_a_dying_child_is_restarted_with_backoff_and_the_reason_logged(tmp_path: Path) -> None:
    parent = _start(tmp_path, "obedient")
    _ready(tmp_path)
    parent.send_signal(signal.SIGTERM)
    _, stderr = parent.communicate(timeout=30)

    assert parent.returncode == 0, stderr
    events = _events(stderr)
    died = [e for e in events if e["event"] == "worker process died; restarting it"]
    assert [(e["reason"], e["restart_in_s"], e["restarts"]) for e in died] == [
        ("exit code 3", 0.05, 1),
        ("exit code 3", 0.1, 2),
        ("exit code 3", 0.2, 3),
    ]
    (stopped,) = [e for e in events if e["event"] == "worker process stopped"]
    assert stopped["reason"] == "exit code 0"


def test_a_child_that_will_not_stop_is_killed_after_the_timeout(tmp_path: Path) -> None:
    parent = _start(tmp_path, "stubborn", shutdown_timeout_s=0.5)
    child = _ready(tmp_path)
    parent.send_signal(signal.SIGTERM)
    _, stderr = parent.communicate(timeout=30)

    assert parent.returncode == 1, stderr
    assert _gone(child)
    events = _events(stderr)
    assert [e["why"] for e in events if e["event"] == "killing worker process"] == [
        "did not stop in time"
    ]
    (stopped,) = [e for e in events if e["event"] == "worker process stopped"]
    assert stopped["reason"] == "signal SIGKILL"


def test_a_second_signal_stops_the_children_at_once(tmp_path: Path) -> None:
    parent = _start(tmp_path, "stubborn", shutdown_timeout_s=60)
    child = _ready(tmp_path)
    parent.send_signal(signal.SIGINT)
    assert wait_until(lambda: parent.poll() is not None, 1) is False, "it must wait for the child"
    parent.send_signal(signal.SIGINT)
    _, stderr = parent.communicate(timeout=10)

    assert parent.returncode == 128 + signal.SIGINT, stderr
    assert _gone(child)
    assert any(e["event"].startswith("second signal") for e in _events(stderr))
