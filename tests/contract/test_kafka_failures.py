"""KafkaJobSource when Kafka says no: fatal refusals stop it, a broken DLQ never stalls it."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import pytest
from kafka import errors as kafka_errors
from kafka.admin import NewTopic
from structlog.testing import capture_logs

from jobworker.adapters.kafka import KafkaClientSettings, KafkaJobSource
from jobworker.adapters.kafka.refusals import fatal_error_message
from jobworker.domain.errors import SourceFailed
from jobworker.domain.model import Job
from tests.contract.conftest import JobsTopic
from tests.support.kafka import (
    admin_client,
    committed_offsets,
    create_topic,
    produce,
    read_all,
    set_topic_config,
    task_bytes,
    unique_name,
)

pytestmark = pytest.mark.contract

SourceFactory = Callable[..., KafkaJobSource]
# The broker's default group.max.session.timeout.ms is 30 minutes.
ABOVE_BROKER_MAX_SESSION_MS = 30 * 60 * 1000 + 1


def test_a_session_timeout_the_broker_refuses_stops_the_source_naming_the_setting(
    kafka_servers: str,
    jobs_topic: JobsTopic,
    group_id: str,
    source_factory: SourceFactory,
) -> None:
    topic = jobs_topic(["job-0"])
    settings = KafkaClientSettings([kafka_servers], session_timeout_ms=ABOVE_BROKER_MAX_SESSION_MS)
    source = source_factory(topic, group_id, settings=settings)

    started = time.monotonic()
    with pytest.raises(SourceFailed) as failure:
        for _ in range(50):
            source.fetch(10, 0.2)

    assert time.monotonic() - started < 5
    message = str(failure.value)
    assert "InvalidSessionTimeoutError" in message
    assert "KAFKA_SESSION_TIMEOUT" in message
    assert "\n" not in message


@pytest.mark.parametrize(
    "error",
    [
        kafka_errors.KafkaConnectionError("connection refused"),
        kafka_errors.KafkaTimeoutError("no metadata"),
        kafka_errors.RequestTimedOutError(),
        kafka_errors.CommitFailedError("group rebalanced"),
        kafka_errors.RebalanceInProgressError(),
        kafka_errors.CoordinatorNotAvailableError(),
        kafka_errors.NotCoordinatorError(),
        kafka_errors.UnknownTopicOrPartitionError(),
        kafka_errors.UnknownMemberIdError(),
        kafka_errors.IllegalGenerationError(),
        kafka_errors.NodeNotReadyError(),
    ],
    ids=lambda error: type(error).__name__,
)
def test_transient_kafka_errors_are_not_fatal(error: kafka_errors.KafkaError) -> None:
    assert fatal_error_message(error, "jobs", "workers", 45_000) is None


@pytest.mark.parametrize(
    ("error", "variable"),
    [
        (kafka_errors.InvalidSessionTimeoutError(), "KAFKA_SESSION_TIMEOUT"),
        (kafka_errors.InvalidGroupIdError(), "KAFKA_GROUP_ID"),
        (kafka_errors.GroupAuthorizationFailedError("workers"), "KAFKA_GROUP_ID"),
        (kafka_errors.TopicAuthorizationFailedError({"jobs"}), "KAFKA_TOPIC"),
        (kafka_errors.SaslAuthenticationFailedError("bad password"), "KAFKA_SASL_PASSWORD"),
        (kafka_errors.UnsupportedSaslMechanismError(), "KAFKA_SASL_MECHANISM"),
        (kafka_errors.GroupMaxSizeReachedError(), "KAFKA_GROUP_ID"),
    ],
    ids=lambda value: type(value).__name__ if isinstance(value, Exception) else value,
)
def test_refusals_retrying_cannot_fix_are_fatal_and_name_the_setting(
    error: kafka_errors.KafkaError, variable: str
) -> None:
    message = fatal_error_message(error, "jobs", "workers", 45_000)

    assert message is not None
    assert type(error).__name__ in message
    assert variable in message


def _colliding_topic(servers: str) -> str:
    """A topic name the broker refuses to create: it collides with an existing one."""
    existing = unique_name("dlq.collides")
    with admin_client(servers) as admin:
        admin.create_topics([NewTopic(existing, num_partitions=1, replication_factor=1)])
    return existing.replace(".", "_")


@pytest.mark.timeout(90)
def test_an_unwritable_dead_letter_topic_never_blocks_the_fetch_loop(
    kafka_servers: str,
    topic_factory: Callable[[int], str],
    group_id: str,
    source_factory: SourceFactory,
) -> None:
    topic = topic_factory(1)
    poison = [(f"bad-{i}".encode(), b"\xff not protobuf", 0) for i in range(30)]
    good = [(f"job-{i}".encode(), task_bytes(f"job-{i}"), 0) for i in range(5)]
    produce(kafka_servers, topic, [*good, *poison, *good])
    source = source_factory(
        topic,
        group_id,
        dlq_topic=_colliding_topic(kafka_servers),
        commit_interval_s=0,
        dead_letter_retry_s=0.25,
        dead_letter_max_backoff_s=1.0,
    )

    jobs: list[Job] = []
    slowest = 0.0
    with capture_logs() as logs:
        # The clock starts once the group gave us the partition (slow on a new broker).
        joined_by = time.monotonic() + 60
        while not jobs and time.monotonic() < joined_by:
            jobs.extend(_fetch_and_ack(source))
        assert jobs, (
            f"no job within 60 s: generation {source.group_generation()}, "
            f"assigned {source.assigned()}, warnings "
            f"{[e for e in logs if e['log_level'] in ('warning', 'error')][:5]}"
        )
        deadline = time.monotonic() + 7
        while time.monotonic() < deadline:
            started = time.monotonic()
            jobs.extend(_fetch_and_ack(source))
            slowest = max(slowest, time.monotonic() - started)

    # A send waits at most 1 s for the topic, and the outbox stops at its first failure.
    assert slowest < 0.2 + 1.0 + 1.0
    assert [job.id for job in jobs] == [f"job-{i}" for i in range(5)] * 2
    warnings = _dead_letter_refusals(logs)
    # Each try costs a blocked second, then 0.25, 0.5, 1, 1… s of backoff: a few lines
    # in 7 s, not one per record.
    assert 3 <= len(warnings) <= 5
    assert [w["retry_in_s"] for w in warnings[:3]] == [0.25, 0.5, 1.0]
    assert all(w["waiting"] >= 30 for w in warnings)
    # The first poison record is not done, so the commit stays before it.
    assert committed_offsets(kafka_servers, group_id, topic) == {0: 5}


@pytest.mark.timeout(120)
def test_a_dead_letter_topic_that_refused_a_record_is_written_once_it_accepts_it(
    kafka_servers: str,
    topic_factory: Callable[[int], str],
    group_id: str,
    source_factory: SourceFactory,
) -> None:
    # A record over the topic's max.message.bytes is a fatal error to kafka-python's
    # idempotent producer: it fails every later send. Once the topic is fixed, the
    # letters must still land, without a restart.
    topic = topic_factory(1)
    dlq_topic = create_topic(kafka_servers, 1, prefix="dlq", configs={"max.message.bytes": "64"})
    poison = [(f"bad-{i}".encode(), b"\xff" * 200, 0) for i in range(3)]
    produce(kafka_servers, topic, [*poison, (b"job-0", task_bytes("job-0"), 0)])
    source = source_factory(
        topic,
        group_id,
        dlq_topic=dlq_topic,
        commit_interval_s=0,
        dead_letter_retry_s=0.25,
        dead_letter_max_backoff_s=1.0,
    )

    jobs: list[Job] = []
    with capture_logs() as logs:
        deadline = time.monotonic() + 60
        while not _dead_letter_refusals(logs) and time.monotonic() < deadline:
            jobs.extend(_fetch_and_ack(source))
        assert _dead_letter_refusals(logs), "the dead-letter topic never refused a record"
        assert committed_offsets(kafka_servers, group_id, topic) in ({}, {0: 0})

        set_topic_config(kafka_servers, dlq_topic, "max.message.bytes", "1048588")
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            jobs.extend(_fetch_and_ack(source))
            if committed_offsets(kafka_servers, group_id, topic) == {0: 4}:
                break

    assert [job.id for job in jobs] == ["job-0"]
    assert committed_offsets(kafka_servers, group_id, topic) == {0: 4}
    letters = read_all(kafka_servers, dlq_topic, 3)
    assert sorted(letter.key for letter in letters) == [b"bad-0", b"bad-1", b"bad-2"]
    assert {letter.value for letter in letters} == {b"\xff" * 200}


def _dead_letter_refusals(logs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [e for e in logs if "dead-letter topic (KAFKA_DLQ_TOPIC)" in e["event"]]


def _fetch_and_ack(source: KafkaJobSource) -> list[Job]:
    """One fetch; every job it brings is acked at once, as if it ran in no time."""
    jobs = list(source.fetch(100, 0.2))
    for job in jobs:
        source.ack(job)
    return jobs
