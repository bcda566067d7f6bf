"""``make bench``: jobworker against the original Go design, in one run (issue 21).

The Go design is bench/godesign (the seed's Go-Worker: a kafka-go Reader in a consumer
group, a goroutine pool, 16 senders of unary ``ReportResult`` calls, commits every
second), built by tools/build_godesign.sh. Both workers read the same records (6
partitions, written by the bench producer with a 5 ms linger) from one broker and
report to the same fast Core, written in Go (bench/godesign/cmd/core). Each figure
alternates Go and jobworker runs and keeps the best of two; each worker is at its
defaults (pool 10, jobworker at ``LOG_LEVEL=info``) unless the figure sets the pool.

    python bench/vs_go.py [--quick] [--repeats N] [--noop N] [--sleep N] [--unary N]
                          [--clients kafka-python,confluent]

Needs ``KAFKA_BOOTSTRAP_SERVERS`` (``make bench`` starts a local broker) and Go. A
jobworker client this build does not accept (``KAFKA_CLIENT``) is reported as not
available, never measured. No figure fails the run; a lost result, a dead or stalled
worker does (exit 1).
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

# `python bench/vs_go.py` puts bench/ first on sys.path; the project root must be there too.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.e2e_kafka import PARTITIONS, Topics, fill
from bench.e2e_processes import ROOT, BenchCore, child_env
from bench.e2e_runs import Bench, WorkerRun

GO_BUILD = ROOT / "tools" / "build_godesign.sh"
GO_BIN = ROOT / ".cache" / "godesign"
GO_MOD = ROOT / "bench" / "godesign" / "go.mod"
CLIENTS = ("kafka-python", "confluent")
LINGER_MS = 5
DEFAULT_POOL = 10  # the seed's WORKER_POOL_SIZE default, and jobworker's
SLEEP_MS = 100
SLEEP_POOL = 1_000
IDEAL_SLEEP_RATE = SLEEP_POOL * 1000 / SLEEP_MS
RSS_TARGET_MB = 100
MB = 1024 * 1024


@dataclass(frozen=True)
class Scale:
    noop: int
    sleep: int
    unary: int  # no-op records for the Core with only ReportResult (jobworker is slow there)


# The runs had 20,000 and 50,000 no-op records and 20,000 and 30,000 sleeping jobs.
FULL = Scale(noop=50_000, sleep=30_000, unary=20_000)
QUICK = Scale(noop=10_000, sleep=10_000, unary=5_000)


@dataclass(frozen=True)
class Figure:
    """One comparison: its records, the Core's mode, the pool, and the issue's target."""

    key: str
    label: str
    count: int
    sleep_ms: int
    core_mode: str  # "both", or "unary": ReportResults answers UNIMPLEMENTED
    pool: int
    targets: dict[str, float]  # client -> least jobworker/Go ratio the issue asks for


@dataclass
class Result:
    go: WorkerRun
    jobworker: WorkerRun


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--quick", action="store_true", help="fewer records (a few seconds each)")
    parser.add_argument("--repeats", type=int, default=2, help="runs of each figure (best kept)")
    parser.add_argument("--noop", type=int, help="no-op records")
    parser.add_argument("--sleep", type=int, help=f"SLEEP {SLEEP_MS} ms records")
    parser.add_argument("--unary", type=int, help="no-op records for the ReportResult-only Core")
    parser.add_argument(
        "--clients",
        default=",".join(CLIENTS),
        help="jobworker Kafka clients to compare, when this build has them (KAFKA_CLIENT)",
    )
    args = parser.parse_args()
    base = QUICK if args.quick else FULL
    scale = Scale(
        noop=args.noop or base.noop, sleep=args.sleep or base.sleep, unary=args.unary or base.unary
    )
    servers = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
    if not servers:
        print("bench/vs_go.py needs KAFKA_BOOTSTRAP_SERVERS (make bench starts a local broker)")
        return 2
    if subprocess.run([GO_BUILD], check=False).returncode != 0:
        return 2
    clients, missing = available_clients(args.clients.split(","), servers)
    print_header(clients, missing, args.repeats)
    topics = Topics(servers, f"bench-vsgo-{os.getpid()}-{int(time.time())}")
    try:
        with tempfile.TemporaryDirectory(prefix="bench-vsgo-") as workdir:
            jobworker = Bench(servers, Path(workdir), "info")
            go = replace(jobworker, worker_argv=(str(GO_BIN / "worker"),))
            for figure in figures(scale):
                results = compare(figure, go, jobworker, topics, clients, args.repeats)
                print_figure(figure, results)
    except RuntimeError as failure:
        print(f"\nFAIL: {failure}")
        return 1
    finally:
        topics.close()
    for client, reason in missing.items():
        print(f"\n{client}: {reason}")
    print_notes()
    return 0


def figures(scale: Scale) -> list[Figure]:
    """The issue's three comparisons, with its targets for each client."""
    return [
        Figure("noop", "no-op", scale.noop, 0, "both", DEFAULT_POOL, dict.fromkeys(CLIENTS, 1.0)),
        Figure(
            "sleep",
            f"SLEEP {SLEEP_MS} ms, pool {SLEEP_POOL:,}",
            scale.sleep,
            SLEEP_MS,
            "both",
            SLEEP_POOL,
            {"kafka-python": 0.85, "confluent": 1.0},
        ),
        Figure(
            "unary",
            "Core with only ReportResult",
            scale.unary,
            0,
            "unary",
            DEFAULT_POOL,
            dict.fromkeys(CLIENTS, 0.5),
        ),
    ]


# -- which jobworker clients this build has --------------------------------------------


def available_clients(wanted: list[str], servers: str) -> tuple[list[str], dict[str, str]]:
    """The clients to measure, and why each other one is not measured."""
    unknown = [c for c in wanted if c not in CLIENTS]
    if unknown:
        raise SystemExit(f"bench/vs_go.py: --clients: unknown {', '.join(unknown)}")
    has_setting = accepts_client("kafka-python", servers)
    clients, missing = [], {}
    for client in wanted:
        if client == "kafka-python":
            clients.append(client)  # the default: there even before KAFKA_CLIENT was
        elif not has_setting or not accepts_client(client, servers):
            missing[client] = "not available in this build (jobworker does not accept KAFKA_CLIENT="
            missing[client] += f"{client})"
        elif importlib.util.find_spec("confluent_kafka") is None:
            missing[client] = "not available in this build (confluent_kafka is not installed)"
        else:
            clients.append(client)
    return clients, missing


def accepts_client(client: str, servers: str) -> bool:
    """Whether ``jobworker settings`` takes ``KAFKA_CLIENT=client`` as a setting in force:
    it exits 2 on a refused value and warns of a variable that is no setting."""
    env = child_env(
        JOB_SOURCE="kafka",
        RESULT_SINK="grpc",
        KAFKA_BROKERS=servers,
        KAFKA_GROUP_ID="bench-vsgo-probe",
        GRPC_SERVER_ADDRESS="127.0.0.1:1",
        KAFKA_CLIENT=client,
    )
    check = subprocess.run(
        [sys.executable, "-m", "jobworker", "settings"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    in_force = re.search(rf"^KAFKA_CLIENT\s+{re.escape(client)}\s", check.stdout, re.MULTILINE)
    complaint = any(
        line.startswith("jobworker:") and re.search(r"\bKAFKA_CLIENT\b", line)
        for line in (check.stdout + check.stderr).splitlines()
    )
    return check.returncode == 0 and in_force is not None and not complaint


# -- the runs ----------------------------------------------------------------------------


def compare(
    figure: Figure,
    go: Bench,
    jobworker: Bench,
    topics: Topics,
    clients: list[str],
    repeats: int,
) -> dict[str, Result]:
    """Go and each client in turn, ``repeats`` times over; the best run of each is kept."""
    topic = topics.create(figure.key)
    fill(go.servers, topic, figure.count, sleep_ms=figure.sleep_ms, linger_ms=LINGER_MS)
    rate = rate_of(figure)
    go_runs: list[WorkerRun] = []
    jobworker_runs: dict[str, list[WorkerRun]] = {client: [] for client in clients}
    with BenchCore(figure.core_mode, (str(GO_BIN / "core"),)) as core:
        for _ in range(repeats):
            go_runs.append(go.run(core, topic, figure.count, figure.pool))
            for client in clients:
                run = jobworker.run(core, topic, figure.count, figure.pool, **client_env(client))
                jobworker_runs[client].append(run)
    best_go = max(go_runs, key=rate)
    return {client: Result(best_go, max(runs, key=rate)) for client, runs in jobworker_runs.items()}


def client_env(client: str) -> dict[str, str]:
    # kafka-python is the default: left unset, so a build without KAFKA_CLIENT runs it too.
    return {} if client == "kafka-python" else {"KAFKA_CLIENT": client}


def rate_of(figure: Figure) -> Callable[[WorkerRun], float]:
    """jobs/s of a run: results over the first result at Core to the last; for sleeping
    jobs, from the first job's start (its sleep before the first result), so that a
    perfect pool of 1,000 makes exactly the ideal 10,000/s."""
    lead_s = figure.sleep_ms / 1000
    return lambda run: run.results / (run.window_s + lead_s)


# -- the report ----------------------------------------------------------------------------


def print_header(clients: list[str], missing: dict[str, str], repeats: int) -> None:
    go = shutil.which("go") or "go"
    go_version = subprocess.run([go, "version"], capture_output=True, text=True, check=False)
    toolchain = go_version.stdout.split()[2:3] or ["go ?"]
    kafka_go = re.search(r"segmentio/kafka-go (\S+)", GO_MOD.read_text())
    print("\njobworker against the original Go design, in one run (bench/vs_go.py)")
    print(
        f"  cpus {os.cpu_count()}, Python {platform.python_version()},"
        f" {toolchain[0]},"
        f" kafka-go {kafka_go.group(1) if kafka_go else '?'}, {platform.platform()}\n"
        f"  one broker, {PARTITIONS} partitions, records written with a {LINGER_MS} ms linger;"
        " one Go Core counting results\n"
        f"  both workers at their defaults (pool {DEFAULT_POOL} unless a figure says),"
        " jobworker at LOG_LEVEL=info;\n"
        f"  runs alternate Go / jobworker ({', '.join(clients)}), best of {repeats} kept"
        + (f"; not measured: {', '.join(missing)}" if missing else "")
    )
    print(
        f"\n{'figure':<30}{'client':<14}{'records':>8}{'Go':>9}{'jobworker':>11}"
        f"{'ratio':>8}  {'target':<9}{'Go RSS':>9}{'jw RSS':>9}"
    )


def print_figure(figure: Figure, results: dict[str, Result]) -> None:
    rate = rate_of(figure)
    for client, result in results.items():
        go_rate, jw_rate = rate(result.go), rate(result.jobworker)
        ratio = jw_rate / go_rate
        target = figure.targets[client]
        print(
            f"{figure.label:<30}{client:<14}{figure.count:>8,}{go_rate:>9,.0f}{jw_rate:>11,.0f}"
            f"{ratio:>7.2f}x  {verdict(ratio >= target, f'>={target:g}x'):<9}"
            f"{result.go.peak_rss / MB:>6.1f} MB{result.jobworker.peak_rss / MB:>6.1f} MB"
        )
        if figure.sleep_ms:
            go_ideal, jw_ideal = go_rate / IDEAL_SLEEP_RATE, jw_rate / IDEAL_SLEEP_RATE
            rss_mb = result.jobworker.peak_rss / MB
            print(
                f"{'':<4}of the ideal {IDEAL_SLEEP_RATE:,.0f}/s: Go {go_ideal:.2f}, jobworker"
                f" {jw_ideal:.2f} (target {verdict(jw_ideal >= 0.9, '>=0.9')});"
                f" jobworker peak RSS {rss_mb:.1f} MB"
                f" (target {verdict(rss_mb <= RSS_TARGET_MB, f'<={RSS_TARGET_MB} MB')})"
            )


def verdict(met: bool, target: str) -> str:
    return target + ("" if met else " !")


def print_notes() -> None:
    print(
        "\n  jobs/s: results over the first result at Core to the last (sleeping jobs: from the"
        f"\n  first job's start, {SLEEP_MS} ms before); ratio = jobworker / Go; target: the issue's"
        "\n  least ratio, '!' where this run falls short; RSS: each worker's peak (VmHWM)."
        "\n  One run on a shared machine: compare ratios, not absolute rates, between runs."
    )


if __name__ == "__main__":
    sys.exit(main())
