"""The worker CLI with a fine-grained hub heartbeat, for benchmarks that time the hub.

    python -m bench.hub_probe --out FILE run            the worker, probed
    python -m bench.hub_probe --out FILE --idle         a bare gevent process, probed

The worker's own blocked-hub monitor (``adapters/observability/hub_watch.py``) beats
every 250 ms and logs nothing under 0.5 s: too coarse to tell a 100 ms hold. This does
the same thing finer: a greenlet sleeps ``BEAT_S`` at a time and notes how late it wakes,
which is how long the hub ran something else without turning. Every wake later than
``NOTE_AFTER_S`` is appended to FILE as ``<unix time> <seconds late>``. ``--idle`` runs the
probe alone: the same figure for a process that does nothing, the machine's own noise.
"""

from __future__ import annotations

import sys

BEAT_S = 0.01
NOTE_AFTER_S = 0.02


def probe(out_path: str) -> None:
    """Spawn the heartbeat greenlet; it runs until the process ends."""
    import os  # noqa: PLC0415 - after the caller's patch
    import time  # noqa: PLC0415

    import gevent  # noqa: PLC0415

    # Unbuffered: a worker ended by SIGKILL loses nothing, and late wakes are rare.
    fd = os.open(out_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)

    def beat() -> None:
        last = time.monotonic()
        while True:
            gevent.sleep(BEAT_S)
            now = time.monotonic()
            late_s, last = now - last - BEAT_S, now
            if late_s > NOTE_AFTER_S:
                os.write(fd, f"{time.time():.3f} {late_s:.3f}\n".encode())

    gevent.spawn(beat)


def main(argv: list[str]) -> int:
    from gevent import monkey  # noqa: PLC0415 - the patch comes first, as in the CLI

    monkey.patch_all()
    if len(argv) < 2 or argv[0] != "--out":
        print("usage: python -m bench.hub_probe --out FILE (--idle | <jobworker args>)")
        return 2
    probe(argv[1])
    if argv[2:] == ["--idle"]:
        import gevent  # noqa: PLC0415

        gevent.wait()  # the heartbeat never ends: until the process is killed
        return 0
    from jobworker.entrypoints.cli import main as jobworker  # noqa: PLC0415

    return jobworker(argv[2:])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
