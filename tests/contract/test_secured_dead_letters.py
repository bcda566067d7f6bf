"""``jobworker dlq`` against the secured broker (SASL_SSL, SCRAM-SHA-512, ACLs): each
grant the principal lacks ends the command with exit 2 and one last line naming the
resource and the grant, and a refused replay loses nothing: once granted, the next
replay sends every letter, each once.
"""

from __future__ import annotations

from dataclasses import dataclass

import pytest
from kafka.admin import ACLOperation, ResourceType

from tests.support.kafka import task_bytes, unique_name
from tests.support.secure_kafka import Headers, Outcome, SecureBroker, assert_refused, jobworker

LETTERS = 3


@dataclass(frozen=True)
class DeadLetters:
    """A dead-letter topic holding ``LETTERS`` job letters of ``source``, written by
    ``admin``, which the worker may read; ``group`` is KAFKA_GROUP_ID."""

    topic: str
    source: str
    group: str

    @property
    def checkpoint_group(self) -> str:
        return f"{self.group}.dlq-replay"


def job_letter(source: str, offset: int) -> tuple[bytes, bytes, Headers]:
    """A poison job as the worker sets it aside (adapters/kafka/dlq.py)."""
    job_id = f"job-{offset}"
    headers = [
        ("x-dlq-reason", b"handler failed: test letter"),
        ("x-dlq-source-topic", source.encode()),
        ("x-dlq-source-partition", b"0"),
        ("x-dlq-source-offset", str(offset).encode()),
    ]
    return job_id.encode(), task_bytes(job_id), headers


@pytest.fixture
def letters(secure_kafka: SecureBroker) -> DeadLetters:
    source = secure_kafka.new_topic()
    topic = secure_kafka.new_topic("dlq")
    secure_kafka.produce_with_headers(topic, [job_letter(source, i) for i in range(LETTERS)])
    return DeadLetters(topic, source, unique_name("group"))


def dlq_env(secure: SecureBroker, letters: DeadLetters) -> dict[str, str]:
    # Replay checks Core's address as a run would; job letters never dial it.
    return secure.worker_env(
        KAFKA_DLQ_TOPIC=letters.topic,
        KAFKA_GROUP_ID=letters.group,
        GRPC_SERVER_ADDRESS="127.0.0.1:1",
    )


def replay(secure: SecureBroker, letters: DeadLetters, *flags: str) -> Outcome:
    return jobworker("dlq", "replay", "--yes", *flags, env=dlq_env(secure, letters))


def replayed_offsets(secure: SecureBroker, topic: str) -> list[bytes]:
    """The dead-letter offset of each record replay wrote to ``topic``, in order."""
    return [dict(record.headers)["x-replay-dlq-offset"] for record in secure.read_all(topic)]


def assert_one_line(outcome: Outcome) -> None:
    """The refusal is the only line that is not a JSON log event."""
    plain = [line for line in outcome.stderr.splitlines() if not line.startswith("{")]
    assert plain == [outcome.last_line], outcome.stderr


def grant_replay(secure: SecureBroker, letters: DeadLetters) -> None:
    """Everything a replay to ``letters.source`` needs but WRITE elsewhere."""
    secure.grant(ResourceType.TOPIC, letters.topic, [ACLOperation.READ, ACLOperation.DESCRIBE])
    secure.grant(ResourceType.GROUP, letters.checkpoint_group, [ACLOperation.READ])


EVERY_LETTER = [str(offset).encode() for offset in range(LETTERS)]


@pytest.mark.parametrize(
    "operations",
    [
        # Refused when replay asks for the topic's partitions, before sending.
        pytest.param([], id="no-acl"),
        # Refused in the acknowledgements of the letters sent.
        pytest.param([ACLOperation.DESCRIBE], id="describe-only"),
    ],
)
def test_replay_to_a_topic_it_may_not_write_names_the_grant_and_loses_nothing(
    secure_kafka: SecureBroker, letters: DeadLetters, operations: list[ACLOperation]
) -> None:
    grant_replay(secure_kafka, letters)
    # WRITE on the letters' own topic, so the idempotent producer starts and the refusal
    # is the --to topic's own.
    secure_kafka.grant(
        ResourceType.TOPIC, letters.source, [ACLOperation.WRITE, ACLOperation.DESCRIBE]
    )
    target = secure_kafka.new_topic("target")
    if operations:
        secure_kafka.grant(ResourceType.TOPIC, target, operations)

    refused = replay(secure_kafka, letters, "--to", target)
    assert_refused(refused, repr(target), "WRITE", "--to")
    assert_one_line(refused)
    assert secure_kafka.committed(letters.checkpoint_group, letters.topic).get(0, 0) == 0
    assert replayed_offsets(secure_kafka, letters.source) == []

    secure_kafka.grant(ResourceType.TOPIC, target, [ACLOperation.WRITE, ACLOperation.DESCRIBE])
    granted = replay(secure_kafka, letters, "--to", target)
    assert granted.status == 0, granted.stderr
    assert sorted(replayed_offsets(secure_kafka, target)) == EVERY_LETTER
    assert secure_kafka.committed(letters.checkpoint_group, letters.topic) == {0: LETTERS}


@pytest.mark.parametrize(
    "operations",
    [pytest.param([], id="no-acl"), pytest.param([ACLOperation.DESCRIBE], id="describe-only")],
)
def test_ls_of_a_topic_it_may_not_read_names_the_topic_and_the_grant(
    secure_kafka: SecureBroker, letters: DeadLetters, operations: list[ACLOperation]
) -> None:
    if operations:
        secure_kafka.grant(ResourceType.TOPIC, letters.topic, operations)
    outcome = jobworker("dlq", "ls", env=dlq_env(secure_kafka, letters))
    assert_refused(outcome, repr(letters.topic), "KAFKA_DLQ_TOPIC", "READ and DESCRIBE")
    assert_one_line(outcome)


@pytest.mark.parametrize(
    "operations",
    [
        pytest.param([], id="no-acl"),
        pytest.param([ACLOperation.DESCRIBE], id="describe-only"),
    ],
)
def test_replay_without_read_on_the_checkpoint_group_names_it_and_sends_nothing(
    secure_kafka: SecureBroker, letters: DeadLetters, operations: list[ACLOperation]
) -> None:
    secure_kafka.grant(
        ResourceType.TOPIC, letters.topic, [ACLOperation.READ, ACLOperation.DESCRIBE]
    )
    secure_kafka.grant(
        ResourceType.TOPIC, letters.source, [ACLOperation.WRITE, ACLOperation.DESCRIBE]
    )
    # READ on KAFKA_GROUP_ID itself is not READ on the checkpoint's group.
    secure_kafka.grant(ResourceType.GROUP, letters.group, [ACLOperation.READ])
    if operations:
        secure_kafka.grant(ResourceType.GROUP, letters.checkpoint_group, operations)

    refused = replay(secure_kafka, letters)
    assert_refused(refused, repr(letters.checkpoint_group), "READ")
    assert_one_line(refused)
    assert replayed_offsets(secure_kafka, letters.source) == []

    secure_kafka.grant(ResourceType.GROUP, letters.checkpoint_group, [ACLOperation.READ])
    granted = replay(secure_kafka, letters)
    assert granted.status == 0, granted.stderr
    assert sorted(replayed_offsets(secure_kafka, letters.source)) == EVERY_LETTER
