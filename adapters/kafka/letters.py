"""A dead-letter record, decoded: which kind of letter it is, what it holds, and whether
replay can send it (``Letter``).

What each kind carries is what the writers put there: ``dlq.py`` (poison records and
unreadable batches) and ``refused_results.py`` (results Core refused). Nothing here
needs a broker: a record is any object with a ConsumerRecord's fields.
"""

from __future__ import annotations

import base64
from collections.abc import Mapping
from typing import Any

from google.protobuf.message import DecodeError
from kafka.record.memory_records import MemoryRecords

from jobworker.adapters.codec import result_from_proto, type_name
from jobworker.adapters.kafka.dlq import REASON_HEADER, VALUE_FORMAT_HEADER
from jobworker.adapters.proto.jobworker.v1 import jobworker_pb2 as pb
from jobworker.domain.dead_letters import (
    DEAD_LETTER_HEADER_PREFIX,
    REPLAY_COUNT_HEADER,
    Headers,
    Letter,
    LetterKind,
    RecordCopy,
)

# How much of a value ``show`` prints as text, and of a reason the table shows.
_CAUSE_CHARS = 100


def letter_from_record(record: Any) -> Letter:
    """The letter ``record`` (a ConsumerRecord of a dead-letter topic) holds."""
    headers: Headers = tuple((name, bytes(value or b"")) for name, value in record.headers or ())
    named = dict(headers)  # the last of a name wins, as it was added last
    where = {
        "topic": record.topic,
        "partition": record.partition,
        "offset": record.offset,
        "timestamp_ms": record.timestamp,
        "size": _size(record),
        "headers": headers,
        "source_topic": _text(named.get("x-dlq-source-topic")),
        "source_partition": _number(named.get("x-dlq-source-partition")),
        "source_offset": _number(named.get("x-dlq-source-offset")),
    }
    if REASON_HEADER not in named:
        return Letter(
            kind=LetterKind.FOREIGN,
            reason="no x-dlq-reason header: not written by a worker",
            cause="not a dead letter",
            content=_raw(record.key, record.value),
            unreplayable="not a worker's dead letter (no x-dlq-* headers)",
            **where,
        )
    reason = _text(named[REASON_HEADER]) or ""
    if VALUE_FORMAT_HEADER in named:
        return _batch_letter(record, named, reason, where)
    if "x-dlq-core-code" in named or "x-dlq-job-id" in named:
        return _result_letter(record, named, reason, where)
    return _job_letter(record, named, reason, where)


def _job_letter(
    record: Any, named: Mapping[str, bytes], reason: str, where: dict[str, Any]
) -> Letter:
    value = None if "x-dlq-source-value-null" in named else record.value
    own = tuple(
        (name, header)
        for name, header in where["headers"]
        if not name.startswith(DEAD_LETTER_HEADER_PREFIX)
    )
    task, problem = _task(value)
    content = _task_fields(task) if task is not None else {"not_a_job": problem}
    return Letter(
        kind=LetterKind.JOB,
        reason=reason,
        cause=_cause(reason.split(":", 1)[0]),
        job_id=(task.id or None) if task is not None else None,
        job_type=type_name(task.type) if task is not None else None,
        replays=_replays(own),
        content={**content, **_raw(record.key, value)},
        records=(RecordCopy(record.key, value, own, _or_unknown(where["source_offset"])),),
        unreplayable=_dropped(named, where),
        **where,
    )


def _result_letter(
    record: Any, named: Mapping[str, bytes], reason: str, where: dict[str, Any]
) -> Letter:
    code, details = _text(named.get("x-dlq-core-code")), _text(named.get("x-dlq-core-details"))
    job_id = _text(named.get("x-dlq-job-id")) or _text(record.key)
    unreplayable = None
    result = None
    try:
        message = pb.JobResult.FromString(record.value or b"")
    except DecodeError as error:
        unreplayable = f"its value is not a JobResult ({error}): Core cannot take it"
        content: Any = {"not_a_result": str(error), **_raw(record.key, record.value)}
    else:
        content = _result_fields(message)
        if message.status not in pb.JobResult.Status.values():
            # A newer writer's status: result_from_proto cannot name it, nor can we.
            unreplayable = f"its status {message.status} is not one this build knows"
        else:
            result = result_from_proto(message)
            if not result.job_id:
                unreplayable = "its JobResult has no job id: Core cannot take it"
    if "x-dlq-output-dropped-bytes" in named:
        dropped = _text(named["x-dlq-output-dropped-bytes"])
        unreplayable = f"its output was not kept ({dropped} bytes): sending it would lose it"
    return Letter(
        kind=LetterKind.RESULT,
        reason=reason,
        cause=_cause(f"Core {code}: {details}" if code else reason),
        job_id=job_id or None,
        job_type=result.type if result is not None else None,
        replays=_replays(where["headers"]),
        content=content,
        result=result,
        unreplayable=unreplayable,
        **where,
    )


def _batch_letter(
    record: Any, named: Mapping[str, bytes], reason: str, where: dict[str, Any]
) -> Letter:
    first = where["source_offset"]
    last = _number(named.get("x-dlq-source-last-offset"))
    kept = _text(named.get(VALUE_FORMAT_HEADER)) == "record-batch" and record.value
    records: tuple[RecordCopy, ...] = ()
    if not kept:
        size = _text(named.get("x-dlq-batch-bytes")) or "unknown"
        unreplayable: str | None = (
            f"the batch's bytes were not kept ({size} bytes): read it at"
            f" {where['source_topic']}[{where['source_partition']}] offsets {first}-{last}"
        )
        content: Any = {"records": None, "why_not": unreplayable}
    else:
        try:
            records = _batch_records(record.value, first, last)
        except Exception as error:  # a codec still missing, corrupt bytes: say which
            unreplayable = f"cannot read the batch's records now: {_error_text(error)}"
            content = {"records": None, "why_not": unreplayable}
        else:
            unreplayable = None if records else "the batch holds no records in its offsets"
            content = {"records": [_record_fields(copy) for copy in records]}
    return Letter(
        kind=LetterKind.BATCH,
        reason=reason,
        cause=_cause("unreadable batch: " + reason.split(":", 1)[0]),
        replays=max((_replays(copy.headers) for copy in records), default=0),
        content=content,
        records=records,
        unreplayable=unreplayable,
        **where,
    )


def _batch_records(raw: bytes, first: int | None, last: int | None) -> tuple[RecordCopy, ...]:
    """The records of the batch in ``raw`` from ``first`` to ``last`` (the ones the
    worker skipped; a batch read in part had its earlier records run)."""
    records = MemoryRecords(bytes(raw))
    copies = []
    while (batch := records.next_batch()) is not None:
        if hasattr(batch, "validate_crc") and not batch.validate_crc():
            raise ValueError("CRC mismatch: the batch is corrupt")
        for item in batch:
            if (first is not None and item.offset < first) or (
                last is not None and item.offset > last
            ):
                continue
            headers = tuple((name, bytes(value or b"")) for name, value in item.headers or ())
            copies.append(RecordCopy(item.key, item.value, headers, item.offset))
    return tuple(copies)


def _task(value: bytes | None) -> tuple[pb.JobTask | None, str]:
    if value is None:
        return None, "the record had no value"
    try:
        task = pb.JobTask.FromString(value)
    except DecodeError as error:
        return None, f"its value is not a JobTask: {error}"
    return task, ""


def _task_fields(task: pb.JobTask) -> dict[str, Any]:
    return {
        "id": task.id,
        "type": type_name(task.type),
        "payload": task.payload,
        "timeout_ms": task.timeout_ms,
        "metadata": dict(task.metadata),
        "created_at_unix_ms": task.created_at_unix_ms,
    }


def _result_fields(message: pb.JobResult) -> dict[str, Any]:
    return {
        "job_id": message.job_id,
        "type": type_name(message.type),
        "status": pb.JobResult.Status.Name(message.status)
        if message.status in pb.JobResult.Status.values()
        else f"STATUS_{message.status}",
        "output": message.output,
        "error": message.error,
        "attempts": message.attempts,
        "started_at_unix_ms": message.started_at_unix_ms,
        "finished_at_unix_ms": message.finished_at_unix_ms,
        "worker_id": message.worker_id,
        "metadata": dict(message.metadata),
    }


def _record_fields(copy: RecordCopy) -> dict[str, Any]:
    task, problem = _task(copy.value)
    return {
        "offset": copy.source_offset,
        "headers": {name: _shown(value) for name, value in copy.headers},
        **({"job": _task_fields(task)} if task is not None else {"not_a_job": problem}),
        **_raw(copy.key, copy.value),
    }


def _raw(key: bytes | None, value: bytes | None) -> dict[str, Any]:
    """The key and value as they are: text when they are UTF-8, else base64."""
    return {"key": _shown(key), "value": _shown(value)}


def _shown(data: bytes | None) -> str | dict[str, str] | None:
    if data is None:
        return None
    try:
        text = bytes(data).decode("utf-8")
    except UnicodeDecodeError:
        return {"base64": base64.b64encode(bytes(data)).decode("ascii")}
    if text.isprintable():
        return text
    return {"base64": base64.b64encode(bytes(data)).decode("ascii")}


def _dropped(named: Mapping[str, bytes], where: dict[str, Any]) -> str | None:
    """Why a job letter cannot be replayed as it was: a part of it was not kept."""
    at = f"{where['source_topic']}[{where['source_partition']}] offset {where['source_offset']}"
    for header, part in (
        ("x-dlq-value-dropped-bytes", "value"),
        ("x-dlq-key-dropped-bytes", "key"),
    ):
        if header in named:
            size = _text(named[header])
            return f"its {part} was not kept ({size} bytes): read it at {at}"
    if "x-dlq-source-headers-dropped" in named:
        return f"its own headers were not kept: read it at {at}"
    return None


def _replays(headers: Headers) -> int:
    counts = [_number(value) for name, value in headers if name == REPLAY_COUNT_HEADER]
    return max((count for count in counts if count is not None), default=0)


def _size(record: Any) -> int:
    sizes = (
        getattr(record, "serialized_key_size", -1),
        getattr(record, "serialized_value_size", -1),
        getattr(record, "serialized_header_size", -1),
    )
    return sum(size for size in sizes if size and size > 0)


def _text(data: bytes | None) -> str | None:
    return None if data is None else bytes(data).decode("utf-8", "replace")


def _number(data: bytes | None) -> int | None:
    text = _text(data)
    try:
        return None if text is None else int(text)
    except ValueError:
        return None


def _or_unknown(offset: int | None) -> int:
    return -1 if offset is None else offset


def _cause(text: str) -> str:
    return text if len(text) <= _CAUSE_CHARS else text[: _CAUSE_CHARS - 1] + "…"


def _error_text(error: BaseException) -> str:
    name, text = type(error).__name__, str(error)
    return text if name in text else f"{name}: {text}"
