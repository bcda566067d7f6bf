"""A Kafka broker secured as managed services secure theirs, for the contract tier.

SASL_SSL only: TLS with a certificate from a test CA (PEM key stores), SCRAM-SHA-512
users created when the storage is formatted, ``StandardAuthorizer`` with no access
without an ACL. It runs from the same jars as ``tools/kafka/broker.sh`` (one Kafka
version), on ports of its own, in a temporary folder, and is stopped when the session
ends. Two users: ``admin`` (a super user, for the tests' own set-up) and ``worker``
(the principal the worker runs as, granted only what each test grants it).

The controller listener is PLAINTEXT on loopback, and its principal (ANONYMOUS) is a
super user so that the node can talk to itself; clients only ever see the SASL_SSL
listener.
"""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import trustme
from cryptography.hazmat.primitives import serialization
from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from kafka.admin import (
    ACL,
    ACLOperation,
    ACLPermissionType,
    ACLResourcePatternType,
    NewTopic,
    ResourcePattern,
    ResourceType,
)

from jobworker.adapters.kafka import KafkaClientSettings
from jobworker.adapters.kafka.quirks import open_admin_client
from tests.support.kafka import KAFKA_TOOLS, unavailable, unique_name
from tests.support.processes import ROOT, free_port, worker_env
from tests.support.waiting import wait_until

ADMIN = ("admin", "admin-secret")
WORKER = ("worker", "worker-secret")
MECHANISM = "SCRAM-SHA-512"
# A cluster id of its own (any base64 UUID): the storage lives in a temporary folder.
_CLUSTER_ID = "c2VjdXJlLWpvYndvcmtlcg"
_START_TIMEOUT_S = 120
NO_JAVA = (
    "the secured broker needs java (17+) and the Kafka jars (gathered with mvn, as"
    " tools/kafka/broker.sh does)"
)
# Each mistake must end well within the 60 s the issue allows; they take 1-3 s here.
MISTAKE_BOUND_S = 20.0

Headers = Sequence[tuple[str, bytes]]


def _libs() -> Path:
    """The folder of the Kafka jars, gathered by broker.sh (once, with mvn) if need be."""
    gathered = subprocess.run(
        [str(KAFKA_TOOLS / "broker.sh"), "jars"], capture_output=True, text=True, check=False
    )
    if gathered.returncode != 0:
        if not shutil.which("mvn"):
            unavailable(f"{NO_JAVA}: no jars yet and no mvn to gather them")
        pytest.fail(f"broker.sh jars failed:\n{gathered.stderr}", pytrace=False)
    return Path(gathered.stdout.strip())


@dataclass(frozen=True)
class SecureBroker:
    """A running secured broker: where it listens and the files a client needs."""

    bootstrap: str
    ca_file: Path
    # A CA that did not sign the broker's certificate: for the wrong-CA mistake.
    other_ca_file: Path
    log_file: Path
    _admin_settings: KafkaClientSettings = field(repr=False)

    def client_settings(
        self, user: tuple[str, str] = WORKER, **overrides: Any
    ) -> KafkaClientSettings:
        """Settings for a client of ``user`` over SASL_SSL; ``overrides`` win."""
        fields: dict[str, Any] = {
            "bootstrap_servers": [self.bootstrap],
            "client_id": "secure-tests",
            "security_protocol": "SASL_SSL",
            "sasl_mechanism": MECHANISM,
            "sasl_username": user[0],
            "sasl_password": user[1],
            "ssl_cafile": str(self.ca_file),
        }
        return KafkaClientSettings(**(fields | overrides))

    def worker_env(self, **overrides: str) -> dict[str, str]:
        """The environment variables of a worker (or ``submit``) running as ``worker``."""
        return {
            "KAFKA_BROKERS": self.bootstrap,
            "KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
            "KAFKA_SASL_MECHANISM": MECHANISM,
            "KAFKA_SASL_USERNAME": WORKER[0],
            "KAFKA_SASL_PASSWORD": WORKER[1],
            "KAFKA_SSL_CAFILE": str(self.ca_file),
        } | overrides

    @contextmanager
    def admin(self) -> Iterator[Any]:
        admin = open_admin_client(**self._admin_settings.client_kwargs())
        try:
            yield admin
        finally:
            admin.close()

    def create_topics(self, *names: str, partitions: int = 1) -> None:
        with self.admin() as admin:
            admin.create_topics(
                [NewTopic(name, num_partitions=partitions, replication_factor=1) for name in names]
            )

    def new_topic(self, prefix: str = "jobs", partitions: int = 1) -> str:
        topic = unique_name(prefix)
        self.create_topics(topic, partitions=partitions)
        return topic

    def grant(
        self,
        resource: ResourceType,
        name: str,
        operations: Iterable[ACLOperation],
        user: str = WORKER[0],
    ) -> None:
        """Allow ``user`` ``operations`` on the resource called ``name`` (a literal name)."""
        pattern = ResourcePattern(resource, name, ACLResourcePatternType.LITERAL)
        acls = [
            ACL(f"User:{user}", "*", operation, ACLPermissionType.ALLOW, pattern)
            for operation in operations
        ]
        with self.admin() as admin:
            result = admin.create_acls(acls)
        assert not result["failed"], result["failed"]

    def grant_consumer(self, topic: str, group: str) -> None:
        """What a worker needs to read ``topic`` in ``group`` (docs/operations.md)."""
        self.grant(ResourceType.TOPIC, topic, [ACLOperation.READ, ACLOperation.DESCRIBE])
        self.grant(ResourceType.GROUP, group, [ACLOperation.READ])

    def produce(self, topic: str, records: Iterable[tuple[bytes | None, bytes]]) -> None:
        """Write ``(key, value)`` records as ``admin`` and wait for their acks."""
        self.produce_with_headers(topic, [(key, value, ()) for key, value in records])

    def produce_with_headers(
        self, topic: str, records: Iterable[tuple[bytes | None, bytes, Headers]]
    ) -> None:
        """Write ``(key, value, headers)`` records as ``admin`` and wait for their acks."""
        producer = KafkaProducer(**self._admin_settings.producer_kwargs(), acks="all")
        try:
            futures = [
                producer.send(topic, key=key, value=value, headers=list(headers))
                for key, value, headers in records
            ]
            producer.flush(timeout=30)
            for future in futures:
                future.get(timeout=0)
        finally:
            producer.close()

    def read(self, topic: str, count: int, timeout_s: float = 30.0) -> list[Any]:
        """Up to ``count`` records of partition 0 of ``topic`` from the start, as ``admin``."""
        consumer = KafkaConsumer(**self._admin_settings.client_kwargs(), enable_auto_commit=False)
        records: list[Any] = []
        try:
            tp = TopicPartition(topic, 0)
            consumer.assign([tp])
            consumer.seek_to_beginning(tp)
            deadline = time.monotonic() + timeout_s
            while len(records) < count and time.monotonic() < deadline:
                for batch in consumer.poll(timeout_ms=500).values():
                    records.extend(batch)
        finally:
            consumer.close()
        return records

    def read_all(self, topic: str, timeout_s: float = 30.0) -> list[Any]:
        """Every record of partition 0 of ``topic`` up to its end now, as ``admin``."""
        consumer = KafkaConsumer(**self._admin_settings.client_kwargs(), enable_auto_commit=False)
        records: list[Any] = []
        try:
            tp = TopicPartition(topic, 0)
            consumer.assign([tp])
            consumer.seek_to_beginning(tp)
            end = consumer.end_offsets([tp])[tp]
            deadline = time.monotonic() + timeout_s
            while consumer.position(tp) < end and time.monotonic() < deadline:
                for batch in consumer.poll(timeout_ms=500).values():
                    records.extend(batch)
        finally:
            consumer.close()
        return records

    def committed(self, group: str, topic: str) -> dict[int, int]:
        """The group's committed offset per partition of ``topic``."""
        with self.admin() as admin:
            offsets = admin.list_group_offsets(group).get(group, {})
        return {tp.partition: meta.offset for tp, meta in offsets.items() if tp.topic == topic}

    def log_tail(self, lines: int = 40) -> str:
        text = self.log_file.read_text(errors="replace") if self.log_file.exists() else ""
        return "\n".join(text.splitlines()[-lines:])


@dataclass(frozen=True)
class Outcome:
    """How a ``jobworker`` command run to its end went."""

    status: int
    stderr: str
    seconds: float

    @property
    def last_line(self) -> str:
        lines = self.stderr.strip().splitlines()
        return lines[-1] if lines else ""


def jobworker(*args: str, env: dict[str, str], timeout_s: float = 90) -> Outcome:
    """Run ``python -m jobworker *args`` with ``env`` (over a clean environment) to its end."""
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "jobworker", *args],
        env=worker_env(**env),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout_s,
        check=False,
    )
    return Outcome(done.returncode, done.stderr, time.monotonic() - started)


def assert_refused(outcome: Outcome, *names: str, bound_s: float = MISTAKE_BOUND_S) -> None:
    """Exit 2, no traceback, in time, and a last line that names each of ``names``."""
    assert outcome.status == 2, outcome.stderr
    assert "Traceback" not in outcome.stderr, outcome.stderr
    assert outcome.last_line.startswith("jobworker: "), outcome.stderr
    for name in names:
        assert name in outcome.last_line, outcome.stderr
    assert outcome.seconds < bound_s, f"{outcome.seconds:.1f} s:\n{outcome.stderr}"


def _pkcs8_key_pem(cert: trustme.LeafCert) -> bytes:
    # Kafka's PEM key store reads PKCS#8 keys only; trustme writes the traditional form.
    key = serialization.load_pem_private_key(cert.private_key_pem.bytes(), password=None)
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _write_tls_files(folder: Path) -> tuple[Path, Path, Path]:
    """The CA file, the broker's key store (key + chain) and another CA's file."""
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1", "localhost")
    ca_file = folder / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    keystore = folder / "broker-keystore.pem"
    keystore.write_bytes(_pkcs8_key_pem(cert) + b"".join(p.bytes() for p in cert.cert_chain_pems))
    other_ca_file = folder / "other-ca.pem"
    trustme.CA().cert_pem.write_to_path(str(other_ca_file))
    return ca_file, keystore, other_ca_file


def _jaas(user: tuple[str, str]) -> str:
    return (
        "org.apache.kafka.common.security.scram.ScramLoginModule required"
        f' username="{user[0]}" password="{user[1]}";'
    )


def _server_properties(
    folder: Path, port: int, controller_port: int, ca_file: Path, keystore: Path
) -> str:
    shared = (KAFKA_TOOLS / "single-node.properties").read_text()
    return (
        shared
        + f"""\
controller.quorum.voters=1@127.0.0.1:{controller_port}
listeners=SASL_SSL://127.0.0.1:{port},CONTROLLER://127.0.0.1:{controller_port}
advertised.listeners=SASL_SSL://127.0.0.1:{port}
inter.broker.listener.name=SASL_SSL
listener.security.protocol.map=SASL_SSL:SASL_SSL,CONTROLLER:PLAINTEXT
sasl.enabled.mechanisms={MECHANISM}
sasl.mechanism.inter.broker.protocol={MECHANISM}
listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config={_jaas(ADMIN)}
ssl.keystore.type=PEM
ssl.keystore.location={keystore}
ssl.truststore.type=PEM
ssl.truststore.location={ca_file}
ssl.client.auth=none
authorizer.class.name=org.apache.kafka.metadata.authorizer.StandardAuthorizer
allow.everyone.if.no.acl.found=false
super.users=User:{ADMIN[0]};User:ANONYMOUS
log.dirs={folder / "data"}
# As managed services: topics are made on purpose, not by a client asking for one.
auto.create.topics.enable=false
offsets.topic.num.partitions=3
"""
    )


def _java(libs: Path, *args: str, log_config: str = "log4j2-tools.properties") -> list[str]:
    return [
        "java",
        *("-cp", f"{libs}/*"),
        f"-Dlog4j2.configurationFile={KAFKA_TOOLS / log_config}",
        *args,
    ]


@contextmanager
def secure_broker(folder: Path) -> Iterator[SecureBroker]:
    """Start the secured broker in ``folder``; stop it on leaving (see module docstring)."""
    if not shutil.which("java"):
        unavailable(NO_JAVA)
    libs = _libs()
    port, controller_port = free_port(), free_port()
    ca_file, keystore, other_ca_file = _write_tls_files(folder)
    config = folder / "server.properties"
    config.write_text(_server_properties(folder, port, controller_port, ca_file, keystore))
    scram = [
        f"--add-scram={MECHANISM}=[name={name},password={password}]"
        for name, password in (ADMIN, WORKER)
    ]
    subprocess.run(
        _java(
            libs,
            "-Xmx256m",
            "kafka.tools.StorageTool",
            "format",
            "-t",
            _CLUSTER_ID,
            "-c",
            str(config),
            *scram,
        ),
        check=True,
        capture_output=True,
    )
    log_file = folder / "kafka.log"
    with log_file.open("ab") as log:
        process = subprocess.Popen(
            _java(
                libs,
                *("-Xms128m", "-Xmx512m", "-XX:+UseSerialGC", "-Djava.awt.headless=true"),
                f"-Dkafka.logs.dir={folder}",
                "kafka.Kafka",
                str(config),
                log_config="log4j2.properties",
            ),
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    broker = SecureBroker(
        bootstrap=f"127.0.0.1:{port}",
        ca_file=ca_file,
        other_ca_file=other_ca_file,
        log_file=log_file,
        _admin_settings=KafkaClientSettings(
            [f"127.0.0.1:{port}"],
            client_id="secure-tests-admin",
            security_protocol="SASL_SSL",
            sasl_mechanism=MECHANISM,
            sasl_username=ADMIN[0],
            sasl_password=ADMIN[1],
            ssl_cafile=str(ca_file),
        ),
    )
    try:
        _wait_until_serving(broker, process)
        yield broker
    finally:
        _stop(process)


def _wait_until_serving(broker: SecureBroker, process: subprocess.Popen[bytes]) -> None:
    host, port = broker.bootstrap.split(":")

    def serving() -> bool:
        if process.poll() is not None:
            pytest.fail(f"the secured broker exited at start:\n{broker.log_tail()}", pytrace=False)
        try:
            socket.create_connection((host, int(port)), timeout=1).close()
            with broker.admin() as admin:
                admin.list_topics()
        except Exception:  # not serving yet, whatever the reason
            return False
        return True

    if not wait_until(serving, _START_TIMEOUT_S, interval_s=0.5):
        pytest.fail(
            f"the secured broker did not serve within {_START_TIMEOUT_S} s:\n{broker.log_tail()}",
            pytrace=False,
        )


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(30)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(10)
