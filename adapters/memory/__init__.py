"""In-memory source and sink: for tests and embedding, shipped with the package."""

from adapters.memory.sink import InMemoryRefusedResultStore, InMemoryResultSink
from adapters.memory.source import InMemoryJobSource

__all__ = ["InMemoryJobSource", "InMemoryRefusedResultStore", "InMemoryResultSink"]
