"""The HTTP executor's pure logic: payload validation and which destinations are refused.

Nothing here opens a connection: refusals happen before any socket is connected.
"""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Iterator

import pytest

from jobworker.adapters.executors.http import HttpExecutor, parse_http_request
from jobworker.adapters.executors.network_guard import (
    AddressGuard,
    RefusedDestination,
    embedded_ipv4,
    non_public_reason,
)
from jobworker.adapters.executors.safe_http import (
    HttpResponse,
    SafeHttpClient,
    raise_for_http_status,
)
from jobworker.domain.errors import InvalidPayload, JobFailed, RetryableJobError
from jobworker.domain.model import Job


@pytest.fixture
def client() -> Iterator[SafeHttpClient]:
    client = SafeHttpClient(pool_size=2)
    yield client
    client.close()


def http_job(payload: object) -> Job:
    text = payload if isinstance(payload, str) else json.dumps(payload)
    return Job(id="job-1", type="HTTP", payload=text)


class TestPayload:
    def test_defaults(self) -> None:
        request = parse_http_request(json.dumps({"url": "https://example.com/"}), 10.0)

        assert (request.method, request.url, request.headers, request.body) == (
            "GET",
            "https://example.com/",
            {},
            None,
        )
        assert request.timeout_s == 10.0

    def test_method_is_case_insensitive_and_body_is_sent_as_utf8(self) -> None:
        request = parse_http_request(
            json.dumps({"url": "https://example.com/", "method": "post", "body": "é"}), 10.0
        )

        assert (request.method, request.body) == ("POST", "é".encode())

    def test_timeout_is_the_payloads_when_shorter_and_capped_by_the_default(self) -> None:
        def timeout_s(timeout_ms: int) -> float:
            payload = {"url": "https://example.com/", "timeout_ms": timeout_ms}
            return parse_http_request(json.dumps(payload), 10.0).timeout_s

        assert timeout_s(250) == 0.25
        assert timeout_s(60_000) == 10.0

    def test_headers_are_passed_on(self) -> None:
        headers = {"Accept": "application/json", "X-Trace-Id": "abc"}
        payload = {"url": "https://example.com/", "headers": headers}

        assert parse_http_request(json.dumps(payload), 10.0).headers == headers

    @pytest.mark.parametrize(
        ("payload", "message"),
        [
            ("{", "payload is not valid JSON"),
            ('"https://example.com"', "payload must be a JSON object, got a string"),
            ({}, "field 'url' is required"),
            ({"url": 5}, "field 'url' must be a string, got a number"),
            ({"url": ""}, "field 'url' must not be empty"),
            ({"url": "https://x.org", "method": "TRACE"}, "field 'method' must be one of GET"),
            ({"url": "https://x.org", "method": 1}, "field 'method' must be a string"),
            ({"url": "https://x.org", "headers": ["a"]}, "field 'headers' must be an object"),
            ({"url": "https://x.org", "headers": {"A": 1}}, "header 'A' must have a string value"),
            ({"url": "https://x.org", "headers": {"A B": "1"}}, "is not a valid HTTP header name"),
            ({"url": "https://x.org", "headers": {"A": "1\r\nB: 2"}}, "contains a line break"),
            ({"url": "https://x.org", "headers": {"Content-Length": "1"}}, "may not be given"),
            ({"url": "https://x.org", "body": {"a": 1}}, "field 'body' must be a string"),
            ({"url": "https://x.org", "timeout_ms": 0}, "field 'timeout_ms' must be between 1"),
            ({"url": "https://x.org", "timeout_ms": "5"}, "field 'timeout_ms' must be an integer"),
            ({"url": "https://x.org", "timeout": 5}, "unknown payload field(s) 'timeout'"),
        ],
    )
    def test_invalid_payloads_are_rejected_naming_the_problem(
        self, client: SafeHttpClient, payload: object, message: str
    ) -> None:
        with pytest.raises(InvalidPayload) as raised:
            HttpExecutor(client).execute(http_job(payload))

        assert message in str(raised.value)


class TestUrlGuard:
    @pytest.mark.parametrize(
        ("url", "message"),
        [
            ("ftp://example.com/file", "scheme 'ftp'; only http and https are allowed"),
            ("file:///etc/passwd", "scheme 'file'"),
            ("gopher://example.com/", "scheme 'gopher'"),
            ("example.com/path", "no scheme"),
            ("http:///path", "has no host"),
            ("http://user:secret@example.com/", "carries credentials"),
            ("http://example.com:99999/", "malformed URL"),
            ("http://127.0.0.1/", "a loopback address"),
            ("http://127.8.9.10:8080/", "a loopback address"),
            ("http://[::1]/", "a loopback address"),
            ("http://[::ffff:127.0.0.1]/", "a loopback address (embedded in ::ffff:7f00:1)"),
            ("http://[64:ff9b::7f00:1]/", "a loopback address (embedded in"),
            ("http://[2002:7f00:1::]/", "a loopback address (embedded in"),
            ("http://10.1.2.3/", "a private address"),
            ("http://172.16.0.1/", "a private address"),
            ("http://192.168.1.1/", "a private address"),
            ("http://[fd12::1]/", "a private address"),
            ("http://169.254.1.1/", "a link-local address"),
            ("http://[fe80::1]/", "a link-local address"),
            ("http://0.0.0.0/", "an unspecified address"),
            ("http://[::]/", "an unspecified address"),
            ("http://224.0.0.1/", "a multicast address"),
            ("http://[ff02::1]/", "a multicast address"),
            ("http://240.0.0.1/", "a private address"),
            ("http://100.64.0.1/", "not a globally routable address"),
            ("http://169.254.169.254/latest/meta-data/", "cloud metadata service"),
            ("http://[fd00:ec2::254]/", "cloud metadata service"),
            ("http://[::ffff:169.254.169.254]/", "cloud metadata service"),
            ("http://metadata.google.internal/computeMetadata/v1/", "cloud metadata service"),
            ("http://METADATA.google.internal./", "cloud metadata service"),
        ],
    )
    def test_refused_urls(self, url: str, message: str) -> None:
        with pytest.raises(RefusedDestination) as raised:
            AddressGuard().check_url(url)

        assert message in str(raised.value)

    @pytest.mark.parametrize(
        "url",
        [
            "http://93.184.216.34/",
            "https://[2606:4700::1111]:8443/x",
            "https://example.com/path?q=1",
            "HTTPS://Example.COM/",
        ],
    )
    def test_public_urls_pass(self, url: str) -> None:
        checked = AddressGuard().check_url(url)

        assert checked.scheme in {"http", "https"}
        assert checked.port in {80, 443, 8443}

    def test_private_networks_can_be_allowed_but_metadata_never(self) -> None:
        guard = AddressGuard(allow_private_networks=True)

        assert guard.check_url("http://127.0.0.1:8080/").port == 8080
        guard.check_url("http://[::1]/")
        guard.check_url("http://10.0.0.1/")
        for url in ("http://169.254.169.254/", "http://[fd00:ec2::254]/"):
            with pytest.raises(RefusedDestination, match="metadata"):
                guard.check_url(url)

    def test_credentials_are_not_echoed_in_the_refusal(self) -> None:
        with pytest.raises(RefusedDestination) as raised:
            AddressGuard().check_url("http://user:hunter2@example.com/")

        assert "hunter2" not in str(raised.value)


class TestAddressClassification:
    @pytest.mark.parametrize(
        ("address", "embedded"),
        [
            ("::ffff:10.0.0.1", "10.0.0.1"),
            ("64:ff9b::a00:1", "10.0.0.1"),
            ("2002:a00:1::", "10.0.0.1"),
            ("2001:db8::1", None),
            ("10.0.0.1", None),
        ],
    )
    def test_ipv4_inside_ipv6_is_found(self, address: str, embedded: str | None) -> None:
        found = embedded_ipv4(ipaddress.ip_address(address))

        assert (str(found) if found else None) == embedded

    @pytest.mark.parametrize("address", ["8.8.8.8", "2606:4700::1111", "::ffff:8.8.8.8"])
    def test_public_addresses_have_no_reason_to_refuse(self, address: str) -> None:
        assert non_public_reason(ipaddress.ip_address(address)) is None


class TestClientRefusals:
    def test_a_refused_literal_url_is_an_invalid_payload(self, client: SafeHttpClient) -> None:
        with pytest.raises(InvalidPayload, match="url refused: .*loopback"):
            HttpExecutor(client).execute(http_job({"url": "http://[::1]:9/"}))

    def test_a_host_name_resolving_to_loopback_is_refused_before_connecting(
        self, client: SafeHttpClient
    ) -> None:
        # Nothing listens on port 9: a connection attempt would be a retryable error.
        with pytest.raises(InvalidPayload, match="localhost resolves to .*loopback"):
            client.request("GET", "http://localhost:9/", timeout_s=2, max_bytes=10)

    def test_get_bytes_refuses_metadata(self, client: SafeHttpClient) -> None:
        with pytest.raises(InvalidPayload, match="metadata"):
            client.get_bytes("http://169.254.169.254/", max_bytes=10, timeout_s=1)


class TestStatusMapping:
    @pytest.mark.parametrize("status", [500, 502, 503, 504, 408, 429])
    def test_server_errors_and_transient_statuses_are_retryable(self, status: int) -> None:
        with pytest.raises(RetryableJobError, match=str(status)):
            raise_for_http_status(response(status), "GET https://x.org/")

    @pytest.mark.parametrize("status", [400, 401, 403, 404, 410, 422])
    def test_other_client_errors_are_final(self, status: int) -> None:
        with pytest.raises(JobFailed, match=f"GET https://x.org/ answered {status}"):
            raise_for_http_status(response(status), "GET https://x.org/")

    @pytest.mark.parametrize("status", [200, 204, 301, 304])
    def test_other_statuses_pass(self, status: int) -> None:
        raise_for_http_status(response(status), "GET https://x.org/")

    def test_body_text_uses_the_declared_charset(self) -> None:
        latin1 = HttpResponse(
            "https://x.org/", 200, "OK", {"content-type": "text/plain; charset=latin-1"}, b"\xe9"
        )
        no_charset = HttpResponse("https://x.org/", 200, "OK", {}, b"\xff ok")

        assert latin1.text() == "é"
        assert no_charset.text() == "\ufffd ok"


def response(status: int) -> HttpResponse:
    return HttpResponse("https://x.org/", status, "Reason", {}, b"")
