"""The reference Core over real gRPC on loopback: validation, de-duplication, lifecycle."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from jobworker.adapters.codec import result_to_proto
from jobworker.adapters.core.process import CoreProcess
from jobworker.adapters.core.server import CoreServer, CoreServerError
from jobworker.adapters.core.store import ResultStore
from jobworker.adapters.proto.jobworker.v1 import jobworker_pb2 as pb
from jobworker.adapters.proto.jobworker.v1 import jobworker_pb2_grpc as pb_grpc
from jobworker.domain.model import JobResult, JobStatus
from tests.support.processes import free_port

pytestmark = pytest.mark.integration

SOURCE_ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def store(tmp_path: Path) -> Iterator[ResultStore]:
    with ResultStore(tmp_path / "core.db") as store:
        yield store


@pytest.fixture
def core_stub(store: ResultStore) -> Iterator[pb_grpc.CoreServiceStub]:
    server = CoreServer("127.0.0.1:0", store, max_workers=4)
    port = server.start()
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        yield pb_grpc.CoreServiceStub(channel)
    server.stop(grace_s=1.0)


def report(stub: pb_grpc.CoreServiceStub, message: pb.JobResult) -> None:
    stub.ReportResult(pb.ReportResultRequest(result=message), timeout=5)


def test_a_reported_result_is_stored_once_however_often_it_comes(
    core_stub: pb_grpc.CoreServiceStub, store: ResultStore
) -> None:
    result = JobResult(
        job_id="job-1",
        type="HTTP",
        status=JobStatus.FAILED,
        error="503 from upstream",
        attempts=2,
        metadata={"tenant": "acme"},
    )

    report(core_stub, result_to_proto(result))
    report(core_stub, result_to_proto(result))

    stored = store.get("job-1")
    assert stored is not None
    assert stored.result == result
    assert stored.reports == 2
    assert store.summary()["duplicates"] == 1


@pytest.mark.parametrize(
    ("request_message", "reason"),
    [
        (pb.ReportResultRequest(), "result is required"),
        (
            pb.ReportResultRequest(result=pb.JobResult(status=pb.JobResult.Status.SUCCEEDED)),
            "result.job_id is required",
        ),
        (
            pb.ReportResultRequest(result=pb.JobResult(job_id="job-1")),
            "result.status is required",
        ),
    ],
)
def test_an_incomplete_report_is_refused_as_invalid_and_not_stored(
    core_stub: pb_grpc.CoreServiceStub,
    store: ResultStore,
    request_message: pb.ReportResultRequest,
    reason: str,
) -> None:
    with pytest.raises(grpc.RpcError) as refused:
        core_stub.ReportResult(request_message, timeout=5)

    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT  # type: ignore[attr-defined]
    assert reason in refused.value.details()  # type: ignore[attr-defined]
    assert store.job_ids() == []


def test_a_second_core_on_a_taken_port_fails_to_start(store: ResultStore) -> None:
    first = CoreServer("127.0.0.1:0", store)
    port = first.start()
    try:
        with pytest.raises(CoreServerError, match=f"cannot listen on 127.0.0.1:{port}"):
            CoreServer(f"127.0.0.1:{port}", store).start()
    finally:
        first.stop(grace_s=0)


def test_the_core_process_stops_on_sigterm_and_keeps_what_it_received(tmp_path: Path) -> None:
    core = CoreProcess(free_port(), tmp_path / "core.db")
    core.start()
    with grpc.insecure_channel(core.address) as channel:
        report(
            pb_grpc.CoreServiceStub(channel),
            result_to_proto(JobResult(job_id="job-1", type="SLEEP", status=JobStatus.SUCCEEDED)),
        )

    assert core.stop() == 0

    with ResultStore(tmp_path / "core.db", create=False) as store:
        assert store.job_ids() == ["job-1"]
    assert "core.stopped" in core.log_path.read_text()


def test_the_core_process_explains_an_unusable_database_in_one_line(tmp_path: Path) -> None:
    unusable = tmp_path / "missing-dir" / "core.db"

    finished = subprocess.run(
        [
            sys.executable,
            "-m",
            "jobworker",
            "core",
            "--address",
            "127.0.0.1:0",
            "--db",
            str(unusable),
        ],
        cwd=SOURCE_ROOT,
        env={"PYTHONPATH": str(SOURCE_ROOT), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )

    assert finished.returncode == 2
    assert finished.stderr.startswith(f"jobworker: cannot open results database {unusable}")
    assert "Traceback" not in finished.stderr + finished.stdout
