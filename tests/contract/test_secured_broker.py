"""The worker and ``submit`` against a broker secured as managed Kafka services are:
SASL_SSL, SCRAM-SHA-512, ACLs (tests/support/secure_kafka.py).

The happy path runs jobs through to a real Core. Each everyday mistake ends start-up
with exit 2 and one last line naming what to fix, with no traceback, in seconds.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
from kafka.admin import ACLOperation, ResourceType

from jobworker.adapters.kafka.modes import KafkaClient
from tests.support.e2e import results_in_core, running_core
from tests.support.fixtures import StartWorker
from tests.support.kafka import task_bytes, unique_name
from tests.support.processes import events_named, wait_while_running
from tests.support.secure_kafka import SecureBroker, assert_refused, jobworker

# A topic the broker has not got is waited for up to this (publisher.METADATA_WAIT_S).
MISSING_TOPIC_BOUND_S = 25.0
RunEnv = Callable[..., dict[str, str]]
WRONG_PASSWORD = "not-the-password"  # noqa: S105 - a test's deliberate mistake


@pytest.fixture
def grants(secure_kafka: SecureBroker) -> tuple[str, str]:
    """A topic and a group the worker may read, and its dead-letter topic."""
    topic, group = secure_kafka.new_topic(), unique_name("group")
    secure_kafka.create_topics(f"{topic}.dlq")
    secure_kafka.grant_consumer(topic, group)
    return topic, group


@pytest.fixture
def run_env(kafka_client: KafkaClient) -> Callable[..., dict[str, str]]:
    """``run_env(secure, topic, group, tmp, **more)``: a worker that reads ``topic`` in
    ``group`` and writes results to a file, with each Kafka client in turn."""

    def make(
        secure: SecureBroker, topic: str, group: str, tmp: Path, **more: str
    ) -> dict[str, str]:
        return worker_env(secure, topic, group, tmp, KAFKA_CLIENT=str(kafka_client), **more)

    return make


def worker_env(
    secure: SecureBroker, topic: str, group: str, tmp: Path, **more: str
) -> dict[str, str]:
    return secure.worker_env(
        JOB_SOURCE="kafka",
        RESULT_SINK="file",
        RESULT_FILE=str(tmp / "results.jsonl"),
        KAFKA_TOPIC=topic,
        KAFKA_GROUP_ID=group,
        **more,
    )


# -- the happy path -----------------------------------------------------------------


def test_jobs_and_poison_records_go_through_sasl_ssl(
    secure_kafka: SecureBroker, start_worker: StartWorker, tmp_path: Path, run_env: RunEnv
) -> None:
    topic, group = secure_kafka.new_topic(partitions=2), unique_name("group")
    dlq = f"{topic}.dlq"
    secure_kafka.create_topics(dlq)
    secure_kafka.grant_consumer(topic, group)
    # submit writes the jobs; the worker writes poison records to the dead-letter topic.
    secure_kafka.grant(ResourceType.TOPIC, topic, [ACLOperation.WRITE])
    secure_kafka.grant(ResourceType.TOPIC, dlq, [ACLOperation.WRITE, ACLOperation.DESCRIBE])
    env = secure_kafka.worker_env(KAFKA_TOPIC=topic)
    submitted = jobworker(
        "submit",
        "--type",
        "SLEEP",
        "--payload",
        '{"ms": 5}',
        "--count",
        "20",
        "--id",
        "s",
        env=env,
    )
    assert submitted.status == 0, submitted.stderr
    assert "connecting to Kafka" in submitted.stderr
    secure_kafka.produce(topic, [(b"poison", b"\xff not a task")] * 3)
    ids = [f"s-{i}" for i in range(20)]
    with running_core(tmp_path) as core:
        worker = start_worker(
            "secure",
            env
            | {
                "JOB_SOURCE": "kafka",
                "RESULT_SINK": "grpc",
                "GRPC_SERVER_ADDRESS": core.address,
                "KAFKA_GROUP_ID": group,
                "KAFKA_COMMIT_INTERVAL": "200ms",
                "KAFKA_CLIENT": run_env(secure_kafka, topic, group, tmp_path)["KAFKA_CLIENT"],
            },
        )
        assert wait_while_running(
            lambda: len(results_in_core(core.db_path, ids)) == len(ids), 60, worker
        ), "not every job reached Core"
        dead = secure_kafka.read(dlq, 3)
        assert len(dead) == 3
        assert dict(dead[0].headers)["x-dlq-source-topic"] == topic.encode()
        assert worker.stop() == 0


# -- run: the everyday mistakes ---------------------------------------------------


def test_a_wrong_password_names_the_credentials(
    secure_kafka: SecureBroker, grants: tuple[str, str], tmp_path: Path, run_env: RunEnv
) -> None:
    env = run_env(secure_kafka, *grants, tmp_path, KAFKA_SASL_PASSWORD=WRONG_PASSWORD)
    outcome = jobworker("run", env=env)
    assert_refused(outcome, "KAFKA_SASL_USERNAME", "KAFKA_SASL_PASSWORD")


def test_a_mechanism_the_broker_does_not_offer_names_what_it_offers(
    secure_kafka: SecureBroker, grants: tuple[str, str], tmp_path: Path, run_env: RunEnv
) -> None:
    env = run_env(secure_kafka, *grants, tmp_path, KAFKA_SASL_MECHANISM="SCRAM-SHA-256")
    outcome = jobworker("run", env=env)
    assert_refused(outcome, "KAFKA_SASL_MECHANISM", "it offers SCRAM-SHA-512")


def test_a_ca_that_did_not_sign_the_broker_names_the_ca_file(
    secure_kafka: SecureBroker,
    grants: tuple[str, str],
    tmp_path: Path,
    run_env: RunEnv,
    kafka_client: KafkaClient,
) -> None:
    env = run_env(secure_kafka, *grants, tmp_path, KAFKA_SSL_CAFILE=str(secure_kafka.other_ca_file))
    outcome = jobworker("run", env=env)
    # OpenSSL's reason as each client words it.
    reason = (
        "certificate verify failed"
        if kafka_client == KafkaClient.CONFLUENT
        else "unable to get local issuer certificate"
    )
    assert_refused(outcome, "KAFKA_SSL_CAFILE", reason)


def test_no_acl_on_the_jobs_topic_names_the_topic_and_the_grant(
    secure_kafka: SecureBroker, tmp_path: Path, run_env: RunEnv
) -> None:
    topic, group = secure_kafka.new_topic(), unique_name("group")
    secure_kafka.grant(ResourceType.GROUP, group, [ACLOperation.READ])
    outcome = jobworker("run", env=run_env(secure_kafka, topic, group, tmp_path))
    assert_refused(outcome, "KAFKA_TOPIC", "READ and DESCRIBE", repr(topic))


def test_no_read_on_the_group_is_the_one_line_alone(
    secure_kafka: SecureBroker, tmp_path: Path, run_env: RunEnv
) -> None:
    topic, group = secure_kafka.new_topic(), unique_name("group")
    secure_kafka.grant(ResourceType.TOPIC, topic, [ACLOperation.READ, ACLOperation.DESCRIBE])
    outcome = jobworker("run", env=run_env(secure_kafka, topic, group, tmp_path))
    assert_refused(outcome, "KAFKA_GROUP_ID", "READ")
    assert "critical" not in outcome.stderr.lower(), outcome.stderr


# -- the dead-letter topic --------------------------------------------------------


def test_a_refused_dead_letter_names_the_write_grant_and_recovery_is_logged_once(
    secure_kafka: SecureBroker,
    grants: tuple[str, str],
    start_worker: StartWorker,
    tmp_path: Path,
    run_env: RunEnv,
) -> None:
    topic, group = grants
    dlq = f"{topic}.dlq"
    secure_kafka.grant(ResourceType.TOPIC, dlq, [ACLOperation.DESCRIBE])  # no WRITE yet
    secure_kafka.produce(topic, [(b"p1", b"\xff"), (b"job-1", task_bytes("job-1"))])
    worker = start_worker("dlq", run_env(secure_kafka, topic, group, tmp_path))
    refused = "cannot write to the dead-letter topic"
    assert wait_while_running(lambda: events_named(worker, refused), 30, worker), worker.log()
    event = events_named(worker, refused)[0]
    assert event["error_type"] == "TopicAuthorizationFailedError", event
    assert "WRITE" in event["fix"] and dlq in event["fix"], event
    assert "ClusterAuthorization" not in worker.log()
    assert secure_kafka.committed(group, topic).get(0, 0) == 0  # held before the poison

    secure_kafka.grant(ResourceType.TOPIC, dlq, [ACLOperation.WRITE])
    assert wait_while_running(lambda: secure_kafka.committed(group, topic).get(0) == 2, 60, worker)
    assert len(secure_kafka.read(dlq, 1)) == 1
    assert len(events_named(worker, "the dead-letter topic accepts records again")) == 1
    assert worker.stop() == 0


# -- submit -----------------------------------------------------------------------


def test_submit_with_a_wrong_password_names_the_credentials(
    secure_kafka: SecureBroker, grants: tuple[str, str]
) -> None:
    env = secure_kafka.worker_env(KAFKA_TOPIC=grants[0], KAFKA_SASL_PASSWORD=WRONG_PASSWORD)
    outcome = jobworker("submit", "--type", "SLEEP", env=env)
    assert_refused(outcome, "KAFKA_SASL_USERNAME", "KAFKA_SASL_PASSWORD")


def test_submit_to_a_topic_it_may_not_write_names_the_grant(
    secure_kafka: SecureBroker, grants: tuple[str, str]
) -> None:
    # READ and DESCRIBE but no WRITE: the idempotent producer's InitProducerId is refused.
    outcome = jobworker(
        "submit", "--type", "SLEEP", env=secure_kafka.worker_env(KAFKA_TOPIC=grants[0])
    )
    assert_refused(outcome, "KAFKA_TOPIC", "WRITE")


def test_submit_to_a_topic_it_may_not_see_names_the_grant(secure_kafka: SecureBroker) -> None:
    env = secure_kafka.worker_env(KAFKA_TOPIC=unique_name("hidden"))
    outcome = jobworker("submit", "--type", "SLEEP", env=env)
    assert_refused(outcome, "KAFKA_TOPIC", "WRITE and DESCRIBE")


def test_submit_to_a_missing_topic_names_the_topic(secure_kafka: SecureBroker) -> None:
    missing = unique_name("missing")
    secure_kafka.grant(ResourceType.TOPIC, missing, [ACLOperation.DESCRIBE, ACLOperation.WRITE])
    env = secure_kafka.worker_env(KAFKA_TOPIC=missing)
    outcome = jobworker("submit", "--type", "SLEEP", env=env)
    assert_refused(outcome, "KAFKA_TOPIC", missing, bound_s=MISSING_TOPIC_BOUND_S)


def test_submit_to_a_port_nobody_listens_on_says_what_it_waited_for_and_why() -> None:
    env = {"KAFKA_BROKERS": "127.0.0.1:1", "LOG_FORMAT": "json"}
    outcome = jobworker("submit", "--type", "SLEEP", env=env)
    assert outcome.status == 69, outcome.stderr
    first = json.loads(outcome.stderr.splitlines()[0])
    assert first["event"] == "connecting to Kafka" and first["brokers"] == "127.0.0.1:1"
    assert "ECONNREFUSED" in outcome.last_line, outcome.stderr
    assert "Traceback" not in outcome.stderr
