"""What a frozen broker costs the worker: CPU, and the longest the hub is held (issue 21).

    python bench/frozen_broker.py [--freeze-s 60] [--clients kafka-python,confluent] [--runs N]

Starts a broker of its own (``tools/kafka/broker.sh`` on free ports, state in a temporary
folder) and the reference Core, then per client and run: a worker (the CLI, under
``bench.hub_probe``) takes 300 sleeping jobs, 300 more are published, and the broker is
stopped with SIGSTOP for ``--freeze-s`` while those are in flight. Printed: the worker's
CPU time over the freeze as a share of one core, the longest hub hold during the freeze
(a 10 ms heartbeat's latest wake) and how many holds passed 100 ms, the same for an idle
gevent process probed beside it (the machine's own noise), the holds the worker's own
monitor logged (over 0.5 s), and whether every job reached Core after SIGCONT (100 more
are published after the thaw). Prints figures; asserts nothing about timing.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.e2e_processes import CLOCK_TICKS, ROOT, WorkerProcess, child_env
from jobworker.adapters.core.process import CoreProcess
from tests.support.e2e import publish, sleep_jobs, tally, worker_settings
from tests.support.faults import PrivateBroker
from tests.support.kafka import create_topic, unique_name
from tests.support.processes import free_port

PROBED = (sys.executable, "-m", "bench.hub_probe")
HUB_BLOCKED = "the event loop was blocked"
TARGET_HOLD_S = 0.1


@dataclass(frozen=True)
class Run:
    client: str
    cpu_share: float
    longest_hold_s: float
    holds_over_target: int
    idle_longest_s: float
    idle_cpu_share: float
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
        "--profile",
        type=Path,
        help="py-spy records each worker during the freeze into this folder (speedscope)",
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
                    one_run(
                        broker, core, client, args.freeze_s, work / f"{client}-{n}", args.profile
                    )
                    for n in range(args.runs)
                    for client in clients
                ]
            finally:
                core.kill()
    print(
        f"\nbroker frozen {args.freeze_s:.0f} s. Hub holds: a 10 ms heartbeat's latest wake"
        " (-: none over 20 ms); idle: a bare gevent process with the same heartbeat"
    )
    print(
        f"{'client':<13} {'CPU':>6} {'longest hold':>13} {'holds>100ms':>12} {'idle CPU':>9}"
        f" {'idle hold':>10} {'logged>0.5s':>12}  after the thaw (longest hold meanwhile)"
    )
    for run in runs:
        print(
            f"{run.client:<13} {100 * run.cpu_share:5.1f}% {seconds(run.longest_hold_s):>13}"
            f" {run.holds_over_target:12d} {100 * run.idle_cpu_share:8.1f}%"
            f" {seconds(run.idle_longest_s):>10} {run.monitor_logged:12d}"
            f"  {'all in Core' if run.all_in_core else 'JOBS MISSING'}"
            f" in {run.catch_up_s:.0f} s ({seconds(run.thaw_longest_s)})"
        )
    return 0


def one_run(
    broker: PrivateBroker,
    core: CoreProcess,
    client: str,
    freeze_s: float,
    stem: Path,
    profile: Path | None = None,
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
    holds, idle_holds = stem.with_suffix(".holds"), stem.with_suffix(".idle-holds")
    worker = WorkerProcess(
        settings, stem.with_suffix(".log"), (*PROBED, "--out", str(holds), "run")
    )
    idle = subprocess.Popen(
        (*PROBED, "--out", str(idle_holds), "--idle"), cwd=ROOT, env=child_env()
    )
    try:
        wait_for(lambda: len(tally(core.db_path, ids).received) >= len(before), 120, worker)
        publish(servers, topic, during)
        jvm = int((broker.log_path.parent / "kafka.pid").read_text().strip())
        print(f"{client}: broker frozen for {freeze_s:.0f} s", flush=True)
        cpu_before, frozen_at, frozen_wall = worker.cpu_s(), time.monotonic(), time.time()
        idle_cpu_before = cpu_seconds(idle.pid)
        os.kill(jvm, signal.SIGSTOP)
        profiler = (
            record_profile(worker.pid, freeze_s + 15, profile / f"{stem.name}.json")
            if profile
            else None
        )
        try:
            time.sleep(freeze_s)
            frozen_s = time.monotonic() - frozen_at
            cpu_share = (worker.cpu_s() - cpu_before) / frozen_s
            idle_cpu_share = (cpu_seconds(idle.pid) - idle_cpu_before) / frozen_s
        finally:
            os.kill(jvm, signal.SIGCONT)
        thawed_at, thawed_wall = time.monotonic(), time.time()
        publish(servers, topic, after)
        all_in = wait_for(lambda: not tally(core.db_path, ids).lost, 120, worker)
        caught_up, caught_up_wall = time.monotonic() - thawed_at, time.time()
    finally:
        if profiler is not None:
            profiler.wait()
        worker.stop()
        idle.kill()
        idle.wait()
    during_freeze = holds_between(holds, frozen_wall, thawed_wall)
    logged = sum(HUB_BLOCKED in line for line in worker.log_path.read_text().splitlines())
    return Run(
        client=client,
        cpu_share=cpu_share,
        longest_hold_s=max(during_freeze, default=0.0),
        holds_over_target=sum(h > TARGET_HOLD_S for h in during_freeze),
        idle_longest_s=max(holds_between(idle_holds, frozen_wall, thawed_wall), default=0.0),
        idle_cpu_share=idle_cpu_share,
        thaw_longest_s=max(holds_between(holds, thawed_wall, caught_up_wall), default=0.0),
        monitor_logged=logged,
        all_in_core=all_in,
        catch_up_s=caught_up,
    )


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
    return f"{hold_s:.3f} s" if hold_s else "-"


def cpu_seconds(pid: int) -> float:
    """A process's user and system CPU time so far, from /proc (Linux)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def holds_between(path: Path, start: float, end: float) -> list[float]:
    """The holds noted in ``path`` that ended between ``start`` and ``end`` (unix time)."""
    if not path.exists():
        return []
    noted = (line.split() for line in path.read_text().splitlines() if line.strip())
    return [float(late) for at, late in noted if start <= float(at) <= end]


def wait_for(condition: Callable[[], bool], timeout_s: float, worker: WorkerProcess) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        worker.check_running()
        if condition():
            return True
        time.sleep(0.5)
    return False


if __name__ == "__main__":
    sys.exit(main())
