"""The Kafka broker frozen mid-run (SIGSTOP): its connections stay open and answer
nothing. The worker waits for it without spinning, its event loop keeps turning, and
once the broker is back (SIGCONT) it carries on: every job done, committed to the end.

kafka-python 3.0 spun through its poll loop and its producer's I/O loop for as long as a
request went unanswered (60-90% of a core, the hub held for seconds): see
``quirks.wait_out_unanswered_heartbeats`` and ``quirks.pace_unready_sends``.

The worker runs under ``tests.support.hub_probe``, a 10 ms heartbeat on its hub that
notes every late wake and how long the main thread ran meanwhile, and an idle process
probed the same way runs beside it: a hold both saw at the same moment is the machine's
(another test run, another user), not the worker's. ``bench/frozen_broker.py`` prints
the same figures over 60 s.

Runs its own broker (``tools/kafka/broker.sh`` on free ports, state under the test's
tmp dir): the shared one serves other tests meanwhile.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from jobworker.adapters.core.process import CoreProcess
from jobworker.adapters.kafka.modes import KafkaClient
from tests.support.e2e import publish, sleep_jobs, tally, worker_settings
from tests.support.faults import PrivateBroker
from tests.support.fixtures import Report
from tests.support.hub_probe import holds_noted, own_holds
from tests.support.kafka import committed_offsets, create_topic, end_offsets, unique_name
from tests.support.processes import (
    ROOT,
    WorkerProcess,
    events_named,
    free_port,
    log_tail,
    wait_while_running,
    worker_env,
)
from tests.support.waiting import wait_until

pytestmark = pytest.mark.faults

PARTITIONS = 3
FREEZE_S = 25.0
# Of the freeze's wall time, the most the worker's CPU time may be: the bound.
# Waiting costs 1-3 % here (its own CPU time: other processes do not add to it); the
# spin cost 60-90 %.
MAX_CPU_SHARE = 0.10
# The longest the worker may hold its own hub, the machine's stalls left out. The
# issue's target is 0.1 s, and the worker's own holds stay under 0.05 s; but a 2-core
# machine shared with other test runs also delays one process alone now and then, so
# the bound has room: the spin held the hub for 1-4 s.
MAX_OWN_HOLD_S = 0.25
# Of any one hold, the most the main thread may have run (the rest it waited for a core):
# the 0.1 s, which the hub's own work stays well under (a few ms while frozen).
MAX_HUB_WORK_S = 0.1
# The worker's own monitor logs a hold longer than half of this: 0.5 s.
LIVENESS_MAX_BLOCKED = "1s"
HUB_BLOCKED = "the event loop was blocked"
PROBE = "tests.support.hub_probe"


@pytest.fixture
def broker(kafka_servers: str, tmp_path: Path) -> Iterator[PrivateBroker]:
    # kafka_servers: with no broker tools at hand this skips (or fails on CI) as the
    # other Kafka tiers do, rather than erroring in broker.sh.
    private = PrivateBroker(tmp_path / "kafka")
    with private:
        yield private


@pytest.fixture
def idle_holds(tmp_path: Path) -> Iterator[Path]:
    """An idle gevent process probed as the worker is: the file of its holds."""
    holds = tmp_path / "idle.holds"
    idle = subprocess.Popen(
        [sys.executable, "-m", PROBE, "--out", str(holds), "--idle"], cwd=ROOT, env=worker_env()
    )
    yield holds
    idle.kill()
    idle.wait(10)


@pytest.fixture
def probed_worker(
    tmp_path: Path, kafka_client: KafkaClient
) -> Iterator[Callable[[dict[str, str]], WorkerProcess]]:
    """Starts the worker under the probe (its holds in ``<tmp>/worker.holds``), with
    each client in turn (the tier's ``start_worker`` does the same)."""
    started: list[WorkerProcess] = []

    def start(settings: dict[str, str]) -> WorkerProcess:
        args = ("--out", str(tmp_path / "worker.holds"), "run")
        client = {"KAFKA_CLIENT": str(kafka_client)}
        worker = WorkerProcess(client | settings, tmp_path / "worker.log", args, module=PROBE)
        started.append(worker.start())
        return worker

    yield start
    for worker in started:
        worker.ensure_stopped()


def test_a_frozen_broker_costs_the_worker_almost_nothing(
    broker: PrivateBroker,
    core: CoreProcess,
    probed_worker: Callable[[dict[str, str]], WorkerProcess],
    idle_holds: Path,
    tmp_path: Path,
    report: Report,
) -> None:
    servers = broker.bootstrap
    topic = create_topic(servers, partitions=PARTITIONS, prefix="faults-frozen")
    group = unique_name("faults-frozen")
    before = sleep_jobs(300, ms=20, prefix="frozen-a")
    # Published just before the freeze: some are in flight when the broker stops.
    during = sleep_jobs(300, ms=50, prefix="frozen-b")
    after = sleep_jobs(100, ms=20, prefix="frozen-c")
    ids = [job.id for job in before + during + after]
    publish(servers, topic, before)
    worker = probed_worker(
        worker_settings(
            servers,
            topic,
            group,
            core.address,
            WORKER_ID="frozen-broker-worker",
            WORKER_POOL_SIZE="5",
            METRICS_PORT=str(free_port()),
            METRICS_HOST="127.0.0.1",
            LIVENESS_MAX_BLOCKED=LIVENESS_MAX_BLOCKED,
        ),
    )
    db = core.db_path
    assert wait_while_running(lambda: len(tally(db, ids).received) >= len(before), 90, worker), (
        log_tail(worker)
    )
    publish(servers, topic, during)
    # Frozen once the worker is at them: jobs finish during the freeze, so commits fall
    # due and wait on the frozen broker (one past its timeout once held confluent's hub).
    started = [job.id for job in during[:10]]
    assert wait_while_running(lambda: tally(db, started).received & set(started), 60, worker)

    jvm = _broker_pid(broker)
    cpu_before, frozen_at, frozen_wall = _cpu_seconds(worker), time.monotonic(), time.time()
    os.kill(jvm, signal.SIGSTOP)
    try:
        # The freeze is the scenario: nothing to wait on but the clock.
        time.sleep(FREEZE_S)
        cpu_share = (_cpu_seconds(worker) - cpu_before) / (time.monotonic() - frozen_at)
    finally:
        os.kill(jvm, signal.SIGCONT)
    thawed_at = time.monotonic()

    # Only a consumer that fetches again takes jobs published after the thaw.
    publish(servers, topic, after)
    wait_while_running(lambda: not tally(db, ids).lost, 90, worker, interval_s=0.5)
    caught_up, caught_up_wall = time.monotonic(), time.time()
    # A hold is noted when it ends: one that began in the freeze may end after the thaw.
    held = [event.get("blocked_s") for event in events_named(worker, HUB_BLOCKED)]
    holds = holds_noted(tmp_path / "worker.holds", frozen_wall, caught_up_wall)
    own = own_holds(holds, holds_noted(idle_holds, frozen_wall, caught_up_wall))
    longest_own = max(own, default=0.0)
    longest_work = max((ran for _, _, ran in holds), default=0.0)
    ends = end_offsets(servers, topic)
    committed_to_end = wait_until(lambda: committed_offsets(servers, group, topic) == ends, 30)
    result = tally(db, ids)
    report(
        result.line("frozen broker")
        + f"; broker frozen {FREEZE_S:.0f} s: worker CPU {100 * cpu_share:.1f}% of a core;"
        f" from the freeze until all was in Core, its hub held at most {longest_own:.3f} s"
        " by itself"
        f" ({max((h for _, h, _ in holds), default=0.0):.3f} s with the machine's stalls;"
        f" at most {longest_work:.3f} s of one hold running),"
        f" > 0.5 s by its monitor's count: {held or 'never'}; all in Core"
        f" {caught_up - thawed_at:.0f} s after the thaw; committed to the end: {committed_to_end}"
    )
    assert cpu_share < MAX_CPU_SHARE, f"{100 * cpu_share:.0f}% of a core\n{log_tail(worker)}"
    assert longest_own < MAX_OWN_HOLD_S, f"hub held {sorted(own)} s\n{log_tail(worker)}"
    assert longest_work < MAX_HUB_WORK_S, f"hub held running: {holds}\n{log_tail(worker)}"
    assert not held, f"event loop held {held} s\n{log_tail(worker)}"
    assert not result.lost, f"{len(result.lost)} lost\n{log_tail(worker)}"
    assert committed_to_end, (committed_offsets(servers, group, topic), ends)
    assert worker.stop() == 0, log_tail(worker)


def _broker_pid(broker: PrivateBroker) -> int:
    """The broker's JVM, from the pid file ``broker.sh`` writes beside its log."""
    return int((broker.log_path.parent / "kafka.pid").read_text().strip())


def _cpu_seconds(worker: WorkerProcess) -> float:
    """The worker's user and system CPU time so far, from /proc (Linux)."""
    assert worker.process is not None
    fields = Path(f"/proc/{worker.process.pid}/stat").read_text().rsplit(")", 1)[1].split()
    # After the command name: utime and stime are the 12th and 13th fields.
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
