"""The worker's peak RSS (VmHWM) and rate with each Kafka client, in one run (issue 21).

    python bench/peak_rss.py [--records N] [--pool N] [--sleep-ms N] [--repeats N]
                             [--clients kafka-python,confluent] [--idle]

One topic (6 partitions, records written with a 5 ms linger as bench/vs_go.py does) is
filled with ``--records`` SLEEP jobs; each client in turn reads all of it with a fresh
group, at ``--pool``, reporting to the Go Core of bench/vs_go.py, the worker at its
defaults otherwise (``LOG_LEVEL=info``). Printed per run: jobs/s as vs_go.py counts
them, peak RSS, and the worker's CPU time. The defaults are vs_go.py's SLEEP figure
(pool 1,000, 100 ms jobs). ``--idle``: instead, each client's RSS a few seconds after
start-up on an empty topic (the baseline before any job).

Needs ``KAFKA_BOOTSTRAP_SERVERS`` and the Go Core (tools/build_godesign.sh).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

# `python bench/peak_rss.py` puts bench/ first on sys.path; the project root must be there too.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.e2e_kafka import Topics, fill
from bench.e2e_processes import BenchCore
from bench.e2e_runs import Bench
from bench.vs_go import CLIENTS, GO_BIN, GO_BUILD, LINGER_MS, client_env

MB = 1024 * 1024
IDLE_S = 8  # start-up, the group joined, the first empty polls


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--records", type=int, default=30_000, help="SLEEP records")
    parser.add_argument("--pool", type=int, default=1_000, help="WORKER_POOL_SIZE")
    parser.add_argument("--sleep-ms", type=int, default=100, help="each job's sleep")
    parser.add_argument("--repeats", type=int, default=2, help="runs of each client")
    parser.add_argument("--clients", default=",".join(CLIENTS), help="KAFKA_CLIENT values")
    parser.add_argument("--idle", action="store_true", help="RSS after start-up, no job")
    args = parser.parse_args()
    servers = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
    if not servers:
        print("bench/peak_rss.py needs KAFKA_BOOTSTRAP_SERVERS")
        return 2
    if not (GO_BIN / "core").exists() and os.system(str(GO_BUILD)) != 0:  # noqa: S605
        return 2
    clients = args.clients.split(",")
    topics = Topics(servers, f"bench-rss-{os.getpid()}-{int(time.time())}")
    try:
        with (
            tempfile.TemporaryDirectory(prefix="bench-rss-") as workdir,
            BenchCore("both", (str(GO_BIN / "core"),)) as core,
        ):
            bench = Bench(servers, Path(workdir), "info")
            if args.idle:
                idle(bench, core, topics.create("idle"), clients, args.pool)
                return 0
            topic = topics.create("sleep")
            fill(servers, topic, args.records, sleep_ms=args.sleep_ms, linger_ms=LINGER_MS)
            print(f"{args.records:,} records, SLEEP {args.sleep_ms} ms, pool {args.pool:,}")
            for _ in range(args.repeats):
                for client in clients:
                    run = bench.run(core, topic, args.records, args.pool, **client_env(client))
                    rate = run.results / (run.window_s + args.sleep_ms / 1000)
                    print(
                        f"  {client:<14}{rate:>8,.0f} jobs/s  peak RSS {run.peak_rss / MB:5.1f} MB"
                        f"  worker CPU {run.worker_cpu_s:.1f} s",
                        flush=True,
                    )
    except RuntimeError as failure:
        print(f"FAIL: {failure}")
        return 1
    finally:
        topics.close()
    return 0


def idle(bench: Bench, core: BenchCore, topic: str, clients: list[str], pool: int) -> None:
    print(f"idle on an empty topic, pool {pool:,}, {IDLE_S} s after start")
    for client in clients:
        worker = bench.worker(core, topic, pool, **client_env(client))
        try:
            time.sleep(IDLE_S)
            worker.check_running()
            rss, peak = worker.memory()
            print(f"  {client:<14}RSS {rss / MB:5.1f} MB  peak {peak / MB:5.1f} MB", flush=True)
        finally:
            worker.stop()


if __name__ == "__main__":
    sys.exit(main())
