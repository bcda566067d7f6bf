"""What one log line costs, through the logging the worker configures (``configure_logging``).

The worker writes a ``job finished`` line per job at the default ``LOG_LEVEL=info``, so
this cost is part of every job's. Lines go to a file (a pipe or a terminal would add
the reader's speed); each figure is the best of ``--repeats`` runs of ``--lines`` lines.

    .venv/bin/python bench/logcost.py                  # this tree
    .venv/bin/python bench/logcost.py --against HEAD~1 # and another commit, same run

``--against REV`` checks REV out in a temporary git worktree and measures both trees in
turn, in child processes, so the two figures come from the same minutes of the machine.
"""

# ruff: noqa: E402 - gevent patches first, as the worker's entrypoint does; prints are the output
from gevent import monkey

monkey.patch_all()

import argparse
import logging
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FIELDS = {"job_id": "job-123456", "type": "SLEEP", "attempt": 1, "status": "SUCCEEDED"}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lines", type=int, default=200_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--against", metavar="REV", help="also measure this commit")
    parser.add_argument("--tree", type=Path, default=ROOT, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.against:
        return compare(args.against, args.lines, args.repeats)
    sys.path.insert(0, str(args.tree))
    for name, microseconds in measure(args.lines, args.repeats):
        print(f"   {name:<50} {microseconds:6.2f} µs/line")
    return 0


def measure(lines: int, repeats: int) -> list[tuple[str, float]]:
    # Imported here: the tree to measure (``--tree``) is on sys.path only now.
    import structlog  # noqa: PLC0415

    from jobworker.entrypoints.container import Container  # noqa: PLC0415, F401
    from jobworker.entrypoints.logging_setup import (  # noqa: PLC0415
        configure_logging,
        flush_logs,
    )

    def job_line(number: int) -> None:
        jobs.info("job finished", **FIELDS, duration_ms=number)

    def library_line(number: int) -> None:
        library.info("slow %s", number)

    library = logging.getLogger("bench.library")
    cases: list[tuple[str, str, Callable[[int], None]]] = [
        ("'job finished' at info, json", "info", job_line),
        ("the same line filtered out (LOG_LEVEL=warning)", "warning", job_line),
        ("a library's info line (standard-library record)", "info", library_line),
    ]
    results = []
    with tempfile.TemporaryFile("w") as out:
        saved, sys.stderr = sys.stderr, out
        try:
            for name, level, log in cases:
                configure_logging("json", level)
                # Bound after configuring, once, as LoggingJobObserver does.
                jobs = structlog.get_logger("jobworker.jobs").bind()
                best = float("inf")
                for _ in range(repeats):
                    started = time.perf_counter()
                    for number in range(lines):
                        log(number)
                    flush_logs()
                    best = min(best, time.perf_counter() - started)
                results.append((name, best / lines * 1e6))
        finally:
            sys.stderr = saved
    return results


def compare(rev: str, lines: int, repeats: int) -> int:
    with tempfile.TemporaryDirectory() as scratch:
        tree = Path(scratch) / "tree"
        git = ["git", "-C", str(ROOT)]
        subprocess.run([*git, "worktree", "add", "--detach", "-q", str(tree), rev], check=True)
        try:
            for label, where in ((rev, tree), ("this tree", ROOT)):
                print(f"{label}:", flush=True)
                command = [sys.executable, __file__, f"--lines={lines}", f"--repeats={repeats}"]
                subprocess.run([*command, f"--tree={where}"], check=True)
        finally:
            subprocess.run([*git, "worktree", "remove", "--force", str(tree)], check=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
