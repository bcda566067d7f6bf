"""The HTTP executor against a real HTTP server on 127.0.0.1.

The server is on loopback, so these clients allow private networks, except where the
test is that loopback is refused.
"""

from __future__ import annotations

import ipaddress
import json
import socket
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

from jobworker.adapters.executors.http import HttpExecutor
from jobworker.adapters.executors.network_guard import AddressGuard, IPAddress
from jobworker.adapters.executors.safe_http import SafeHttpClient
from jobworker.domain.errors import InvalidPayload, JobFailed, RetryableJobError
from jobworker.domain.model import Job

pytestmark = pytest.mark.integration


class LoopbackServer(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), RoutesHandler)
        self.connections = 0
        self.slow_released = threading.Event()  # /slow holds its request until set

    def verify_request(self, request: Any, client_address: Any) -> bool:
        self.connections += 1
        return True

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.server_port}{path}"


class RoutesHandler(BaseHTTPRequestHandler):
    server: LoopbackServer

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - base class name
        pass

    def do_GET(self) -> None:
        self.route()

    def do_POST(self) -> None:
        self.route()

    def route(self) -> None:
        parts = urlsplit(self.path)
        query = {name: values[0] for name, values in parse_qs(parts.query).items()}
        name, _, argument = parts.path.strip("/").partition("/")
        if name == "ok":
            self.reply(200, b"hello", {"Content-Type": "text/plain; charset=utf-8", "X-Test": "1"})
        elif name == "echo":
            length = int(self.headers.get("Content-Length", "0"))
            echoed = {
                "method": self.command,
                "headers": dict(self.headers),
                "header_lines": list(self.headers.items()),  # repeats included
                "body": self.rfile.read(length).decode(),
            }
            self.reply(200, json.dumps(echoed).encode(), {"Content-Type": "application/json"})
        elif name == "status":
            self.reply(int(argument), b"status body", {})
        elif name == "busy":
            self.reply(int(argument), b"come back later", {"Retry-After": query["after"]})
        elif name == "big":
            self.reply(200, b"x" * int(argument), {})
        elif name == "unsized":
            self.reply(200, b"y" * int(argument), {}, declare_length=False)
        elif name == "slow":
            # Never answers: released once the client has given up, it only hangs up.
            assert isinstance(self.server, LoopbackServer)
            self.server.slow_released.wait(30)
        elif name == "redirect":
            self.reply(int(query.get("code", "302")), b"", {"Location": query["to"]})
        elif name == "loop":
            self.reply(302, b"", {"Location": "/loop"})
        elif name == "set-cookie":
            self.reply(200, b"", {"Set-Cookie": "session=secret; Path=/"})
        else:
            self.reply(404, b"no such route", {})

    def reply(
        self, status: int, body: bytes, headers: dict[str, str], declare_length: bool = True
    ) -> None:
        self.send_response(status)
        for header, value in headers.items():
            self.send_header(header, value)
        if declare_length:
            self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


def start_server() -> LoopbackServer:
    server = LoopbackServer()
    threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
    return server


def stop_server(server: LoopbackServer) -> None:
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="module")
def shared_server() -> Iterator[LoopbackServer]:
    server = start_server()
    yield server
    stop_server(server)


@pytest.fixture
def server(shared_server: LoopbackServer) -> LoopbackServer:
    shared_server.connections = 0
    return shared_server


class LoopbackOnlyThisServer(AddressGuard):
    """The default guard, except that the test server's address is allowed."""

    def check_address(self, address: IPAddress, host: str) -> None:
        if address != ipaddress.ip_address("127.0.0.1"):
            super().check_address(address, host)


@pytest.fixture
def client() -> Iterator[SafeHttpClient]:
    client = SafeHttpClient(pool_size=4, allow_private_networks=True, max_redirects=3)
    yield client
    client.close()


@pytest.fixture
def executor(client: SafeHttpClient) -> HttpExecutor:
    return HttpExecutor(client, max_response_bytes=1000, default_timeout_s=5.0)


def run(executor: HttpExecutor, **payload: object) -> dict[str, Any]:
    output = executor.execute(Job(id="job-1", type="HTTP", payload=json.dumps(payload)))
    result: dict[str, Any] = json.loads(output)
    return result


def test_get_returns_status_headers_body_and_elapsed_time(
    server: LoopbackServer, executor: HttpExecutor
) -> None:
    result = run(executor, url=server.url("/ok"))

    assert result["status"] == 200
    assert result["body"] == "hello"
    assert result["headers"]["X-Test"] == "1"
    assert result["url"] == server.url("/ok")
    assert 0 <= result["elapsed_ms"] < 5000


def test_post_sends_method_headers_and_body(server: LoopbackServer, executor: HttpExecutor) -> None:
    result = run(
        executor,
        method="POST",
        url=server.url("/echo"),
        headers={"Content-Type": "application/json", "X-Trace": "t-1"},
        body='{"a": 1}',
    )

    echoed = json.loads(result["body"])
    assert echoed["method"] == "POST"
    assert echoed["body"] == '{"a": 1}'
    assert echoed["headers"]["X-Trace"] == "t-1"


@pytest.mark.parametrize("status", [500, 503, 429])
def test_server_errors_are_retryable(
    server: LoopbackServer, executor: HttpExecutor, status: int
) -> None:
    with pytest.raises(RetryableJobError, match=f"answered {status}"):
        run(executor, url=server.url(f"/status/{status}"))


@pytest.mark.parametrize("status", [400, 404, 403])
def test_client_errors_are_final_and_say_the_status(
    server: LoopbackServer, executor: HttpExecutor, status: int
) -> None:
    with pytest.raises(JobFailed, match=f"GET {server.url(f'/status/{status}')} answered {status}"):
        run(executor, url=server.url(f"/status/{status}"))


def test_a_refused_connection_is_retryable(executor: HttpExecutor) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        free_port = probe.getsockname()[1]

    with pytest.raises(RetryableJobError, match="connection failed"):
        run(executor, url=f"http://127.0.0.1:{free_port}/ok")


def test_a_slow_server_times_out_retryably(server: LoopbackServer, executor: HttpExecutor) -> None:
    server.slow_released.clear()
    try:
        with pytest.raises(RetryableJobError, match="timed out"):
            run(executor, url=server.url("/slow"), timeout_ms=150)
    finally:
        server.slow_released.set()


@pytest.mark.parametrize("route", ["/big/5000", "/unsized/5000"])
def test_a_body_over_the_limit_fails_the_job(
    server: LoopbackServer, executor: HttpExecutor, route: str
) -> None:
    with pytest.raises(JobFailed, match="exceeds the 1000-byte limit"):
        run(executor, url=server.url(route))


def test_a_body_at_the_limit_is_returned(server: LoopbackServer, executor: HttpExecutor) -> None:
    assert run(executor, url=server.url("/unsized/1000"))["body"] == "y" * 1000


def test_redirects_are_followed_with_303_turning_post_into_get(
    server: LoopbackServer, executor: HttpExecutor
) -> None:
    result = run(
        executor, method="POST", url=server.url("/redirect?code=303&to=/echo"), body="gone"
    )

    assert result["url"] == server.url("/echo")
    assert json.loads(result["body"])["method"] == "GET"


def test_307_keeps_the_method_and_body(server: LoopbackServer, executor: HttpExecutor) -> None:
    result = run(executor, method="POST", url=server.url("/redirect?code=307&to=/echo"), body="b")

    assert json.loads(result["body"])["method"] == "POST"
    assert json.loads(result["body"])["body"] == "b"


def test_too_many_redirects_fail_the_job(server: LoopbackServer, executor: HttpExecutor) -> None:
    with pytest.raises(JobFailed, match="more than 3 redirects"):
        run(executor, url=server.url("/loop"))


@pytest.mark.parametrize(
    "target",
    [
        "http://169.254.169.254/latest/meta-data/",
        "http://[::ffff:169.254.169.254]/",
        "http://metadata.google.internal/",
        "file:///etc/passwd",
    ],
)
def test_every_redirect_hop_is_checked(
    server: LoopbackServer, executor: HttpExecutor, target: str
) -> None:
    with pytest.raises(JobFailed, match="redirect from .* refused"):
        run(executor, url=server.url(f"/redirect?to={target}"))


@pytest.mark.parametrize("target", ["http://127.0.0.2/", "http://[::1]/", "http://10.0.0.1/"])
def test_a_redirect_to_a_private_address_is_refused(server: LoopbackServer, target: str) -> None:
    client = SafeHttpClient(pool_size=1, guard=LoopbackOnlyThisServer())
    try:
        with pytest.raises(JobFailed, match="redirect from .* refused: .*private networks"):
            client.request("GET", server.url(f"/redirect?to={target}"), timeout_s=2, max_bytes=9)
    finally:
        client.close()


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost", "[::ffff:127.0.0.1]"])
def test_loopback_is_refused_without_connecting_unless_allowed(
    server: LoopbackServer, host: str
) -> None:
    executor = HttpExecutor(SafeHttpClient(pool_size=1))

    with pytest.raises(InvalidPayload, match="loopback"):
        run(executor, url=f"http://{host}:{server.server_port}/ok")

    assert server.connections == 0


def test_credentials_are_dropped_on_a_redirect_to_another_origin(
    server: LoopbackServer, executor: HttpExecutor
) -> None:
    other = start_server()
    try:
        result = run(
            executor,
            url=server.url(f"/redirect?to={other.url('/echo')}"),
            headers={"Authorization": "Bearer secret", "X-Keep": "1"},
        )
    finally:
        stop_server(other)

    sent = json.loads(result["body"])["headers"]
    assert "Authorization" not in sent
    assert sent["X-Keep"] == "1"


def test_cookies_do_not_leak_from_one_job_to_the_next(
    server: LoopbackServer, executor: HttpExecutor
) -> None:
    run(executor, url=server.url("/set-cookie"))

    sent = json.loads(run(executor, url=server.url("/echo"))["body"])["headers"]

    assert "Cookie" not in sent


def test_get_bytes_returns_the_body_and_raises_for_errors(
    server: LoopbackServer, client: SafeHttpClient
) -> None:
    assert client.get_bytes(server.url("/ok"), max_bytes=100, timeout_s=2) == b"hello"
    with pytest.raises(JobFailed, match="answered 404"):
        client.get_bytes(server.url("/missing"), max_bytes=100, timeout_s=2)
    with pytest.raises(JobFailed, match="exceeds the 10-byte limit"):
        client.get_bytes(server.url("/big/50"), max_bytes=10, timeout_s=2)


# -- Idempotency-Key and Retry-After ---------------------------------------------------


def sent_headers(executor: HttpExecutor, job_id: str, **payload: object) -> list[list[str]]:
    """The header lines the server received for job ``job_id``, repeats included."""
    job = Job(id=job_id, type="HTTP", payload=json.dumps(payload))
    result = json.loads(executor.execute(job))
    lines: list[list[str]] = json.loads(result["body"])["header_lines"]
    return lines


def named(lines: list[list[str]], name: str) -> list[str]:
    return [value for header, value in lines if header.lower() == name.lower()]


def test_each_request_carries_the_job_id_as_its_idempotency_key(
    server: LoopbackServer, executor: HttpExecutor
) -> None:
    first = sent_headers(executor, "job-7", url=server.url("/echo"))
    again = sent_headers(executor, "job-7", method="POST", url=server.url("/echo"), body="b")
    # Across a redirect too: the hop that reaches the target carries it.
    redirected = sent_headers(executor, "job-7", url=server.url("/redirect?code=307&to=/echo"))

    for lines in (first, again, redirected):
        assert named(lines, "Idempotency-Key") == ["job-7"]


def test_the_idempotency_header_can_be_renamed(
    server: LoopbackServer, client: SafeHttpClient
) -> None:
    executor = HttpExecutor(client, idempotency_header="X-Request-Id")

    lines = sent_headers(executor, "job-7", url=server.url("/echo"))

    assert named(lines, "X-Request-Id") == ["job-7"]
    assert named(lines, "Idempotency-Key") == []


def test_no_idempotency_header_when_turned_off(
    server: LoopbackServer, client: SafeHttpClient
) -> None:
    executor = HttpExecutor(client, idempotency_header="")

    lines = sent_headers(executor, "job-7", url=server.url("/echo"))

    assert "job-7" not in [value for _, value in lines]
    assert named(lines, "Idempotency-Key") == []


def test_a_key_the_payload_sets_is_kept_and_sent_once(
    server: LoopbackServer, executor: HttpExecutor
) -> None:
    headers = {"idempotency-key": "order-42"}

    lines = sent_headers(executor, "job-7", url=server.url("/echo"), headers=headers)

    assert named(lines, "Idempotency-Key") == ["order-42"]


@pytest.mark.parametrize(
    ("job_id", "key"),
    [
        ("jöb/1 ü", "j%C3%B6b%2F1%20%C3%BC"),
        ("tab\there", "tab%09here"),
        (" leading", "%20leading"),  # requests refuses a value that starts with a space
        ("trailing ", "trailing%20"),  # the target would read "trailing"
        ("plain ascii_id.1~", "plain ascii_id.1~"),
    ],
)
def test_a_job_id_a_header_cannot_carry_is_percent_encoded(
    server: LoopbackServer, executor: HttpExecutor, job_id: str, key: str
) -> None:
    lines = sent_headers(executor, job_id, url=server.url("/echo"))

    assert named(lines, "Idempotency-Key") == [key]


@pytest.mark.parametrize("status", [503, 429])
def test_retry_after_on_a_busy_answer_is_the_least_wait_before_the_next_attempt(
    server: LoopbackServer, executor: HttpExecutor, status: int
) -> None:
    with pytest.raises(RetryableJobError, match=f"answered {status}.*Retry-After: 2 s") as raised:
        run(executor, url=server.url(f"/busy/{status}?after=2"))

    assert raised.value.retry_after_s == 2.0


def test_retry_after_on_a_500_is_not_taken(server: LoopbackServer, executor: HttpExecutor) -> None:
    with pytest.raises(RetryableJobError) as raised:
        run(executor, url=server.url("/busy/500?after=2"))

    assert raised.value.retry_after_s is None
