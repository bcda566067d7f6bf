"""Makes grpcio (a C-core library) cooperate with gevent in a patched process."""

from __future__ import annotations

import threading

import gevent
from gevent import monkey

# Blocking waits of gRPC share the hub's threadpool with gevent's own users of it (DNS
# resolution, file I/O helpers); these threads are kept free for them.
_THREADPOOL_HEADROOM = 4

_init_lock = threading.Lock()
_initialised = False


def init_grpc_for_gevent(concurrent_calls: int) -> None:
    """Route grpcio's blocking waits through gevent and size the hub threadpool.

    Call it after ``gevent.monkey.patch_all()`` and before the first gRPC channel or
    server exists, from the thread that runs the gevent hub (the main thread). Each
    blocking RPC in flight (client call or server handler) holds a thread of
    ``gevent.get_hub().threadpool`` while it waits; that pool has 10 threads by default,
    and every further call stalls until one is free. ``concurrent_calls`` is the number
    of RPCs the process runs at once; the pool is grown to fit it and never shrunk, so
    calling this again (a server and a client in one process) is safe.

    Raises ``RuntimeError`` when the socket module is not patched: gevent support in
    grpcio then stalls every greenlet on the first blocking RPC.
    """
    global _initialised  # noqa: PLW0603 - grpcio's gevent hook is process-wide by nature
    if concurrent_calls < 1:
        raise ValueError(f"concurrent_calls must be at least 1, got {concurrent_calls}")
    if not monkey.is_module_patched("socket"):
        raise RuntimeError(
            "init_grpc_for_gevent() needs gevent.monkey.patch_all() to have run first"
        )
    with _init_lock:
        if not _initialised:
            # Imported here: grpc must not be imported before the process is patched.
            # grpc-stubs do not know this module.
            from grpc.experimental import gevent as grpc_gevent  # type: ignore[attr-defined]  # noqa: PLC0415

            grpc_gevent.init_gevent()
            _initialised = True
        threadpool = gevent.get_hub().threadpool
        threadpool.maxsize = max(threadpool.maxsize, concurrent_calls + _THREADPOOL_HEADROOM)
