"""What a frozen broker costs the worker: CPU, and the longest the hub is held (issue 21).

    python bench/frozen_broker.py [--freeze-s 60] [--clients kafka-python,confluent] [--runs N]

Starts a broker of its own (``tools/kafka/broker.sh`` on free ports, state in a temporary
folder) and the reference Core, then per client and run: a worker (the CLI, under
``tests.support.hub_probe``) takes 300 sleeping jobs, 300 more are published, and the
broker is stopped with SIGSTOP for ``--freeze-s`` while those are in flight. Printed:
the worker's CPU time over the freeze as a share of one core; the longest hub hold
during the freeze (how late a 10 ms heartbeat woke); the longest of those an idle gevent
process probed beside it did not see at the same moment (on a shared machine every
process stalls now and then: those are not the worker's); the most the main thread ran
during one hold (the hub's own work: the rest of a hold it waited for a core); the holds
the worker's own monitor logged (over 0.5 s); whether every job reached Core after
SIGCONT (100 more are published after the thaw), and the longest hold meanwhile.
``--console`` runs the web console beside the worker and prints the same for it.
Asserts nothing about timing.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from kafka.admin import KafkaAdminClient, NewTopic

from bench.e2e_processes import CLOCK_TICKS, ROOT, child_env
from jobworker.adapters.core.process import CoreProcess
from tests.support.e2e import publish, results_in_core, sleep_jobs, tally, worker_settings
from tests.support.faults import PrivateBroker
from tests.support.hub_probe import Hold, holds_noted, own_holds
from tests.support.kafka import create_topic, unique_name
from tests.support.processes import free_port

PROBED = (sys.executable, "-m", "tests.support.hub_probe")
HUB_BLOCKED = "the event loop was blocked"
TARGET_HOLD_S = 0.1
# The worker has taken the first of these jobs (published just before) when the broker
# is frozen.
IN_FLIGHT_BEFORE_FREEZE = 10


@dataclass(frozen=True)
class Figures:
    """What the freeze cost one probed process."""

    cpu_share: float
    holds: list[Hold]

    @property
    def longest_s(self) -> float:
        return max((held for _, held, _ in self.holds), default=0.0)

    @property
    def longest_run_s(self) -> float:
        """The most the main thread ran (the hub at work) during one hold."""
        return max((ran for _, _, ran in self.holds), default=0.0)

    def own_holds(self, idle: Figures) -> list[float]:
        """The holds the idle process did not see too: this process's own."""
        return own_holds(self.holds, idle.holds)


@dataclass(frozen=True)
class Run:
    client: str
    worker: Figures
    idle: Figures
    console: Figures | None
    thaw_longest_s: float
    monitor_logged: int
    all_in_core: bool
    catch_up_s: float


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--freeze-s", type=float, default=60.0)
    parser.add_argument("--clients", default="kafka-python,confluent")
    parser.add_argument("--runs", type=int, default=1)
    parser.add_argument(
        "--console",
        action="store_true",
        help="a web console (jobworker web) runs too, reading the same broker: its figures",
    )
    parser.add_argument(
        "--profile",
        type=Path,
        help="py-spy records each worker during the freeze into this folder (speedscope)",
    )
    parser.add_argument(
        "--keep",
        type=Path,
        help="copy the processes' logs and noted holds into this folder at the end",
    )
    args = parser.parse_args()
    clients = [c.strip() for c in args.clients.split(",") if c.strip()]
    with tempfile.TemporaryDirectory(prefix="frozen-broker-") as folder:
        work = Path(folder)
        print(f"starting a private broker and Core in {work} ...", flush=True)
        with PrivateBroker(work / "kafka") as broker:
            core = CoreProcess(free_port(), work / "core.db")
            core.start()
            try:
                runs = [
                    one_run(broker, core, client, args.freeze_s, work / f"{client}-{n}", args)
                    for n in range(args.runs)
                    for client in clients
                ]
            finally:
                core.kill()
                if args.keep:
                    ignore = shutil.ignore_patterns("kafka", "core.db*")
                    shutil.copytree(work, args.keep, ignore=ignore, dirs_exist_ok=True)
    print_table(runs, args.freeze_s)
    return 0


def print_table(runs: list[Run], freeze_s: float) -> None:
    print(
        f"\nbroker frozen {freeze_s:.0f} s. Holds: how late a 10 ms heartbeat on the hub woke"
        " (-: never over 20 ms). own: those an idle gevent process beside it, probed the"
        " same way, did not see at the same moment (the machine's stalls left out). ran:"
        " the most the main thread ran during one hold (the rest it waited for a core)"
    )
    print(
        f"{'client':<13} {'CPU':>6} {'longest':>7} {'own':>7} {'own>0.1s':>8} {'ran':>7}"
        f" {'idle CPU':>8} {'idle':>7} {'log>0.5s':>8}  after the thaw (longest hold)"
    )
    for run in runs:
        print(
            f"{run.client:<13} {figures(run.worker, run.idle)} {100 * run.idle.cpu_share:7.1f}%"
            f" {seconds(run.idle.longest_s)} {run.monitor_logged:8d}"
            f"  {'all in Core' if run.all_in_core else 'JOBS MISSING'}"
            f" in {run.catch_up_s:.0f} s ({seconds(run.thaw_longest_s).strip()})"
        )
        if run.console is not None:
            print(f"{'  web console':<13} {figures(run.console, run.idle)}")


def figures(process: Figures, idle: Figures) -> str:
    own = process.own_holds(idle)
    return (
        f"{100 * process.cpu_share:5.1f}% {seconds(process.longest_s)}"
        f" {seconds(max(own, default=0.0))} {sum(h > TARGET_HOLD_S for h in own):8d}"
        f" {seconds(process.longest_run_s)}"
    )


def one_run(
    broker: PrivateBroker,
    core: CoreProcess,
    client: str,
    freeze_s: float,
    stem: Path,
    args: argparse.Namespace,
) -> Run:
    servers = broker.bootstrap
    topic = create_topic(servers, partitions=3, prefix="bench-frozen")
    before = sleep_jobs(300, ms=20, prefix=f"{stem.name}-a")
    during = sleep_jobs(300, ms=50, prefix=f"{stem.name}-b")
    after = sleep_jobs(100, ms=20, prefix=f"{stem.name}-c")
    ids = [job.id for job in before + during + after]
    publish(servers, topic, before)
    settings = worker_settings(
        servers,
        topic,
        unique_name("bench-frozen"),
        core.address,
        KAFKA_CLIENT=client,
        WORKER_ID=stem.name,
        WORKER_POOL_SIZE="5",
        METRICS_PORT=str(free_port()),
        METRICS_HOST="127.0.0.1",
        LIVENESS_MAX_BLOCKED="1s",
    )
    profiler: subprocess.Popen[bytes] | None = None
    worker = Probed(stem, ["run"], settings)
    idle = Probed(stem.with_suffix(".idle"), ["--idle"], {})
    console = None
    if args.console:
        # There, so that the console's letter readers stay open and read.
        create_topics(servers, [f"{topic}.dlq", f"{topic}.results.dlq"])
        console = Probed(stem.with_suffix(".console"), ["web"], console_settings(settings))
    probed = [side for side in (worker, idle, console) if side is not None]
    try:
        # Core holds earlier runs' results too: only this run's count.
        first = [job.id for job in before]
        wait_for(lambda: len(results_in_core(core.db_path, first)) == len(first), 120, worker)
        publish(servers, topic, during)
        # Frozen once the worker is at them: jobs finish during the freeze, so commits
        # fall due and wait on the frozen broker.
        started = [job.id for job in during[:IN_FLIGHT_BEFORE_FREEZE]]
        wait_for(lambda: bool(results_in_core(core.db_path, started)), 60, worker)
        jvm = int((broker.log_path.parent / "kafka.pid").read_text().strip())
        print(f"{client}: broker frozen for {freeze_s:.0f} s", flush=True)
        for side in probed:
            side.freeze_starts()
        os.kill(jvm, signal.SIGSTOP)
        if args.profile:
            out = args.profile / f"{stem.name}.json"
            profiler = record_profile(worker.pid, freeze_s + 15, out)
        try:
            time.sleep(freeze_s)
            for side in probed:
                side.freeze_ends()
        finally:
            os.kill(jvm, signal.SIGCONT)
        thawed_at, thawed_wall = time.monotonic(), time.time()
        publish(servers, topic, after)
        all_in = wait_for(lambda: not tally(core.db_path, ids).lost, 120, worker)
        caught_up, caught_up_wall = time.monotonic() - thawed_at, time.time()
    finally:
        if profiler is not None:
            profiler.wait()
        for side in probed:
            side.stop()
    log = worker.log_path.read_text(errors="replace")
    return Run(
        client=client,
        worker=worker.figures(),
        idle=idle.figures(),
        console=console.figures() if console is not None else None,
        thaw_longest_s=max(
            (h for _, h, _ in worker.holds(thawed_wall, caught_up_wall)), default=0.0
        ),
        monitor_logged=sum(HUB_BLOCKED in line for line in log.splitlines()),
        all_in_core=all_in,
        catch_up_s=caught_up,
    )


class Probed:
    """``python -m tests.support.hub_probe`` with ``args`` (a jobworker command or ``--idle``),
    its output in ``<stem>.log``, its holds in ``<stem>.holds``."""

    def __init__(self, stem: Path, args: list[str], settings: dict[str, str]) -> None:
        self._holds = stem.with_suffix(stem.suffix + ".holds")
        self.log_path = stem.with_suffix(stem.suffix + ".log")
        with self.log_path.open("ab") as log:
            self._process = subprocess.Popen(
                (*PROBED, "--out", str(self._holds), *args),
                cwd=ROOT,
                env=child_env(**settings),
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        self.pid = self._process.pid
        self._window = (0.0, 0.0)
        self._cpu_s = 0.0

    def check_running(self) -> None:
        if self._process.poll() is not None:
            tail = self.log_path.read_text(errors="replace").splitlines()[-20:]
            raise RuntimeError(
                f"{self.log_path.stem} exited ({self._process.returncode}):\n" + "\n".join(tail)
            )

    def freeze_starts(self) -> None:
        self._window = (time.time(), 0.0)
        self._cpu_s = cpu_seconds(self.pid)

    def freeze_ends(self) -> None:
        self._window = (self._window[0], time.time())
        self._cpu_s = cpu_seconds(self.pid) - self._cpu_s

    def figures(self) -> Figures:
        """Over the freeze."""
        start, end = self._window
        return Figures(self._cpu_s / (end - start), self.holds(start, end))

    def holds(self, start: float, end: float) -> list[Hold]:
        return holds_noted(self._holds, start, end)

    def stop(self) -> None:
        """SIGTERM, and the graceful exit (SIGKILL after 30 s)."""
        self._process.terminate()
        try:
            self._process.wait(30)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()


def create_topics(servers: str, names: list[str]) -> None:
    admin = KafkaAdminClient(bootstrap_servers=servers, client_id="bench-frozen")
    try:
        admin.create_topics([NewTopic(name, 3, 1) for name in names])
    finally:
        admin.close()


def console_settings(worker: dict[str, str]) -> dict[str, str]:
    """``jobworker web`` on a free port, reading what the worker writes."""
    shared = ("KAFKA_BROKERS", "KAFKA_TOPIC", "KAFKA_GROUP_ID", "GRPC_SERVER_ADDRESS")
    return {name: worker[name] for name in shared} | {
        "WEB_HOST": "127.0.0.1",
        "WEB_PORT": str(free_port()),
        "LOG_FORMAT": "json",
    }


def record_profile(pid: int, duration_s: float, out: Path) -> subprocess.Popen[bytes]:
    """py-spy on ``pid`` for ``duration_s`` (the freeze and the thaw). Idle samples
    too, so that the main thread's timeline (the hub and its greenlets) shows where it
    was busy; not pausing the worker (``--nonblocking``), which would hold its hub."""
    out.parent.mkdir(parents=True, exist_ok=True)
    py_spy = str(Path(sys.executable).parent / "py-spy")
    command = (py_spy, "record", "-r200", "--idle", "--nonblocking", "-fspeedscope")
    return subprocess.Popen(
        (*command, f"-d{duration_s:.0f}", f"-o{out}", f"-p{pid}"),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def seconds(hold_s: float) -> str:
    return f"{hold_s:6.3f}s" if hold_s else f"{'-':>7}"


def cpu_seconds(pid: int) -> float:
    """A process's user and system CPU time so far, from /proc (Linux)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def wait_for(condition: Callable[[], bool], timeout_s: float, worker: Probed) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        worker.check_running()
        if condition():
            return True
        time.sleep(0.5)
    return False


if __name__ == "__main__":
    sys.exit(main())
