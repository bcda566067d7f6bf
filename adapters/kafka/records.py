"""From a Kafka record to a job: its JobTask, where it came from, its trace context.

A record that holds no job (``decode_task`` says why) goes to the poison policy
(``poison.py``) instead.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import structlog
from google.protobuf.message import DecodeError

from jobworker.adapters.codec import job_from_task
from jobworker.adapters.proto.jobworker.v1 import jobworker_pb2 as pb
from jobworker.adapters.sparse_warnings import SparseWarning
from jobworker.adapters.tracing.headers import trace_headers
from jobworker.domain.model import Job

# The source's lines keep the logger name they had before it was split in pieces.
log = structlog.get_logger("jobworker.adapters.kafka.source")


class KafkaReceipt(NamedTuple):
    """Where a job came from. ``epoch`` tells one assignment of the partition from the next.

    A named tuple, not a frozen dataclass: one is built per record, and a frozen
    dataclass sets each field through ``object.__setattr__``, which costs more.
    """

    topic: str
    partition: int
    offset: int
    epoch: int


def decode_task(record: Any) -> pb.JobTask | str:
    """The record's JobTask, or why there is no job in it (the dead-letter reason)."""
    if record.value is None:
        return "record has no value"
    try:
        task = pb.JobTask.FromString(record.value)
    except DecodeError as error:
        return f"value is not a JobTask: {error}"
    if not task.id.strip():
        return "JobTask has no id"
    return task


class JobReader:
    """Makes jobs of decoded records. ``keyed`` (KAFKA_ORDERING=key): the record key is
    an ordering key, so a key that differs from the job id is expected, not warned of."""

    def __init__(self, *, keyed: bool) -> None:
        self._keyed = keyed
        # Entity keys on every record would otherwise mean one warning per record.
        self._key_warning = SparseWarning()

    def job(self, record: Any, task: pb.JobTask, epoch: int) -> Job:
        if (
            not self._keyed
            and record.key is not None
            and record.key != task.id.encode()
            and (held_back := self._key_warning.due()) is not None
        ):
            log.warning(
                "record key differs from the job id; using the job id"
                " (KAFKA_ORDERING=key reads the key as an ordering key)",
                job_id=task.id,
                key=record.key.decode("utf-8", "replace"),
                partition=record.partition,
                offset=record.offset,
                not_logged_since_last=held_back,
            )
        receipt = KafkaReceipt(record.topic, record.partition, record.offset, epoch)
        return job_from_task(task, receipt, trace_headers(record.headers))
