"""An HTTP client that only reaches destinations the ``AddressGuard`` allows.

Shared by the HTTP executor and the image executor's URL sources, so both refuse the
same addresses, follow redirects the same careful way and cap what they read.
"""

from __future__ import annotations

import datetime
import email.utils
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from email.message import Message
from http.cookiejar import DefaultCookiePolicy
from urllib.parse import urljoin, urlsplit

import gevent
import requests
from requests.cookies import RequestsCookieJar
from requests.structures import CaseInsensitiveDict

from jobworker.adapters.executors.network_guard import AddressGuard, RefusedDestination
from jobworker.adapters.executors.pinned_connections import GuardedHTTPAdapter
from jobworker.domain.errors import InvalidPayload, JobFailed, RetryableJobError

REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
# Statuses that say "not now" rather than "never": worth retrying like a 5xx.
TRANSIENT_CLIENT_STATUSES = frozenset({408, 425, 429})
# Where a Retry-After header says when to come back (RFC 9110, 10.2.3).
RETRY_AFTER_STATUSES = frozenset({429, 503})
# A Retry-After past this (about 30 years) is said as what it means, not as its digits.
_MAX_SAID_WAIT_S = 1e9
# Headers that must not follow a redirect to another origin.
CREDENTIAL_HEADERS = frozenset({"authorization", "cookie", "proxy-authorization"})
_READ_CHUNK_BYTES = 64 * 1024


@dataclass(frozen=True, slots=True)
class HttpResponse:
    """A response read in full (within the byte cap); ``url`` is the final one.

    ``headers`` looks names up case-insensitively and keeps the server's spelling.
    """

    url: str
    status: int
    reason: str
    headers: Mapping[str, str]
    body: bytes

    def text(self) -> str:
        """The body decoded with the charset the server declared (UTF-8 if none)."""
        message = Message()
        message["content-type"] = self.headers.get("content-type", "")
        charset = message.get_content_charset() or "utf-8"
        try:
            return self.body.decode(charset, errors="replace")
        except LookupError:
            return self.body.decode("utf-8", errors="replace")


class SafeHttpClient:
    """requests on a guarded connection pool, with manual, re-checked redirects.

    ``pool_size`` bounds the kept-alive connections per host; size it to the worker
    pool, since each job holds at most one connection at a time. Cookies are never
    kept between requests and proxy settings from the environment are ignored: one
    job must not see another's cookies, and a proxy would hide the real destination.
    ``guard`` replaces the default ``AddressGuard(allow_private_networks)`` for a
    caller with its own policy (an allow-list, a test server).
    """

    def __init__(
        self,
        pool_size: int,
        allow_private_networks: bool = False,
        max_redirects: int = 5,
        user_agent: str = "jobworker",
        guard: AddressGuard | None = None,
    ) -> None:
        if pool_size < 1:
            raise ValueError(f"pool_size must be at least 1, got {pool_size}")
        if max_redirects < 0:
            raise ValueError(f"max_redirects must not be negative, got {max_redirects}")
        self.guard = guard or AddressGuard(allow_private_networks)
        self.max_redirects = max_redirects
        self._session = requests.Session()
        self._session.trust_env = False
        self._session.cookies = RequestsCookieJar(policy=DefaultCookiePolicy(allowed_domains=[]))
        self._session.headers["User-Agent"] = user_agent
        adapter = GuardedHTTPAdapter(self.guard, pool_maxsize=pool_size, max_retries=0)
        self._session.mount("http://", adapter)
        self._session.mount("https://", adapter)

    def request(
        self,
        method: str,
        url: str,
        *,
        headers: Mapping[str, str] | None = None,
        body: bytes | None = None,
        timeout_s: float,
        max_bytes: int,
    ) -> HttpResponse:
        """Send a request, follow up to ``max_redirects`` redirects, read the body.

        ``timeout_s`` bounds the whole exchange, redirects and body included. Returns
        the final response whatever its status. Raises ``InvalidPayload`` when the
        URL itself is refused or malformed; ``JobFailed`` when a redirect leads
        somewhere refused, there are too many redirects, the body exceeds
        ``max_bytes`` or TLS fails; ``RetryableJobError`` on connection errors and
        timeouts.
        """
        try:
            self.guard.check_url(url)
        except RefusedDestination as error:
            raise InvalidPayload(f"url refused: {error}") from error
        # Socket timeouts bound each read, not the total: a server trickling one byte
        # at a time could hold a job for long. Under gevent the Timeout bounds it all.
        overall = RetryableJobError(
            f"{method} {url}: timed out after {timeout_s:g}s", target_down=True
        )
        with gevent.Timeout(timeout_s, overall):
            return self._follow_redirects(
                method, url, dict(headers or {}), body, time.monotonic() + timeout_s, max_bytes
            )

    def get_bytes(self, url: str, max_bytes: int, timeout_s: float) -> bytes:
        """GET ``url`` and return its body; any status but 2xx raises (see ``request``)."""
        response = self.request("GET", url, timeout_s=timeout_s, max_bytes=max_bytes)
        raise_for_http_status(response, f"GET {url}")
        if response.status >= 300:
            raise JobFailed(f"GET {url} answered {response.status} {response.reason}")
        return response.body

    def close(self) -> None:
        """Close pooled connections. Idempotent."""
        self._session.close()

    def _follow_redirects(
        self,
        method: str,
        url: str,
        headers: dict[str, str],
        body: bytes | None,
        deadline: float,
        max_bytes: int,
    ) -> HttpResponse:
        original_url = url
        for hop in range(self.max_redirects + 1):
            try:
                response = self._send_once(method, url, headers, body, deadline, max_bytes)
            except RefusedDestination as error:
                if hop == 0:
                    raise InvalidPayload(f"url refused: {error}") from error
                raise JobFailed(f"redirect from {original_url} refused: {error}") from error
            location = response.headers.get("location")
            if response.status not in REDIRECT_STATUSES or not location:
                return response
            next_url = urljoin(url, location)
            try:
                self.guard.check_url(next_url)
            except RefusedDestination as error:
                raise JobFailed(f"redirect from {original_url} refused: {error}") from error
            if response.status == 303 or (response.status in {301, 302} and method == "POST"):
                method, body = ("HEAD" if method == "HEAD" else "GET"), None
                headers = _without(headers, {"content-type", "content-length"})
            if not _same_origin(url, next_url):
                headers = _without(headers, CREDENTIAL_HEADERS)
            url = next_url
        raise JobFailed(f"more than {self.max_redirects} redirects; the last pointed to {url}")

    def _send_once(
        self,
        method: str,
        url: str,
        headers: Mapping[str, str],
        body: bytes | None,
        deadline: float,
        max_bytes: int,
    ) -> HttpResponse:
        what = f"{method} {url}"
        remaining_s = deadline - time.monotonic()
        if remaining_s <= 0:
            raise RetryableJobError(f"{what}: timed out before the request was sent")
        try:
            prepared = self._session.prepare_request(
                requests.Request(method, url, headers=dict(headers), data=body)
            )
            raw = self._session.send(
                prepared, stream=True, allow_redirects=False, timeout=remaining_s
            )
            try:
                content = _read_capped(raw, max_bytes, deadline, what)
            finally:
                raw.close()
        except requests.exceptions.SSLError as error:
            raise JobFailed(f"{what}: TLS failed: {error}") from error
        except (requests.exceptions.InvalidURL, requests.exceptions.InvalidHeader) as error:
            raise InvalidPayload(f"{what}: {error}") from error
        except requests.exceptions.ContentDecodingError as error:
            raise JobFailed(f"{what}: the response body could not be decoded: {error}") from error
        except requests.exceptions.Timeout as error:
            raise RetryableJobError(f"{what}: timed out: {error}", target_down=True) from error
        except (requests.exceptions.RequestException, OSError) as error:
            raise RetryableJobError(
                f"{what}: connection failed: {error}", target_down=True
            ) from error
        return HttpResponse(
            url=url,
            status=raw.status_code,
            reason=raw.reason or "",
            headers=CaseInsensitiveDict(raw.headers),
            body=content,
        )


def raise_for_http_status(response: HttpResponse, what: str) -> None:
    """Raise for an error status: ``RetryableJobError`` on 5xx/408/425/429, else ``JobFailed``."""
    status = f"{response.status} {response.reason}".strip()
    if response.status >= 500 or response.status in TRANSIENT_CLIENT_STATUSES:
        wait_s = None
        if response.status in RETRY_AFTER_STATUSES:
            wait_s = retry_after_s(response.headers.get("retry-after"))
        said = "" if wait_s is None else f" (Retry-After: {wait_s:.0f} s)"
        if wait_s is not None and wait_s > _MAX_SAID_WAIT_S:
            said = " (Retry-After: beyond any deadline)"
        raise RetryableJobError(
            f"{what} answered {status}{said}",
            retry_after_s=wait_s,
            # A 5xx is the target failing; 408, 425 and 429 are it asking to wait.
            target_down=response.status >= 500,
        )
    if response.status >= 400:
        raise JobFailed(f"{what} answered {status}")


def retry_after_s(value: str | None, now: Callable[[], float] = time.time) -> float | None:
    """Seconds a ``Retry-After`` value asks to wait: delay-seconds or an HTTP-date
    (RFC 9110, 10.2.3); None when absent or neither. A date in the past is 0."""
    if value is None:
        return None
    text = value.strip()
    # float(), not int(): a number too long for int() (4300 digits) or a float is inf;
    # isascii(), as "²" (Latin-1, as header values are read) passes isdigit().
    if text.isascii() and text.isdigit():
        return float(text)
    try:
        when = email.utils.parsedate_to_datetime(text)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:  # RFC 9110 dates are GMT; a zone-less one is read as such
        when = when.replace(tzinfo=datetime.UTC)
    return max(0.0, when.timestamp() - now())


def _read_capped(response: requests.Response, max_bytes: int, deadline: float, what: str) -> bytes:
    if response.status_code in REDIRECT_STATUSES and "location" in response.headers:
        return b""
    declared = response.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > max_bytes:
        raise JobFailed(
            f"{what}: response body of {declared} bytes exceeds the {max_bytes}-byte limit"
        )
    chunks: list[bytes] = []
    received = 0
    for chunk in _chunks(response):
        received += len(chunk)
        if received > max_bytes:
            raise JobFailed(f"{what}: response body exceeds the {max_bytes}-byte limit")
        if time.monotonic() > deadline:
            raise RetryableJobError(
                f"{what}: timed out while reading the response body", target_down=True
            )
        chunks.append(chunk)
    return b"".join(chunks)


def _chunks(response: requests.Response) -> Iterator[bytes]:
    # iter_content decompresses gzip/deflate, so the cap applies to what we keep in
    # memory, not to what crossed the wire: a compression bomb stops at the cap too.
    yield from response.iter_content(chunk_size=_READ_CHUNK_BYTES)


def _same_origin(url: str, other: str) -> bool:
    first, second = urlsplit(url), urlsplit(other)
    return (first.scheme, first.hostname, first.port) == (
        second.scheme,
        second.hostname,
        second.port,
    )


def _without(headers: Mapping[str, str], names: frozenset[str] | set[str]) -> dict[str, str]:
    return {name: value for name, value in headers.items() if name.lower() not in names}
