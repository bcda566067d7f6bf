"""How ``jobworker dlq`` shows letters: a table, JSON, and replay's lines and summary."""

from __future__ import annotations

import base64
import json
import sys
from collections import Counter
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any, TextIO

from jobworker.application.dead_letter_service import ReplaySummary
from jobworker.domain.dead_letters import Letter

_REASON_CHARS = 48
_COLUMNS = (
    "LETTER",
    "TIME (UTC)",
    "KIND",
    "REASON",
    "SOURCE",
    "JOB ID",
    "TYPE",
    "REPLAYS",
    "SIZE",
)


def when(timestamp_ms: int) -> str:
    if timestamp_ms < 0:
        return "-"
    return datetime.fromtimestamp(timestamp_ms / 1000, UTC).strftime("%Y-%m-%d %H:%M:%S")


def source(letter: Letter) -> str:
    if letter.source_topic is None:
        return "-"
    return f"{letter.source_topic}[{letter.source_partition}]@{letter.source_offset}"


def summary_row(letter: Letter) -> dict[str, Any]:
    """The fields ``ls`` shows of a letter (its JSON line)."""
    return {
        "letter": letter.where,
        "partition": letter.partition,
        "offset": letter.offset,
        "timestamp_ms": letter.timestamp_ms,
        "time": when(letter.timestamp_ms),
        "kind": str(letter.kind),
        "reason": letter.reason,
        "source_topic": letter.source_topic,
        "source_partition": letter.source_partition,
        "source_offset": letter.source_offset,
        "job_id": letter.job_id,
        "type": letter.job_type,
        "size": letter.size,
        "replays": letter.replays,
        "replayable": letter.unreplayable is None,
    }


def print_table(letters: Iterable[Letter], topic: str, out: TextIO = sys.stdout) -> int:
    """Print one row per letter, then the counts by cause; returns how many."""
    rows = []
    causes: Counter[str] = Counter()
    for letter in letters:
        causes[letter.cause] += 1
        reason = letter.reason.replace("\n", " ")
        if len(reason) > _REASON_CHARS:
            reason = reason[: _REASON_CHARS - 1] + "…"
        rows.append(
            (
                letter.where,
                when(letter.timestamp_ms),
                str(letter.kind),
                reason,
                source(letter),
                letter.job_id or "-",
                letter.job_type or "-",
                str(letter.replays),
                str(letter.size),
            )
        )
    if not rows:
        print(f"no letters in {topic}", file=out)
        return 0
    widths = [max(len(row[i]) for row in [_COLUMNS, *rows]) for i in range(len(_COLUMNS))]
    for row in [_COLUMNS, *rows]:
        print(
            "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip(),
            file=out,
        )
    print(f"\n{len(rows)} letter(s) in {topic}, by reason:", file=out)
    for cause, count in causes.most_common():
        print(f"  {count:>6}  {cause}", file=out)
    return len(rows)


def letter_document(letter: Letter) -> dict[str, Any]:
    """Everything ``show`` prints of a letter."""
    return {
        **summary_row(letter),
        "not_replayable_because": letter.unreplayable,
        "headers": _headers(letter),
        str(letter.kind): letter.content,
    }


def _headers(letter: Letter) -> dict[str, Any]:
    """Name to value; a name given more than once maps to all its values, in order."""
    values: dict[str, list[Any]] = {}
    for name, value in letter.headers:
        values.setdefault(name, []).append(_header_text(value))
    return {name: each[0] if len(each) == 1 else each for name, each in values.items()}


def _header_text(value: bytes) -> str | dict[str, str]:
    try:
        text = value.decode("utf-8")
    except UnicodeDecodeError:
        return {"base64": base64.b64encode(value).decode("ascii")}
    return text


def print_document(letter: Letter, out: TextIO = sys.stdout) -> None:
    print(json.dumps(letter_document(letter), indent=2, ensure_ascii=False), file=out)


def print_summary(summary: ReplaySummary, topic: str, out: TextIO = sys.stdout) -> None:
    """What replay did (or would do, dry): replayed by reason and target, skipped by
    why, refused again one by one."""
    verb = "would replay" if summary.dry_run else "replayed"
    targets = ", ".join(f"{count} to {target}" for target, count in summary.targets.most_common())
    print(
        f"{verb} {summary.replayed_total} letter(s) of {topic}"
        + (f": {targets}" if targets else ""),
        file=out,
    )
    for cause, count in summary.replayed.most_common():
        print(f"  {count:>6}  {cause}", file=out)
    if summary.resumed:
        print(
            "letters replayed before were passed over (the checkpoint); --from-start"
            " takes them again",
            file=out,
        )
    if summary.skipped:
        print(f"skipped {sum(summary.skipped.values())} letter(s):", file=out)
        for why, count in summary.skipped.most_common():
            print(f"  {count:>6}  {why}", file=out)
    if summary.refused:
        print(f"refused again {len(summary.refused)} letter(s) (they stay in {topic}):", file=out)
        for letter, why in summary.refused:
            print(f"  {letter.where}  job {letter.job_id}: {why}", file=out)
    if summary.interrupted:
        print(
            "interrupted: the checkpoint covers exactly what was sent; replay again to go on",
            file=out,
        )
