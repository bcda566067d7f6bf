"""In-memory source and sink: for tests and embedding, shipped with the package."""

from jobworker.adapters.memory.sink import InMemoryRefusedResultStore, InMemoryResultSink
from jobworker.adapters.memory.source import InMemoryJobSource

__all__ = ["InMemoryJobSource", "InMemoryRefusedResultStore", "InMemoryResultSink"]
