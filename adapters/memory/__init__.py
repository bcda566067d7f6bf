"""In-memory adapters, dead letters included: for tests and embedding, shipped with the package."""

from jobworker.adapters.memory.dead_letters import (
    InMemoryDeadLetterReader,
    InMemoryRecordRepublisher,
    InMemoryReplayCheckpoint,
)
from jobworker.adapters.memory.fleet import InMemoryGroupProgress, InMemoryStatusFeed
from jobworker.adapters.memory.sink import InMemoryRefusedResultStore, InMemoryResultSink
from jobworker.adapters.memory.source import InMemoryJobSource

__all__ = [
    "InMemoryDeadLetterReader",
    "InMemoryGroupProgress",
    "InMemoryJobSource",
    "InMemoryRecordRepublisher",
    "InMemoryRefusedResultStore",
    "InMemoryReplayCheckpoint",
    "InMemoryResultSink",
    "InMemoryStatusFeed",
]
