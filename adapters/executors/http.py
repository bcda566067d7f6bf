"""HTTP: one request to a public http(s) URL, through the ``SafeHttpClient``.

Payload ``{"method": "GET", "url": "https://...", "headers": {...}, "body": "...",
"timeout_ms": 5000}``; only ``url`` is required. Output ``{"status": 200, "headers":
{...}, "body": "...", "elapsed_ms": 12, "url": "<final url after redirects>"}``; the
body is decoded text (charset from Content-Type, else UTF-8; undecodable bytes
replaced) and at most ``max_response_bytes`` long, or the job FAILS.

A 5xx, 408, 425 or 429 status, a connection error or a timeout is retryable; any
other 4xx ends the job FAILED with the status in the message.
"""

from __future__ import annotations

import json
import re
import time
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from jobworker.adapters.executors.http_headers import (
    FORBIDDEN_HEADERS,
    HEADER_NAME,
)
from jobworker.adapters.executors.payload_fields import (
    MAX_URL_CHARS,
    checked_str,
    load_object,
    optional_int,
    optional_str,
    required_str,
    shown,
)
from jobworker.adapters.executors.safe_http import SafeHttpClient, raise_for_http_status
from jobworker.domain.errors import InvalidPayload
from jobworker.domain.model import Job

METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")
MAX_TIMEOUT_MS = 3_600_000
# Common servers refuse a header line above 8 KiB (nginx, Apache), as they do a URL
# over MAX_URL_CHARS: a longer value cannot work anyway.
MAX_HEADER_VALUE_CHARS = 8192
MAX_HEADER_NAME_CHARS = 256
MAX_HEADERS = 100
_MAX_METHOD_CHARS = 16
_FIELDS = frozenset(("method", "url", "headers", "body", "timeout_ms"))
_HEADER_VALUE_FORBIDDEN = re.compile(r"[\r\n\x00]")


@dataclass(frozen=True, slots=True)
class HttpRequest:
    """A validated HTTP job payload."""

    method: str
    url: str
    headers: Mapping[str, str]
    body: bytes | None
    timeout_s: float


def parse_http_request(payload: str, default_timeout_s: float) -> HttpRequest:
    """Validate an HTTP job payload; raise ``InvalidPayload`` naming the bad field.

    The timeout is the payload's ``timeout_ms`` capped at ``default_timeout_s``.
    The URL is checked by the client (scheme, host, address), not here.
    """
    fields = load_object(payload, _FIELDS)
    url = required_str(fields, "url", max_length=MAX_URL_CHARS)
    method = optional_str(fields, "method", default="GET", max_length=_MAX_METHOD_CHARS).upper()
    if method not in METHODS:
        raise InvalidPayload(f"field 'method' must be one of {', '.join(METHODS)}, got {method!r}")
    body = fields.get("body")
    if body is not None and not isinstance(body, str):
        raise InvalidPayload("field 'body' must be a string (send JSON as text)")
    try:
        encoded_body = body.encode() if body is not None else None
    except UnicodeEncodeError:  # a lone surrogate, which JSON can spell
        raise InvalidPayload("field 'body' is not valid Unicode text") from None
    timeout_ms = optional_int(
        fields,
        "timeout_ms",
        default=int(default_timeout_s * 1000),
        minimum=1,
        maximum=MAX_TIMEOUT_MS,
    )
    return HttpRequest(
        method=method,
        url=url,
        headers=_headers(fields.get("headers")),
        body=encoded_body,
        timeout_s=min(timeout_ms / 1000, default_timeout_s),
    )


class HttpExecutor:
    """Runs HTTP jobs on a shared ``SafeHttpClient`` (which the caller closes)."""

    def __init__(
        self,
        client: SafeHttpClient,
        max_response_bytes: int = 1_048_576,
        default_timeout_s: float = 10.0,
        idempotency_header: str = "Idempotency-Key",
    ) -> None:
        self.client = client
        self.max_response_bytes = max_response_bytes
        self.default_timeout_s = default_timeout_s
        self.idempotency_header = idempotency_header

    def execute(self, job: Job) -> str:
        request = parse_http_request(job.payload, self.default_timeout_s)
        started = time.monotonic()
        response = self.client.request(
            request.method,
            request.url,
            headers=self._with_idempotency_key(request.headers, job.id),
            body=request.body,
            timeout_s=request.timeout_s,
            max_bytes=self.max_response_bytes,
        )
        elapsed_ms = round((time.monotonic() - started) * 1000)
        raise_for_http_status(response, f"{request.method} {response.url}")
        return json.dumps(
            {
                "status": response.status,
                "headers": dict(response.headers),
                "body": response.text(),
                "elapsed_ms": elapsed_ms,
                "url": response.url,
            }
        )

    def targets(self, job: Job) -> list[str]:
        """What the job calls, for limits and breakers: ``host:<its URL's host>``."""
        url = load_object(job.payload, _FIELDS).get("url")
        host = urlsplit(url).hostname if isinstance(url, str) else None
        return [f"host:{host}"] if host else []

    def _with_idempotency_key(self, headers: Mapping[str, str], job_id: str) -> Mapping[str, str]:
        """The job's headers plus ``idempotency_header: <job id>``: a redelivered job (a
        crash, a rebalance) calls again with the same key, so the target can drop the
        repeat. A key the payload sets itself is the producer's choice and is kept."""
        name = self.idempotency_header
        if not name or any(given.lower() == name.lower() for given in headers):
            return headers
        return {**headers, name: idempotency_key(job_id)}


def _headers(value: Any) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise InvalidPayload("field 'headers' must be an object of header names to strings")
    if len(value) > MAX_HEADERS:
        raise InvalidPayload(
            f"field 'headers' has {len(value)} headers, above the {MAX_HEADERS} limit"
        )
    for name, header_value in value.items():
        if len(name) > MAX_HEADER_NAME_CHARS:
            raise InvalidPayload(
                f"header name {shown(name)} is {len(name)} characters, "
                f"above the {MAX_HEADER_NAME_CHARS} limit"
            )
        if not HEADER_NAME.fullmatch(name):
            raise InvalidPayload(f"header name {shown(name)} is not a valid HTTP header name")
        if name.lower() in FORBIDDEN_HEADERS:
            raise InvalidPayload(f"header {name!r} is set by the client and may not be given")
        if not isinstance(header_value, str):
            raise InvalidPayload(f"header {shown(name)} must have a string value")
        checked_str(header_value, f"header {shown(name)}", MAX_HEADER_VALUE_CHARS)
        if _HEADER_VALUE_FORBIDDEN.search(header_value):
            raise InvalidPayload(f"header {shown(name)} contains a line break or NUL")
        if not header_value.isascii() and not _is_latin1(header_value):
            # http.client sends header values as Latin-1 and would fail mid-request.
            raise InvalidPayload(
                f"header {shown(name)} has characters outside Latin-1; "
                "percent-encode them or use RFC 8187 encoding"
            )
    return dict(value)


def idempotency_key(job_id: str) -> str:
    """The job id as a header value: as it is when a header can carry it (ASCII, no
    control characters, no space at either end), else percent-encoded (UTF-8), the
    same for every delivery."""
    # A field value's ends are trimmed (RFC 9110, 5.5) and requests refuses a leading
    # space: " a" sent as it is would fail every call, or reach the target as "a".
    if job_id.isascii() and job_id.isprintable() and job_id == job_id.strip():
        return job_id
    return urllib.parse.quote(job_id, safe="")


def _is_latin1(text: str) -> bool:
    try:
        text.encode("latin-1")
    except UnicodeEncodeError:
        return False
    return True
