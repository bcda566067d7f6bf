"""The jobworker CLI with a fine-grained hub heartbeat, for what times the hub.

    python -m tests.support.hub_probe --out FILE run       the worker, probed
    python -m tests.support.hub_probe --out FILE --idle    a bare gevent process, probed

The worker's own blocked-hub monitor (``adapters/observability/hub_watch.py``) beats
every 250 ms and logs nothing under 0.5 s: too coarse to tell a 100 ms hold. This does
the same thing finer: a greenlet sleeps ``BEAT_S`` at a time and notes how late it wakes,
which is how long the hub ran something else without turning. Every wake later than
``NOTE_AFTER_S`` is appended to FILE as ``<unix time> <seconds late> <main thread CPU s>
<process CPU s>``, the CPU times spent meanwhile: a hold the main thread spent running
is the hub's own; one it spent without CPU was the GIL held by another thread (process
CPU) or no core to run on (neither). ``--idle`` runs the probe alone: the same figures
for a process that does nothing, the machine's own stalls.
Used by ``tests/faults/test_frozen_broker.py`` and ``bench/frozen_broker.py``.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

BEAT_S = 0.01
NOTE_AFTER_S = 0.02

Hold = tuple[float, float, float]
"""(unix time it ended, seconds the hub was held, seconds of them the main thread ran),
as the probe notes it. The rest of a hold the process waited: for a core, or for the
GIL while another of its threads ran."""


def holds_noted(path: Path, start: float, end: float) -> list[Hold]:
    """The holds noted in ``path`` that ended between ``start`` and ``end`` (unix time)."""
    if not path.exists():
        return []
    noted = (line.split()[:3] for line in path.read_text().splitlines() if line.strip())
    return [
        (float(at), float(held), float(ran)) for at, held, ran in noted if start <= float(at) <= end
    ]


def own_holds(holds: Sequence[Hold], idle: Sequence[Hold]) -> list[float]:
    """Of ``holds``, those an idle probed process beside it did not see too (none at
    least half as long ending as near as the hold is long): not the machine's stalls
    (another process, another user, the hypervisor), which hold every process alike."""
    return [
        held
        for at, held, _ in holds
        if not any(
            abs(at - idle_at) <= held and idle_held >= held / 2 for idle_at, idle_held, _ in idle
        )
    ]


def probe(out_path: str) -> None:
    """Spawn the heartbeat greenlet; it runs until the process ends."""
    import os  # after the caller's patch
    import time

    import gevent

    # Unbuffered: a worker ended by SIGKILL loses nothing, and late wakes are rare.
    fd = os.open(out_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)

    def beat() -> None:
        last, thread_cpu, process_cpu = time.monotonic(), time.thread_time(), time.process_time()
        while True:
            gevent.sleep(BEAT_S)
            now = time.monotonic()
            late_s, last = now - last - BEAT_S, now
            thread_was, process_was = thread_cpu, process_cpu
            thread_cpu, process_cpu = time.thread_time(), time.process_time()
            if late_s > NOTE_AFTER_S:
                spent = f"{thread_cpu - thread_was:.3f} {process_cpu - process_was:.3f}"
                os.write(fd, f"{time.time():.3f} {late_s:.3f} {spent}\n".encode())

    gevent.spawn(beat)


def main(argv: list[str]) -> int:
    from gevent import monkey  # the patch comes first, as in the CLI

    monkey.patch_all()
    if len(argv) < 3 or argv[0] != "--out":
        print("usage: python -m tests.support.hub_probe --out FILE (--idle | <jobworker args>)")
        return 2
    probe(argv[1])
    if argv[2:] == ["--idle"]:
        import gevent

        gevent.wait()  # the heartbeat never ends: until the process is killed
        return 0
    from jobworker.entrypoints.cli import main as jobworker

    return jobworker(argv[2:])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
