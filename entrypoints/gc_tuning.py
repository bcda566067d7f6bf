"""The cyclic garbage collector, tuned for a worker that allocates a little per job.

Measured (bench/e2e.py, 20,000 no-op jobs, default thresholds): six full collections in
the worker's life, 207 ms in all, each pausing the one gevent hub (and every job) for up
to 40 ms. Nearly all the objects a full collection walks were
built at start-up (modules, the container, gRPC and Kafka clients) and live for ever.
"""

from __future__ import annotations

import gc

# Young-generation threshold: collections of the youngest generation are cheap, but at
# 10,000+ jobs/s the default 700 allocations starts one every few jobs.
YOUNG_THRESHOLD = 10_000


def settle_heap() -> None:
    """Call once start-up is done: what exists now is kept out of every later collection.

    ``gc.freeze`` moves every tracked object to a permanent generation the collector never
    scans, so a full collection walks only what the running worker made since. Cycles
    made later are still found and freed; only the start-up objects are never freed, as
    they would not have been anyway.
    """
    gc.collect()
    gc.freeze()
    _, middle, old = gc.get_threshold()
    gc.set_threshold(YOUNG_THRESHOLD, middle, old)
