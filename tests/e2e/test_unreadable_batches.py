"""A worker that cannot decode a batch sets it aside and goes on: the jobs after it reach
Core, the hub keeps serving /metrics, and SIGTERM ends the worker cleanly."""

from __future__ import annotations

import signal
import time
import urllib.request
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from jobworker.adapters.core.process import CoreProcess
from tests.support.e2e import results_in_core, worker_settings
from tests.support.fixtures import StartWorker
from tests.support.kafka import (
    committed_offsets,
    create_topic,
    produce_batch,
    read_all,
    unique_name,
)
from tests.support.processes import ROOT, events_named, free_port, wait_while_running

TIMEOUT_S = 60
# Generous: a graceful exit is a final commit, leaving the group and closing channels.
EXIT_WITHIN_S = 30


def without_zstd(workdir: Path) -> str:
    """A PYTHONPATH under which ``import zstandard`` fails, as in a worker installed
    without kafka-python's zstd extra: kafka-python then cannot decode zstd batches."""
    stub = workdir / "no-zstd" / "zstandard"
    stub.mkdir(parents=True)
    (stub / "__init__.py").write_text(
        'raise ImportError("zstandard hidden by the test: a worker without the zstd extra")\n'
    )
    return f"{stub.parent}:{ROOT}"


def counter(port: int, name: str) -> float | None:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        body = response.read().decode()
    for family in text_string_to_metric_families(body):
        for sample in family.samples:
            if sample.name == name:
                return sample.value
    return None


@pytest.mark.kafka_python_only(
    "hides the zstd codec from kafka-python; librdkafka has every codec built in"
)
def test_a_batch_the_worker_cannot_decode_is_set_aside_and_sigterm_still_exits_0(
    kafka_servers: str, core: CoreProcess, start_worker: StartWorker, tmp_path: Path
) -> None:
    topic = create_topic(kafka_servers, partitions=1)
    before = [f"before-{i}" for i in range(5)]
    unreadable = [f"zstd-{i}" for i in range(5)]
    after = [f"after-{i}" for i in range(5)]
    produce_batch(kafka_servers, topic, before)
    offsets = produce_batch(kafka_servers, topic, unreadable, compression_type="zstd")
    produce_batch(kafka_servers, topic, after)
    port = free_port()
    settings = worker_settings(
        kafka_servers,
        topic,
        unique_name("group"),
        core.address,
        KAFKA_SESSION_TIMEOUT="8s",
        METRICS_HOST="127.0.0.1",
        METRICS_PORT=str(port),
        PYTHONPATH=without_zstd(tmp_path),
    )

    worker = start_worker("worker-1", settings)
    assert wait_while_running(
        lambda: results_in_core(core.db_path, before + after) == set(before + after),
        TIMEOUT_S,
        worker,
    ), sorted(results_in_core(core.db_path, before + after))
    assert wait_while_running(
        lambda: counter(port, "jobworker_unreadable_batches_total") == 1, TIMEOUT_S, worker
    )
    worker.signal(signal.SIGTERM)
    signalled = time.monotonic()
    assert worker.wait(EXIT_WITHIN_S) == 0, time.monotonic() - signalled

    assert not results_in_core(core.db_path, unreadable)
    (error,) = events_named(worker, "unreadable record batch")
    assert error["level"] == "error"
    assert (error["first_offset"], error["last_offset"]) == (offsets[0], offsets[-1])
    assert "zstd" in error["error"]
    (letter,) = read_all(kafka_servers, f"{topic}.dlq", 1)
    headers = dict(letter.headers)
    assert headers["x-dlq-source-offset"] == str(offsets[0]).encode()
    assert headers["x-dlq-source-last-offset"] == str(offsets[-1]).encode()
    assert headers["x-dlq-worker"] == b"worker-1"


@pytest.mark.kafka_python_only(
    "hides the zstd codec from kafka-python; librdkafka has every codec built in"
)
def test_with_fail_the_worker_runs_the_jobs_before_the_batch_then_exits_2_naming_it(
    kafka_servers: str, core: CoreProcess, start_worker: StartWorker, tmp_path: Path
) -> None:
    topic = create_topic(kafka_servers, partitions=1)
    group_id = unique_name("group")
    before = [f"before-{i}" for i in range(5)]
    produce_batch(kafka_servers, topic, before)
    unreadable = [f"zstd-{i}" for i in range(5)]
    offsets = produce_batch(kafka_servers, topic, unreadable, compression_type="zstd")
    produce_batch(kafka_servers, topic, ["after-0"])
    settings = worker_settings(
        kafka_servers,
        topic,
        group_id,
        core.address,
        KAFKA_SESSION_TIMEOUT="8s",
        KAFKA_UNREADABLE_BATCHES="fail",
        PYTHONPATH=without_zstd(tmp_path),
    )

    worker = start_worker("worker-1", settings)

    assert worker.wait(TIMEOUT_S) == 2
    last_line = worker.log().strip().splitlines()[-1]
    assert last_line.startswith(
        f"jobworker: cannot read the record batch at {topic}[0] offsets {offsets[0]}-{offsets[-1]}:"
    ), last_line
    assert "KAFKA_UNREADABLE_BATCHES" in last_line
    assert results_in_core(core.db_path, [*before, "after-0"]) == set(before)
    assert committed_offsets(kafka_servers, group_id, topic) == {0: offsets[0]}
