"""A minimal counting Core for the end-to-end benchmark, run as its own process.

``python -m bench.e2e_core --mode both|unary`` serves ``CoreService`` on a free
loopback port with a plain thread-pool gRPC server (no gevent, no database): it stores
nothing, it only counts results and notes when each one arrived. ``both`` answers
``ReportResult`` and, once the proto has it, ``ReportResults``; ``unary`` answers
``ReportResult`` only, so ``ReportResults`` is UNIMPLEMENTED (what a Core written
before the batched RPC answers: the worker must fall back).

The harness talks to it over stdin/stdout, one line each way:

    listening <port>          printed once, when it serves
    stats                  -> {"results", "calls", "batch_calls", "first", "last", "cpu_s"}
    receipts <path>        -> writes "job_id receipt_ms job_ms started_ms" lines, then "ok"
    pause / resume         -> calls wait (up to a minute, then UNAVAILABLE) / flow again
    reset                  -> forgets every count and receipt
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
from concurrent import futures

import grpc

from jobworker.adapters.proto.jobworker.v1 import jobworker_pb2 as pb
from jobworker.adapters.proto.jobworker.v1 import jobworker_pb2_grpc as pb_grpc

# Present once the lead's proto change lands; until then "both" is unary-only too.
BATCH_REQUEST = getattr(pb, "ReportResultsRequest", None)
BATCH_RESPONSE = getattr(pb, "ReportResultsResponse", None)
PAUSED_CALL_WAIT_S = 60.0
SERVER_THREADS = 8


class Tally:
    """Counts and receipt times; calls arrive on the server's threads."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._flowing = threading.Event()
        self._flowing.set()
        self.reset()

    def reset(self) -> None:
        with self._lock:
            self.calls = 0
            self.batch_calls = 0
            self.first = 0.0
            self.last = 0.0
            self.receipts: list[tuple[str, float, int, int]] = []

    def pause(self) -> None:
        self._flowing.clear()

    def resume(self) -> None:
        self._flowing.set()

    def wait_if_paused(self, context: grpc.ServicerContext) -> None:
        if not self._flowing.wait(PAUSED_CALL_WAIT_S):
            context.abort(grpc.StatusCode.UNAVAILABLE, "bench Core is paused")

    def record(self, results: list[pb.JobResult], *, batch: bool) -> None:
        now_ms = time.time() * 1000
        with self._lock:
            self.calls += 1
            self.batch_calls += batch
            self.first = self.first or now_ms
            self.last = now_ms
            self.receipts.extend(
                (r.job_id, now_ms, r.finished_at_unix_ms - (start := r.started_at_unix_ms), start)
                for r in results
            )

    def stats(self) -> dict[str, float]:
        with self._lock:
            times = os.times()
            return {
                "results": len(self.receipts),
                "calls": self.calls,
                "batch_calls": self.batch_calls,
                "first": self.first,
                "last": self.last,
                "cpu_s": times.user + times.system,
            }

    def write_receipts(self, path: str) -> None:
        with self._lock, open(path, "w", encoding="utf-8") as out:  # noqa: PTH123
            out.writelines(
                f"{job_id} {at:.3f} {job_ms} {started}\n"
                for job_id, at, job_ms, started in self.receipts
            )


class UnaryCore(pb_grpc.CoreServiceServicer):
    """A Core written against the single RPC: ``ReportResults`` stays UNIMPLEMENTED."""

    def __init__(self, tally: Tally) -> None:
        self._tally = tally

    def ReportResult(self, request, context):  # noqa: N802 - the RPC's name
        self._tally.wait_if_paused(context)
        self._tally.record([request.result], batch=False)
        return pb.ReportResultResponse()


class BatchingCore(UnaryCore):
    """Both RPCs (``ReportResults`` is served only once the generated code has it)."""

    def ReportResults(self, request, context):  # noqa: N802 - the RPC's name
        self._tally.wait_if_paused(context)
        self._tally.record(list(request.results), batch=True)
        return BATCH_RESPONSE()


def serve(mode: str) -> None:
    tally = Tally()
    servicer = BatchingCore(tally) if mode == "both" else UnaryCore(tally)
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=SERVER_THREADS))
    pb_grpc.add_CoreServiceServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    reply(f"listening {port}")
    for line in sys.stdin:
        command, _, argument = line.strip().partition(" ")
        if command == "stats":
            reply(json.dumps(tally.stats()))
        elif command == "receipts":
            tally.write_receipts(argument)
            reply("ok")
        elif command in {"pause", "resume", "reset"}:
            getattr(tally, command)()
            reply("ok")
        else:
            reply(f"unknown command {command!r}")
    tally.resume()  # stdin closed: the harness is done; let waiting calls end
    server.stop(grace=1).wait()


def reply(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--mode", choices=("both", "unary"), default="both")
    serve(parser.parse_args().mode)


if __name__ == "__main__":
    main()
