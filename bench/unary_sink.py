"""The unary path to Core alone: results/s and worker CPU per result (issue 21, item 2).

A Core with only ``ReportResult`` (bench/godesign's Go Core, ``--mode unary``: it
answers ``ReportResults`` UNIMPLEMENTED) on loopback; a child process patched by gevent,
as the worker is, sends N results through ``GrpcResultSink`` from ``--senders``
greenlets (the worker's RESULT_SENDERS) as the worker's senders do: batches of 100 while
the sink takes them, else one result at a time. Once with each unary client:

    python bench/unary_sink.py [--results N] [--senders K,K] [--clients aio,sync]
                               [--repeats N] [--profile DIR [--native]]

``sync`` is grpcio's blocking stub, each call handed to a thread of the hub's
threadpool, one result per sender at a time (``aio_unary=False``, the path before
issue 21); ``aio`` is grpcio's asyncio client on one native thread, a batch's calls all
in flight at once. Clients are
alternated and the best of ``--repeats`` is kept. CPU is the child's own (every thread),
over the sending only. ``--profile DIR`` samples the sending of each child with py-spy
(threads holding the GIL, 250 Hz) into DIR, one raw (collapsed stacks) file each;
``--native`` adds C frames (grpcio's Cython and C-core).
"""

from __future__ import annotations

import sys

if __name__ == "__main__" and "--child" in sys.argv:
    # The child is a worker stand-in: patched before anything else is imported.
    from gevent import monkey

    monkey.patch_all()

import argparse
import json
import os
import resource
import shutil
import signal
import subprocess
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

ROOT = Path(__file__).resolve().parent.parent
GO_CORE = ROOT / ".cache" / "godesign" / "core"
PY_SPY = ROOT / ".venv" / "bin" / "py-spy"
PROFILE_VARIABLE = "UNARY_BENCH_PROFILE"
NATIVE_VARIABLE = "UNARY_BENCH_PROFILE_NATIVE"
BATCH = 100  # RESULT_BATCH_SIZE's default


def _child(address: str, results: int, senders: int, client: str) -> None:
    import gevent  # noqa: PLC0415 - after patching

    from jobworker.adapters.grpc.runtime import init_grpc_for_gevent  # noqa: PLC0415
    from jobworker.domain.errors import BatchesUnsupported  # noqa: PLC0415
    from jobworker.domain.model import JobResult, JobStatus  # noqa: PLC0415

    init_grpc_for_gevent(senders)
    from jobworker.adapters.grpc.sink import GrpcResultSink  # noqa: PLC0415

    sink = GrpcResultSink(address, aio_unary=client == "aio")
    first = JobResult(job_id="probe-0", type="NOOP", status=JobStatus.SUCCEEDED)
    # As the worker's senders do: batches until the sink says it takes one at a time.
    batch = BATCH
    try:
        sink.send_batch([first, first._replace(job_id="probe-1")])
    except BatchesUnsupported:
        batch = 1
    # Warm the path (channel connected, loop thread started) before the clock starts.
    sink.send(first)
    results_left = [
        JobResult(job_id=f"job-{index}", type="NOOP", status=JobStatus.SUCCEEDED)
        for index in range(results)
    ]

    def sender() -> None:
        while results_left:
            taken = results_left[-batch:]
            del results_left[-batch:]
            if batch == 1:
                sink.send(taken[0])
            else:
                sink.send_batch(taken)

    spy = _start_py_spy(os.environ.get(PROFILE_VARIABLE))
    cpu_before = _cpu_s()
    started = time.perf_counter()
    gevent.joinall([gevent.spawn(sender) for _ in range(senders)], raise_error=True)
    elapsed = time.perf_counter() - started
    cpu = _cpu_s() - cpu_before
    if spy is not None:
        spy.send_signal(signal.SIGINT)  # py-spy writes what it has and ends
        spy.wait()
    sink.close()
    print(json.dumps({"elapsed_s": elapsed, "cpu_s": cpu}), flush=True)


def _start_py_spy(out: str | None) -> subprocess.Popen[bytes] | None:
    """py-spy sampling this process (every thread) from now on, into ``out``."""
    if not out:
        return None
    argv = [str(PY_SPY), "record", "--pid", str(os.getpid()), "--threads", "--gil", "--rate", "250"]
    if os.environ.get(NATIVE_VARIABLE):
        argv.append("--native")  # C frames too: grpcio's Cython and C-core under the GIL
    spy = subprocess.Popen([*argv, "--format", "raw", "--output", out], stderr=subprocess.DEVNULL)
    from gevent import monkey  # noqa: PLC0415 - the child's, patched

    monkey.get_original("time", "sleep")(
        1.0
    )  # attached before the clock starts; the hub holds still meanwhile
    return spy


def _cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _one_run(
    address: str, results: int, senders: int, client: str, profile: Path | None
) -> dict[str, float]:
    argv = [sys.executable, __file__, "--child", address, str(results), str(senders), client]
    env = dict(os.environ)
    if profile is not None:
        profile.mkdir(parents=True, exist_ok=True)
        env[PROFILE_VARIABLE] = str(profile / f"unary-{client}-senders{senders}.txt")
    child = subprocess.run(argv, capture_output=True, text=True, check=False, env=env)
    lines = [line for line in child.stdout.splitlines() if line.startswith("{")]
    if child.returncode != 0 or not lines:
        raise SystemExit(f"unary bench child failed ({child.returncode}):\n{child.stderr}")
    return dict(json.loads(lines[-1]))


def main() -> int:
    if "--child" in sys.argv:
        address, results, senders, client = sys.argv[sys.argv.index("--child") + 1 :]
        _child(address, int(results), int(senders), client)
        return 0
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", type=int, default=20_000)
    parser.add_argument("--senders", default="4,16", help="comma-separated sender counts")
    parser.add_argument("--clients", default="sync,aio")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--profile", type=Path, default=None)
    parser.add_argument(
        "--native", action="store_true", help="with --profile: native (C) frames too"
    )
    args = parser.parse_args()
    if (
        not GO_CORE.exists()
        and subprocess.run([ROOT / "tools" / "build_godesign.sh"], check=False).returncode
    ):
        return 2
    if args.native:
        os.environ[NATIVE_VARIABLE] = "1"
    if args.profile is not None and not shutil.which(str(PY_SPY)):
        raise SystemExit(f"--profile needs py-spy at {PY_SPY}")
    from bench.e2e_processes import BenchCore  # noqa: PLC0415

    clients = args.clients.split(",")
    print(f"{args.results} results to a ReportResult-only Go Core, best of {args.repeats}")
    print(f"{'client':<6} {'senders':>7} {'results/s':>10} {'CPU µs/result':>14}")
    with BenchCore("unary", (str(GO_CORE),)) as core:
        for senders in (int(n) for n in args.senders.split(",")):
            best: dict[str, dict[str, float]] = {}
            for _ in range(args.repeats):
                for client in clients:
                    run = _one_run(core.address, args.results, senders, client, args.profile)
                    if client not in best or run["elapsed_s"] < best[client]["elapsed_s"]:
                        best[client] = run
            for client in clients:
                run = best[client]
                rate = args.results / run["elapsed_s"]
                cpu_us = run["cpu_s"] / args.results * 1e6
                print(f"{client:<6} {senders:>7} {rate:>10,.0f} {cpu_us:>14,.0f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
