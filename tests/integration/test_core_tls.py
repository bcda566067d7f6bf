"""TLS to Core, against real TLS gRPC servers on loopback: each setup mistake gets its
own reason (grpcio says UNAVAILABLE for all of them), a correct setup delivers, and a
worker process logs the reason once and shows it in ``/readyz``."""

from __future__ import annotations

import json
import re
import urllib.error
import urllib.request
from collections.abc import Iterator
from concurrent import futures
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
import trustme
from structlog.testing import capture_logs

from jobworker.adapters.core.server import CoreServicer
from jobworker.adapters.core.store import ResultStore
from jobworker.adapters.grpc.sink import GrpcResultSink
from jobworker.adapters.grpc.tls_diagnosis import CoreTlsDiagnosis
from jobworker.adapters.proto.jobworker.v1 import jobworker_pb2_grpc as pb_grpc
from jobworker.domain.model import JobResult, JobStatus
from tests.support.faults import scrape_metric
from tests.support.processes import WorkerProcess, events_named, free_port, wait_while_running

pytestmark = pytest.mark.integration

SETTING_NAMES = {
    "tls_ca_file": "GRPC_TLS_CA_FILE",
    "tls_cert_file": "GRPC_TLS_CERT_FILE",
    "tls_key_file": "GRPC_TLS_KEY_FILE",
}


@dataclass(frozen=True)
class Pki:
    """Core's CA, a CA Core trusts for clients, and one nobody trusts; PEM files in a folder."""

    folder: Path
    core_ca: trustme.CA
    client_ca: trustme.CA
    stranger_ca: trustme.CA

    def ca_file(self, ca: trustme.CA, name: str) -> Path:
        path = self.folder / f"{name}-ca.pem"
        ca.cert_pem.write_to_path(str(path))
        return path

    def client_files(self, ca: trustme.CA, name: str) -> dict[str, Path]:
        leaf = ca.issue_cert("worker@example.test")
        cert, key = self.folder / f"{name}.pem", self.folder / f"{name}.key"
        leaf.cert_chain_pems[0].write_to_path(str(cert))
        leaf.private_key_pem.write_to_path(str(key))
        return {"tls_cert_file": cert, "tls_key_file": key}


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    return Pki(tmp_path, trustme.CA(), trustme.CA(), trustme.CA())


class TlsCore:
    """The reference Core's servicer behind ``grpc.ssl_server_credentials`` on 127.0.0.1."""

    def __init__(self, store: ResultStore) -> None:
        self._store = store
        self._server: grpc.Server | None = None
        self.port = 0

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self, pki: Pki, names: tuple[str, ...], *, require_client: bool = False) -> None:
        """(Re)start with a certificate for ``names``, on the same port as before if any."""
        self.stop()
        leaf = pki.core_ca.issue_cert(*names)
        credentials = grpc.ssl_server_credentials(
            [(leaf.private_key_pem.bytes(), leaf.cert_chain_pems[0].bytes())],
            root_certificates=pki.client_ca.cert_pem.bytes() if require_client else None,
            require_client_auth=require_client,
        )
        self._server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        pb_grpc.add_CoreServiceServicer_to_server(CoreServicer(self._store), self._server)
        self.port = self._server.add_secure_port(f"127.0.0.1:{self.port}", credentials)
        self._server.start()

    def stop(self) -> None:
        if self._server is not None:
            self._server.stop(grace=None).wait()
            self._server = None


@pytest.fixture
def store(tmp_path: Path) -> Iterator[ResultStore]:
    with ResultStore(tmp_path / "core.db") as opened:
        yield opened


@pytest.fixture
def core(store: ResultStore) -> Iterator[TlsCore]:
    server = TlsCore(store)
    yield server
    server.stop()


def diagnosis(core: TlsCore, **files: Path) -> CoreTlsDiagnosis:
    return CoreTlsDiagnosis(core.address, setting_names=SETTING_NAMES, **files)  # type: ignore[arg-type]


def a_result(job_id: str) -> JobResult:
    return JobResult(job_id=job_id, type="SLEEP", status=JobStatus.SUCCEEDED)


@pytest.mark.parametrize(
    ("mistake", "expected"),
    [
        (
            "CA file of another CA",
            r"^Core's certificate is not signed by a CA in GRPC_TLS_CA_FILE \(.*wrong-ca\.pem\): "
            r"unable to get local issuer certificate$",
        ),
        (
            "no client certificate, Core requires one",
            r"^Core requires a client certificate .*: "
            r"set GRPC_TLS_CERT_FILE and GRPC_TLS_KEY_FILE$",
        ),
        (
            "client certificate from a CA Core does not trust",
            r"^Core refused our client certificate, GRPC_TLS_CERT_FILE \(.*stranger\.pem\)",
        ),
        (
            "Core's certificate names another host",
            r"^Core's certificate does not name host 127\.0\.0\.1 "
            r"\(it names core\.example\.test\)$",
        ),
    ],
)
def test_each_tls_mistake_has_its_own_reason(
    mistake: str, expected: str, pki: Pki, core: TlsCore
) -> None:
    core_ca = pki.ca_file(pki.core_ca, "core")
    if mistake == "CA file of another CA":
        core.start(pki, ("127.0.0.1",))
        found = diagnosis(core, tls_ca_file=pki.ca_file(pki.stranger_ca, "wrong"))
    elif mistake == "no client certificate, Core requires one":
        core.start(pki, ("127.0.0.1",), require_client=True)
        found = diagnosis(core, tls_ca_file=core_ca)
    elif mistake == "client certificate from a CA Core does not trust":
        core.start(pki, ("127.0.0.1",), require_client=True)
        found = diagnosis(
            core, tls_ca_file=core_ca, **pki.client_files(pki.stranger_ca, "stranger")
        )
    else:
        core.start(pki, ("core.example.test",))
        found = diagnosis(core, tls_ca_file=core_ca)

    with capture_logs() as logs:
        reason = found.check()

    assert reason is not None
    assert reason == found.reason
    assert re.match(expected, reason), reason
    assert logs == [
        {
            "event": "TLS to Core fails; results are held and retried until it works",
            "log_level": "error",
            "address": core.address,
            "reason": reason,
        }
    ]


@pytest.mark.parametrize("mutual", [False, True], ids=["tls", "mutual-tls"])
def test_a_correct_setup_has_no_reason_and_delivers(
    mutual: bool, pki: Pki, core: TlsCore, store: ResultStore
) -> None:
    core.start(pki, ("127.0.0.1",), require_client=mutual)
    files: dict[str, Path] = {"tls_ca_file": pki.ca_file(pki.core_ca, "core")}
    if mutual:
        files |= pki.client_files(pki.client_ca, "worker")

    with capture_logs() as logs:
        reason = diagnosis(core, **files).check()
    sink = GrpcResultSink(core.address, call_timeout_s=5.0, max_attempts=1, **files)  # type: ignore[arg-type]
    try:
        sink.send(a_result("job-1"))
    finally:
        sink.close()

    assert reason is None
    assert logs == []
    assert store.get("job-1") is not None


def test_a_core_that_is_down_is_not_a_tls_problem(pki: Pki) -> None:
    found = CoreTlsDiagnosis(f"127.0.0.1:{free_port()}", tls_ca_file=pki.ca_file(pki.core_ca, "c"))

    with capture_logs() as logs:
        assert found.check() is None
    assert logs == []


def test_the_reason_is_logged_once_per_change_and_the_fix_once(pki: Pki, core: TlsCore) -> None:
    core.start(pki, ("core.example.test",))
    found = diagnosis(core, tls_ca_file=pki.ca_file(pki.core_ca, "core"))

    with capture_logs() as logs:
        for _ in range(3):
            found.check()
        core.start(pki, ("127.0.0.1",), require_client=True)  # same port, another mistake
        for _ in range(3):
            found.check()
        core.start(pki, ("127.0.0.1",))
        for _ in range(3):
            found.check()

    assert [(e["log_level"], e["event"], e.get("reason", "")[:34]) for e in logs] == [
        ("error", "TLS to Core fails; results are held and retried until it works",
         "Core's certificate does not name h"),
        ("error", "TLS to Core fails; results are held and retried until it works",
         "Core requires a client certificate"),
        ("info", "TLS to Core works again", ""),
    ]  # fmt: skip
    assert found.reason is None


def test_failed_calls_handshake_at_most_once_per_interval_and_only_for_unavailable(
    pki: Pki, core: TlsCore
) -> None:
    now = [100.0]
    core.start(pki, ("core.example.test",))
    found = CoreTlsDiagnosis(
        core.address,
        tls_ca_file=pki.ca_file(pki.core_ca, "core"),
        min_interval_s=5.0,
        clock=lambda: now[0],
    )

    found.on_call_failed("DEADLINE_EXCEEDED")
    assert found.reason is None
    found.on_call_failed("UNAVAILABLE")
    assert found.reason is not None

    core.start(pki, ("127.0.0.1",))  # fixed: only a new handshake can tell
    now[0] += 4.9
    found.on_call_failed("UNAVAILABLE")
    assert found.reason is not None
    now[0] += 0.2
    found.on_call_failed("UNAVAILABLE")
    assert found.reason is None


def test_without_tls_files_there_is_nothing_to_diagnose(core: TlsCore, pki: Pki) -> None:
    core.start(pki, ("core.example.test",))
    found = CoreTlsDiagnosis(core.address)

    assert found.check() is None
    found.on_call_failed("UNAVAILABLE")
    assert found.reason is None


# -- the worker process: start-up log, /readyz, recovery ---------------------------------


def send_retries(port: int) -> float:
    return scrape_metric(port, "jobworker_result_send_retries_total")


def readiness(port: int) -> dict[str, Any]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=5) as answer:
            return json.loads(answer.read())  # type: ignore[no-any-return]
    except urllib.error.HTTPError as refused:
        return json.loads(refused.read())  # type: ignore[no-any-return]
    except OSError:
        return {}


def test_a_worker_logs_the_reason_once_shows_it_in_readyz_and_recovers(
    pki: Pki, core: TlsCore, store: ResultStore, tmp_path: Path
) -> None:
    core.start(pki, ("127.0.0.1",), require_client=True)
    jobs = tmp_path / "jobs.jsonl"
    # The slow job keeps the worker up after the fix, for /readyz to see Core reachable.
    jobs.write_text(
        json.dumps({"id": "job-1", "type": "SLEEP", "payload": {"ms": 1}})
        + "\n"
        + json.dumps({"id": "job-2", "type": "SLEEP", "payload": {"ms": 8000}})
        + "\n"
    )
    metrics_port = free_port()
    worker = WorkerProcess(
        {
            "JOB_SOURCE": "file",
            "JOB_FILE": str(jobs),
            "RESULT_SINK": "grpc",
            "GRPC_SERVER_ADDRESS": core.address,
            "GRPC_TLS_CA_FILE": str(pki.ca_file(pki.core_ca, "core")),
            "GRPC_RETRY_BACKOFF_MAX": "500ms",
            "METRICS_PORT": str(metrics_port),
            # This test is about a worker that runs while TLS to Core fails: start anyway.
            "CORE_START_TIMEOUT": "0",
        },
        tmp_path / "worker.log",
    )
    worker.start()
    try:
        assert wait_while_running(
            lambda: "core_reachable" in readiness(metrics_port).get("reasons", {}), 30, worker
        )
        body = readiness(metrics_port)
        # Shown, with its reason, but not held against readiness (READINESS_REQUIRES_CORE).
        assert "core_reachable" not in body["checks"]
        assert body["advisory"]["core_reachable"] is False
        assert body["reasons"]["core_reachable"].startswith("Core requires a client certificate")
        # Several retries of the result, several probes: still one line.
        assert wait_while_running(lambda: send_retries(metrics_port) >= 3, 30, worker)
        readiness(metrics_port)
        failures = events_named(worker, "TLS to Core fails")
        assert [e["reason"] for e in failures] == [body["reasons"]["core_reachable"]]
        assert failures[0]["level"] == "error"
        assert failures[0]["address"] == core.address
        assert events_named(worker, "Core is unreachable") == []

        core.start(pki, ("127.0.0.1",))  # Core drops its client-certificate demand
        assert wait_while_running(
            lambda: readiness(metrics_port).get("advisory", {}).get("core_reachable"), 30, worker
        )
        assert readiness(metrics_port)["reasons"] == {}
        assert worker.wait(30) == 0
    finally:
        worker.ensure_stopped()

    assert store.get("job-1") is not None
    assert store.get("job-2") is not None
    assert len(events_named(worker, "TLS to Core works again")) == 1
