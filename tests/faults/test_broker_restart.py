"""The Kafka broker restarted mid-run: the worker reconnects, carries on where its group
committed, takes new jobs, and commits to the end. Duplicates are allowed, losses not.

Runs its own broker (``tools/kafka/broker.sh`` on free ports, state under the test's
tmp dir): the shared one serves other tests meanwhile.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from jobworker.adapters.core.process import CoreProcess
from tests.support.e2e import publish, sleep_jobs, tally, worker_settings
from tests.support.faults import PrivateBroker
from tests.support.fixtures import Report, StartWorker
from tests.support.kafka import committed_offsets, create_topic, end_offsets, unique_name
from tests.support.processes import log_tail, wait_until, wait_while_running

pytestmark = pytest.mark.faults

PARTITIONS = 3
FIRST_BATCH = 600
SECOND_BATCH = 300


@pytest.fixture
def broker(kafka_servers: str, tmp_path: Path) -> Iterator[PrivateBroker]:
    # kafka_servers: with no broker tools at hand this skips (or fails on CI) as the
    # other Kafka tiers do, rather than erroring in broker.sh.
    private = PrivateBroker(tmp_path / "kafka")
    with private:
        yield private


def test_worker_carries_on_across_a_broker_restart(
    broker: PrivateBroker, core: CoreProcess, start_worker: StartWorker, report: Report
) -> None:
    servers = broker.bootstrap
    topic = create_topic(servers, partitions=PARTITIONS, prefix="faults-broker")
    group = unique_name("faults-broker")
    first = sleep_jobs(FIRST_BATCH, ms=50, prefix="restart-a")
    second = sleep_jobs(SECOND_BATCH, ms=20, prefix="restart-b")
    ids = [job.id for job in first + second]
    publish(servers, topic, first)
    worker = start_worker(
        "restart-worker",
        worker_settings(
            servers, topic, group, core.address, WORKER_POOL_SIZE="5", SHUTDOWN_TIMEOUT="20s"
        ),
    )
    db = core.db_path
    assert wait_while_running(
        lambda: len(tally(db, ids).received) >= FIRST_BATCH // 3, 90, worker
    ), log_tail(worker)

    stopping = time.monotonic()
    broker.down()
    done_at_stop = len(tally(db, ids).received)
    broker.up()
    back = time.monotonic()
    assert worker.process.poll() is None, log_tail(worker)  # type: ignore[union-attr]
    # Only a consumer that reconnected can take jobs published after the restart.
    publish(servers, topic, second)

    wait_while_running(lambda: not tally(db, ids).lost, 120, worker, interval_s=0.5)
    caught_up = time.monotonic()
    ends = end_offsets(servers, topic)
    committed_to_end = wait_until(lambda: committed_offsets(servers, group, topic) == ends, 30)
    result = tally(db, ids)
    report(
        result.line("broker restart")
        + f"; done when the broker stopped: {done_at_stop}; broker away {back - stopping:.0f} s;"
        f" all in Core {caught_up - back:.0f} s after its return; committed to the end: "
        f"{committed_to_end}"
    )
    assert not result.lost, f"{len(result.lost)} lost\n{log_tail(worker)}"
    assert committed_to_end, (committed_offsets(servers, group, topic), ends)
    assert worker.stop() == 0, log_tail(worker)
