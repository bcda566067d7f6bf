"""Building blocks for the fault scenarios: a private broker to restart, probes into a
running worker (memory, metrics), what Core holds per job, and poison inputs."""

from __future__ import annotations

import io
import json
import os
import socket
import struct
import subprocess
import threading
import time
import urllib.request
import zlib
from collections import Counter
from collections.abc import Callable, Iterable
from pathlib import Path
from types import TracebackType
from typing import Any

from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from prometheus_client.parser import text_string_to_metric_families

from adapters.codec import task_from_job
from adapters.core.store import ResultStore
from domain.model import Job, JobStatus
from tests.support.kafka import create_topic
from tests.support.processes import ROOT, WorkerProcess, free_port

StartWorker = Callable[[str, dict[str, str]], WorkerProcess]
"""The ``start_worker`` fixture: ``start_worker(name, settings)``."""
Report = Callable[[str], None]
"""The ``report`` fixture: prints a scenario's line past pytest's capture."""

BROKER_SCRIPT = ROOT / "tools" / "kafka" / "broker.sh"
MIB = 1024 * 1024


# -- a broker of our own ---------------------------------------------------------------


class PrivateBroker:
    """A single-node Kafka from ``tools/kafka/broker.sh`` on its own ports and state.

    For scenarios that stop the broker: the shared one serves other tests at the same
    time. ``down`` then ``up`` restarts it on the same port with the same data.
    """

    def __init__(self, state_dir: Path, port: int | None = None) -> None:
        self.port = port if port is not None else free_port_pair()
        self.state_dir = state_dir
        self.bootstrap = f"127.0.0.1:{self.port}"
        self.log_path = state_dir / f"broker-{self.port}" / "kafka.log"

    def up(self, timeout_s: float = 180) -> None:
        self._run("up", timeout_s)

    def down(self, timeout_s: float = 60) -> None:
        self._run("down", timeout_s)

    def _run(self, command: str, timeout_s: float) -> None:
        env = os.environ | {
            "KAFKA_PORT": str(self.port),
            "KAFKA_CONTROLLER_PORT": str(self.port + 1),
            "JOBWORKER_KAFKA_STATE": str(self.state_dir),
        }
        done = subprocess.run(
            [str(BROKER_SCRIPT), command],
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout_s,
            check=False,
        )
        if done.returncode != 0:
            raise RuntimeError(f"broker.sh {command} failed ({done.returncode}):\n{done.stderr}")

    def __enter__(self) -> PrivateBroker:
        self.up()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.down()


def free_port_pair() -> int:
    """A free port whose successor is free too (the broker's controller listens there)."""
    for _ in range(50):
        port = free_port()
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port + 1))
            except OSError:
                continue
        return port
    raise RuntimeError("no two consecutive free ports on 127.0.0.1")


# -- topics, records, offsets ----------------------------------------------------------


def create_topic_with(
    servers: str, partitions: int, configs: dict[str, str] | None = None, prefix: str = "faults"
) -> str:
    """A fresh topic with ``partitions`` partitions and topic-level ``configs``."""
    return create_topic(servers, partitions, prefix, configs)


def job_record(job: Job, partition: int) -> tuple[bytes, bytes, int]:
    """A ``(key, value, partition)`` record as the wire contract says."""
    return job.id.encode(), task_from_job(job).SerializeToString(), partition


def produce_large(
    servers: str,
    topic: str,
    records: Iterable[tuple[bytes | None, bytes | None, int]],
    max_request_size: int = 4 * MIB,
) -> None:
    """``tests.support.kafka.produce`` for records above the producer's 1 MiB default."""
    producer = KafkaProducer(
        bootstrap_servers=servers, acks="all", max_request_size=max_request_size
    )
    try:
        futures = [
            producer.send(topic, key=key, value=value, partition=partition)
            for key, value, partition in records
        ]
        producer.flush(timeout=60)
        for future in futures:
            future.get(timeout=0)
    finally:
        producer.close()


def end_offsets(servers: str, topic: str, partitions: int) -> dict[int, int]:
    consumer = KafkaConsumer(bootstrap_servers=servers)
    try:
        tps = [TopicPartition(topic, p) for p in range(partitions)]
        return {tp.partition: offset for tp, offset in consumer.end_offsets(tps).items()}
    finally:
        consumer.close()


def read_topic(servers: str, topic: str, count: int, timeout_s: float = 30.0) -> list[Any]:
    """At least ``count`` records from every partition of ``topic`` (no group), or fewer
    when the timeout comes first."""
    consumer = KafkaConsumer(bootstrap_servers=servers, enable_auto_commit=False)
    records: list[Any] = []
    try:
        deadline = time.monotonic() + timeout_s
        partitions = consumer.partitions_for_topic(topic)
        while not partitions and time.monotonic() < deadline:
            time.sleep(0.2)
            partitions = consumer.partitions_for_topic(topic)
        tps = [TopicPartition(topic, p) for p in sorted(partitions or ())]
        if not tps:
            return records
        consumer.assign(tps)
        consumer.seek_to_beginning(*tps)
        while len(records) < count and time.monotonic() < deadline:
            for batch in consumer.poll(timeout_ms=500).values():
                records.extend(batch)
        return records
    finally:
        consumer.close()


# -- what Core holds -------------------------------------------------------------------


def statuses(db: Path, job_ids: Iterable[str]) -> dict[str, JobStatus | None]:
    """Each job's kept status in Core (None: no result yet)."""
    ids = list(job_ids)
    if not db.exists():
        return dict.fromkeys(ids)
    with ResultStore(db, create=False) as store:
        kept = {job_id: store.get(job_id) for job_id in ids}
    return {job_id: (s.result.status if s else None) for job_id, s in kept.items()}


def reporters(db: Path) -> dict[str, str]:
    """job id -> the worker id of the result Core kept."""
    if not db.exists():
        return {}
    with ResultStore(db, create=False) as store:
        kept = {job_id: store.get(job_id) for job_id in store.job_ids()}
    return {job_id: s.result.worker_id for job_id, s in kept.items() if s is not None}


def count_by_worker(db: Path) -> Counter[str]:
    return Counter(reporters(db).values())


# -- probes into a running worker ------------------------------------------------------


def rss_bytes(pid: int) -> int:
    """The process's resident set size, from /proc (Linux)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


def scrape_metric(port: int, sample_name: str) -> float:
    """The sum of every sample called ``sample_name`` (all label sets) on ``/metrics``."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == sample_name
    )


def metrics_answer(port: int) -> bool:
    try:
        scrape_metric(port, "jobworker_jobs_consumed_total")
    except OSError:
        return False
    return True


# -- poison inputs ---------------------------------------------------------------------


class SilentServer:
    """A TCP server on 127.0.0.1 that accepts connections and never answers on them:
    an HTTP target that hangs. Connections are held until ``close``."""

    def __init__(self) -> None:
        self._listener = socket.create_server(("127.0.0.1", 0), backlog=64)
        self._listener.settimeout(0.2)
        self.port = int(self._listener.getsockname()[1])
        self.accepted = 0
        self._held: list[socket.socket] = []
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._accept_loop, daemon=True)
        self._thread.start()

    def _accept_loop(self) -> None:
        while not self._stopped.is_set():
            try:
                connection, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self.accepted += 1
            self._held.append(connection)

    def close(self) -> None:
        self._stopped.set()
        self._thread.join(5)
        self._listener.close()
        for connection in self._held:
            connection.close()

    def __enter__(self) -> SilentServer:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()


def png_bytes(width: int = 1, height: int = 1) -> bytes:
    from PIL import Image

    out = io.BytesIO()
    Image.new("RGB", (width, height), (200, 30, 30)).save(out, format="PNG")
    return out.getvalue()


def decompression_bomb_png(width: int, height: int) -> bytes:
    """A 1x1 PNG whose header claims ``width`` x ``height`` (IHDR rewritten, CRC fixed)."""
    data = bytearray(png_bytes())
    # Signature (8) | IHDR length (4) | b"IHDR" (4) | width, height (4 + 4) | ... | CRC
    assert data[12:16] == b"IHDR"
    data[16:24] = struct.pack(">II", width, height)
    crc = zlib.crc32(bytes(data[12:29])) & 0xFFFFFFFF
    data[29:33] = struct.pack(">I", crc)
    return bytes(data)


# -- workers ---------------------------------------------------------------------------


def worker_settings(
    servers: str, topic: str, group_id: str, core_address: str, **overrides: str
) -> dict[str, str]:
    """Settings of a worker in a fault scenario: quick commits, a short drain on SIGTERM."""
    return {
        "KAFKA_BROKERS": servers,
        "KAFKA_TOPIC": topic,
        "KAFKA_GROUP_ID": group_id,
        "GRPC_SERVER_ADDRESS": core_address,
        "KAFKA_COMMIT_INTERVAL": "500ms",
        "SHUTDOWN_TIMEOUT": "20s",
    } | overrides


def log_tail(log: str, lines: int = 40) -> str:
    return "\n".join(log.splitlines()[-lines:])


def last_assignment(log: str) -> set[int]:
    """The partitions of the last "partitions assigned" event in a worker's JSON log."""
    assigned: set[int] = set()
    for line in log.splitlines():
        if '"partitions assigned"' not in line:
            continue
        event = json.loads(line)
        assigned = {int(name.rsplit("[", 1)[1].rstrip("]")) for name in event["partitions"]}
    return assigned


def wait_while_running(
    worker: WorkerProcess,
    condition: Callable[[], bool],
    timeout_s: float,
    interval_s: float = 0.2,
) -> bool:
    """``wait_until``, but give up as soon as ``worker`` has exited: a crashed worker
    makes no more progress, and waiting out the timeout only hides the crash."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return True
        if worker.process is not None and worker.process.poll() is not None:
            break
        time.sleep(interval_s)
    return bool(condition())
