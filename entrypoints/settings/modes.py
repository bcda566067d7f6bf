"""The worker's own modes, as its settings name them: StrEnums, so that a mode compares
equal to the word its variable takes (the Kafka adapter's are in ``adapters/kafka``)."""

from __future__ import annotations

from enum import StrEnum


class JobSourceKind(StrEnum):
    """JOB_SOURCE: where jobs come from."""

    KAFKA = "kafka"
    FILE = "file"


class ResultSinkKind(StrEnum):
    """RESULT_SINK: where results go."""

    GRPC = "grpc"  # Core
    FILE = "file"


class RefusedResults(StrEnum):
    """RESULT_REFUSED: what a result Core refuses for good does."""

    DEAD_LETTER = "dead-letter"  # written to a dead letter, then its job acked
    HOLD = "hold"  # offered again for ever


class LogFormat(StrEnum):
    """LOG_FORMAT."""

    JSON = "json"
    TEXT = "text"


class LogLevel(StrEnum):
    """LOG_LEVEL."""

    DEBUG = "debug"
    INFO = "info"
    WARNING = "warning"
    ERROR = "error"
