"""jobworker: background jobs from Apache Kafka, run on gevent, reported to Core over gRPC.

The layers live in the repository's top-level folders (``domain``, ``application``,
``adapters``, ``entrypoints``); this package gives them one import name,
``jobworker.<layer>``, so nothing else of ours lands at the top of site-packages.
Importing it has no side effects: gevent is patched by the CLI only.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("jobworker")
except PackageNotFoundError:  # run from a source tree that was never installed
    __version__ = "unknown"
