"""Which request headers an HTTP job may set, apart from the executor.

The settings check ``HTTP_IDEMPOTENCY_HEADER`` against these at start-up; importing
them from http.py would import requests into every worker, which builds the HTTP
executor only at its first job (entrypoints/on_first_job.py).
"""

from __future__ import annotations

import re

# requests computes framing itself; a caller's value could desynchronise the connection.
FORBIDDEN_HEADERS = frozenset({"content-length", "transfer-encoding", "connection", "upgrade"})
# Headers a request cannot do without its own value of: never the idempotency key's name.
RESERVED_HEADERS = FORBIDDEN_HEADERS | {"host", "authorization", "cookie", "content-type"}
HEADER_NAME = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
