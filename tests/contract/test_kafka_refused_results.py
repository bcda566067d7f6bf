"""The results dead-letter topic against a real broker: what a refused result's record
holds, and a topic that refuses writes leaving the job not done until it accepts."""

from __future__ import annotations

import pytest

from jobworker.adapters.kafka import KafkaClientSettings
from jobworker.adapters.kafka.records import KafkaReceipt
from jobworker.adapters.kafka.refused_results import MAX_VALUE_BYTES, KafkaRefusedResultStore
from jobworker.adapters.proto.jobworker.v1 import jobworker_pb2 as pb
from jobworker.domain.errors import ResultNotDelivered, ResultRefused
from jobworker.domain.model import Job, JobResult, JobStatus
from tests.support.kafka import create_topic, read_all, set_topic_config

pytestmark = pytest.mark.contract

REFUSAL = ResultRefused(
    "Core refused the result of job 'job-7': INVALID_ARGUMENT: tenant unknown",
    "INVALID_ARGUMENT",
    "tenant unknown",
)


def a_job_and_result(output: str = '{"ok": true}') -> tuple[Job, JobResult]:
    job = Job(id="job-7", type="SLEEP", receipt=KafkaReceipt("jobs-x", 2, 41, epoch=1))
    result = JobResult(
        job_id="job-7",
        type="SLEEP",
        status=JobStatus.SUCCEEDED,
        output=output,
        attempts=1,
        worker_id="w-1",
        metadata={"tenant": "acme"},
    )
    return job, result


def test_a_refused_result_is_kept_with_cores_reason_and_its_source(
    kafka_servers: str, settings: KafkaClientSettings
) -> None:
    topic = create_topic(kafka_servers, 1, prefix="results-dlq")
    store = KafkaRefusedResultStore(settings, topic, "w-1")
    job, result = a_job_and_result()

    store.store(job, result, REFUSAL)
    store.close()

    [record] = read_all(kafka_servers, topic, 1)
    assert record.key == b"job-7"
    kept = pb.JobResult.FromString(record.value)
    assert (kept.job_id, kept.status, kept.output) == (
        "job-7",
        pb.JobResult.SUCCEEDED,
        '{"ok": true}',
    )
    assert dict(kept.metadata) == {"tenant": "acme"}
    headers = {name: value.decode() for name, value in record.headers}
    assert headers == {
        "x-dlq-reason": str(REFUSAL),
        "x-dlq-core-code": "INVALID_ARGUMENT",
        "x-dlq-core-details": "tenant unknown",
        "x-dlq-job-id": "job-7",
        "x-dlq-worker": "w-1",
        "x-dlq-source-topic": "jobs-x",
        "x-dlq-source-partition": "2",
        "x-dlq-source-offset": "41",
    }


def test_a_result_too_large_for_the_topic_is_kept_without_its_output(
    kafka_servers: str, settings: KafkaClientSettings
) -> None:
    topic = create_topic(kafka_servers, 1, prefix="results-dlq")
    store = KafkaRefusedResultStore(settings, topic, "w-1")
    job, result = a_job_and_result(output="x" * (MAX_VALUE_BYTES + 1))

    store.store(job, result, REFUSAL)
    store.close()

    [record] = read_all(kafka_servers, topic, 1)
    assert pb.JobResult.FromString(record.value).output == ""
    headers = dict(record.headers)
    assert headers["x-dlq-output-dropped-bytes"] == str(MAX_VALUE_BYTES + 1).encode()


def test_a_topic_that_refuses_the_record_leaves_the_result_not_stored_until_it_accepts(
    kafka_servers: str, settings: KafkaClientSettings
) -> None:
    # Too large for the topic: a fatal error to kafka-python's producer, which then
    # fails every later send. The store must replace it once the topic is fixed.
    topic = create_topic(
        kafka_servers, 1, prefix="results-dlq", configs={"max.message.bytes": "64"}
    )
    store = KafkaRefusedResultStore(settings, topic, "w-1", timeout_s=5)
    job, result = a_job_and_result()

    with pytest.raises(ResultNotDelivered, match="KAFKA_RESULTS_DLQ_TOPIC"):
        store.store(job, result, REFUSAL)
    set_topic_config(kafka_servers, topic, "max.message.bytes", "1048588")
    store.store(job, result, REFUSAL)
    store.close()

    assert [record.key for record in read_all(kafka_servers, topic, 1)] == [b"job-7"]
