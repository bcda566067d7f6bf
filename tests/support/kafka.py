"""A real Kafka broker for contract and end-to-end tests, and small helpers around it.

Where the broker comes from, in order: ``KAFKA_BOOTSTRAP_SERVERS`` (e.g. from
``tools/kafka/with-broker.sh`` or ``tools/kafka/broker.sh up``); a container of
``apache/kafka`` at the version of ``tools/kafka/pom.xml`` (one Kafka version everywhere)
when a Docker engine answers and can supply that image; else the jar broker
(``tools/kafka/broker.sh``) when Java is there; else the tests fail on CI (``CI=true``)
and skip elsewhere, saying how to get a broker.

A Docker engine that answers but cannot supply the image (no registry access) counts as
no Docker, with one line saying so: the container could never start.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, NoReturn

import pytest
from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from kafka.admin import ConfigResource, ConfigResourceType, KafkaAdminClient, NewTopic
from kafka.structs import OffsetAndMetadata

from jobworker.adapters.codec import task_from_job
from jobworker.adapters.proto.jobworker.v1 import jobworker_pb2 as pb
from jobworker.domain.model import Job
from tests.support.waiting import wait_until

KAFKA_TOOLS = Path(__file__).resolve().parents[2] / "tools" / "kafka"
NO_BROKER = (
    "no Kafka broker: set KAFKA_BOOTSTRAP_SERVERS, run the tests through "
    "tools/kafka/with-broker.sh (starts a local broker with java + mvn), or start Docker"
)


def kafka_version() -> str:
    """The one Kafka version of the project: the jar broker's, in tools/kafka/pom.xml."""
    pom = (KAFKA_TOOLS / "pom.xml").read_text()
    match = re.search(r"<kafka\.version>([^<]+)</kafka\.version>", pom)
    assert match, "tools/kafka/pom.xml names no kafka.version"
    return match.group(1)


def container_image() -> str:
    return os.environ.get("KAFKA_TEST_IMAGE") or f"apache/kafka:{kafka_version()}"


def docker_problem(image: str, pull_timeout_s: float = 120) -> str | None:
    """None when a Docker engine answers and has (or pulls) ``image``; else why not."""
    try:
        import docker

        client = docker.from_env(timeout=3)
        client.ping()
    except Exception:
        return "no Docker engine answers"
    try:
        try:
            client.images.get(image)
            return None
        except docker.errors.ImageNotFound:
            pass
        repository, _, tag = image.rpartition(":")
        docker.from_env(timeout=pull_timeout_s).images.pull(repository, tag=tag)
    except Exception as error:
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error)
        return f"Docker answers but cannot supply {image} ({first_line})"
    return None


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@contextmanager
def _kafka_container(image: str) -> Iterator[str]:
    # apache/kafka is configured by KAFKA_* variables, as in docker-compose.yml. The
    # advertised address must be the host's port, so that port is chosen beforehand.
    from testcontainers.core.container import DockerContainer
    from testcontainers.core.wait_strategies import LogMessageWaitStrategy

    host_port = _free_port()
    container = DockerContainer(image).with_bind_ports(9092, host_port)
    container.with_envs(
        KAFKA_NODE_ID="1",
        KAFKA_PROCESS_ROLES="broker,controller",
        KAFKA_LISTENERS="PLAINTEXT://:9092,CONTROLLER://:9093",
        KAFKA_ADVERTISED_LISTENERS=f"PLAINTEXT://127.0.0.1:{host_port}",
        KAFKA_CONTROLLER_LISTENER_NAMES="CONTROLLER",
        KAFKA_LISTENER_SECURITY_PROTOCOL_MAP="CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT",
        KAFKA_CONTROLLER_QUORUM_VOTERS="1@localhost:9093",
        KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR="1",
        KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR="1",
        KAFKA_TRANSACTION_STATE_LOG_MIN_ISR="1",
        KAFKA_GROUP_INITIAL_REBALANCE_DELAY_MS="0",
    )
    container.waiting_for(
        LogMessageWaitStrategy(re.compile(r"Kafka Server started")).with_startup_timeout(120)
    )
    with container:
        yield f"127.0.0.1:{host_port}"


@contextmanager
def _jar_broker() -> Iterator[str]:
    """``broker.sh up`` (reusing a healthy broker on KAFKA_PORT); stopped again on leaving
    only when it was started here."""
    script = str(KAFKA_TOOLS / "broker.sh")
    # The port named: `down` without one stops every broker of the state directory.
    env = os.environ | {"KAFKA_PORT": os.environ.get("KAFKA_PORT") or "19092"}
    running = subprocess.run([script, "status"], env=env, capture_output=True, check=False)
    up = subprocess.run([script, "up"], env=env, capture_output=True, text=True, check=False)
    if up.returncode != 0:
        pytest.fail(f"tools/kafka/broker.sh up failed:\n{up.stderr}", pytrace=False)
    try:
        yield up.stdout.strip().removeprefix("export KAFKA_BROKERS=")
    finally:
        if running.returncode != 0:
            subprocess.run([script, "down"], env=env, capture_output=True, check=False)


def _to_stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


@contextmanager
def kafka_bootstrap(say: Callable[[str], None] = _to_stderr) -> Iterator[str]:
    """Yield a ``host:port`` bootstrap address of a running broker (see module docstring).

    ``say`` shows the one line on a fallback to the jar broker (pytest's capture would
    hide stderr: tests/conftest.py passes its terminal reporter)."""
    servers = os.environ.get("KAFKA_BOOTSTRAP_SERVERS", "").strip()
    if servers:
        yield servers
        return
    image = container_image()
    problem = docker_problem(image)
    if problem is None:
        with _kafka_container(image) as servers:
            yield servers
        return
    if shutil.which("java"):
        say(f"tests: {problem}: using the jar broker (tools/kafka/broker.sh) instead")
        with _jar_broker() as servers:
            yield servers
        return
    unavailable(NO_BROKER)


def unavailable(reason: str) -> NoReturn:
    """What a test does without the broker it needs: fail on CI, skip elsewhere."""
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(reason, pytrace=False)
    pytest.skip(reason)


@contextmanager
def admin_client(servers: str) -> Iterator[KafkaAdminClient]:
    """A KafkaAdminClient for tests, closed on leaving."""
    admin = KafkaAdminClient(bootstrap_servers=servers, client_id="tests-admin")
    try:
        yield admin
    finally:
        admin.close()


def set_topic_config(servers: str, topic: str, name: str, value: str) -> None:
    """Change one config of ``topic`` (e.g. ``max.message.bytes``) on the broker."""
    with admin_client(servers) as admin:
        admin.alter_configs([ConfigResource(ConfigResourceType.TOPIC, topic, {name: value})])


def unique_name(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


def create_topic(
    servers: str,
    partitions: int = 1,
    prefix: str = "jobs",
    configs: dict[str, str] | None = None,
) -> str:
    """Create a fresh topic with ``partitions`` partitions and return its name.

    Returns only once the broker's metadata shows every partition: a consumer group
    formed before that is given no partitions ("No partition metadata for topic") and
    waits for a metadata refresh, which made tests flaky on a freshly started broker.
    """
    topic = unique_name(prefix)
    with admin_client(servers) as admin:
        admin.create_topics(
            [
                NewTopic(
                    topic,
                    num_partitions=partitions,
                    replication_factor=1,
                    topic_configs=configs or {},
                )
            ]
        )
    _wait_for_partitions(servers, topic, partitions)
    return topic


def _wait_for_partitions(servers: str, topic: str, partitions: int, timeout_s: float = 30) -> None:
    consumer = KafkaConsumer(bootstrap_servers=servers, client_id="tests-metadata")
    try:
        wait_until(
            lambda: len(consumer.partitions_for_topic(topic) or ()) == partitions,
            timeout_s,
            f"topic {topic} has no metadata for {partitions} partitions",
        )
    finally:
        consumer.close()


def job_record(job: Job, partition: int) -> tuple[bytes, bytes, int]:
    """A ``(key, value, partition)`` record as the wire contract says."""
    return job.id.encode(), task_from_job(job).SerializeToString(), partition


def task_bytes(job_id: str, job_type: int = pb.JobTask.SLEEP) -> bytes:
    """A JobTask record value: a 1 ms job of ``job_type``."""
    return pb.JobTask(id=job_id, type=job_type, payload='{"ms": 1}').SerializeToString()  # type: ignore[arg-type]


def produce(
    servers: str,
    topic: str,
    records: Iterable[tuple[bytes | None, bytes | None, int]],
    max_request_size: int = 1024 * 1024,
) -> None:
    """Write raw ``(key, value, partition)`` records and wait until all are acknowledged.

    ``max_request_size`` is the producer's limit (its default, 1 MiB): raise it for
    larger records, on a topic whose ``max.message.bytes`` allows them.
    """
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


def produce_batch(
    servers: str,
    topic: str,
    job_ids: Iterable[str],
    partition: int = 0,
    compression_type: str | None = None,
) -> list[int]:
    """Write 1 ms SLEEP jobs (key = id) to ``partition`` as one record batch, compressed
    with ``compression_type``; return their offsets once all are acknowledged.

    One batch: the producer lingers a second, far longer than the sends take, and the
    jobs are far smaller than its batch size. Fails if the batch went uncompressed, as
    kafka-python sends one that compressing would not make smaller (a few tiny jobs).
    """
    producer = KafkaProducer(
        bootstrap_servers=servers, acks="all", compression_type=compression_type, linger_ms=1000
    )
    try:
        futures = [
            producer.send(topic, key=job_id.encode(), value=task_bytes(job_id), partition=partition)
            for job_id in job_ids
        ]
        producer.flush(timeout=60)
        offsets = [future.get(timeout=0).offset for future in futures]
        if compression_type is not None:
            rate = producer.metrics()["producer-metrics"]["compression-rate-avg"]
            assert rate < 1, f"the {compression_type} batch was sent uncompressed: add jobs"
        return offsets
    finally:
        producer.close()


def committed_offsets(servers: str, group_id: str, topic: str) -> dict[int, int]:
    """The group's committed offset per partition of ``topic`` (partitions without one left out)."""
    with admin_client(servers) as admin:
        offsets = admin.list_group_offsets(group_id).get(group_id, {})
    return {tp.partition: meta.offset for tp, meta in offsets.items() if tp.topic == topic}


def commit_with_metadata(
    servers: str, group_id: str, topic: str, offset: int, metadata: str
) -> None:
    """Commit ``offset`` with ``metadata`` for partition 0 of ``topic``, as another tool might."""
    tp = TopicPartition(topic, 0)
    consumer = KafkaConsumer(bootstrap_servers=servers, group_id=group_id, enable_auto_commit=False)
    try:
        consumer.assign([tp])
        consumer.commit({tp: OffsetAndMetadata(offset, metadata, -1)})
    finally:
        consumer.close(autocommit=False)


def committed_metadata(servers: str, group_id: str, topic: str) -> dict[int, str]:
    """The metadata string of the group's commit per partition of ``topic``, without the
    NUL confluent-kafka writes after it (KAFKA_CLIENT=confluent)."""
    with admin_client(servers) as admin:
        offsets = admin.list_group_offsets(group_id).get(group_id, {})
    return {
        tp.partition: meta.metadata.removesuffix("\x00")
        for tp, meta in offsets.items()
        if tp.topic == topic
    }


def end_offsets(servers: str, topic: str) -> dict[int, int]:
    """The end (high-water mark) of every partition of ``topic``."""
    consumer = KafkaConsumer(bootstrap_servers=servers, client_id="tests-offsets")
    try:
        partitions = consumer.partitions_for_topic(topic) or set()
        ends = consumer.end_offsets([TopicPartition(topic, p) for p in partitions])
    finally:
        consumer.close()
    return {tp.partition: offset for tp, offset in ends.items()}


def read_all(servers: str, topic: str, count: int, timeout_s: float = 30.0) -> list[Any]:
    """At least ``count`` records from every partition of ``topic``, from the start (no
    group), or fewer when the timeout comes first. Waits for the topic to exist: a
    dead-letter topic appears only with its first letter."""
    consumer = KafkaConsumer(bootstrap_servers=servers, enable_auto_commit=False)
    records: list[Any] = []
    try:
        deadline = time.monotonic() + timeout_s
        partitions = wait_until(lambda: consumer.partitions_for_topic(topic), timeout_s)
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


def group_members(servers: str, group_id: str) -> dict[str, set[int]]:
    """The consumer group's members now: client id -> partitions assigned (all topics)."""
    with admin_client(servers) as admin:
        group = admin.describe_groups([group_id]).get(group_id) or {}
    members: dict[str, set[int]] = {}
    for member in group.get("members") or []:
        assignment = member.get("member_assignment") or {}
        members[member["client_id"]] = {
            p for tp in assignment.get("assigned_partitions") or [] for p in tp["partitions"]
        }
    return members
