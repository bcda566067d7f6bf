"""Makes grpcio (a C-core library) cooperate with gevent in a patched process."""

from __future__ import annotations

import importlib
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import SimpleNamespace
from typing import Any

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


_start_native_thread = monkey.get_original("_thread", "start_new_thread")
_native_lock = monkey.get_original("_thread", "allocate_lock")


class _NativeThread:
    """The part of ``threading.Thread`` grpcio's asyncio poller uses, on a real thread."""

    def __init__(
        self, target: Callable[[], object], name: str | None = None, daemon: bool = True
    ) -> None:
        self.name = name
        self.daemon = daemon
        self._target = target
        self._running = _native_lock()

    def start(self) -> None:
        self._running.acquire()
        _start_native_thread(self._run, ())

    def _run(self) -> None:
        try:
            self._target()
        finally:
            self._running.release()

    def join(self, timeout: float | None = None) -> None:
        if self._running.acquire(timeout=-1 if timeout is None else timeout):
            self._running.release()

    def is_alive(self) -> bool:
        if self._running.acquire(blocking=False):
            self._running.release()
            return False
        return True


@contextmanager
def native_aio_threads() -> Iterator[None]:
    """While open, grpcio's asyncio stack starts its poller on a real thread.

    The first ``grpc.aio`` channel of a process starts a thread that waits on gRPC's
    completion queue and wakes the event loop. grpcio makes it with ``threading.Thread``,
    which after ``patch_all`` is a greenlet of the creating thread's hub: on an asyncio
    loop's thread that hub never runs, and no call would ever complete. Open this around
    the creation of every ``grpc.aio`` channel (a later one may start a new poller), and
    only while nothing else in the process can make a gRPC thread: the sync stack's
    threads must stay greenlets. Harmless in an unpatched process.
    """
    # cygrpc reads ``threading`` from its module globals; grpc-stubs do not know it.
    module: Any = importlib.import_module("grpc._cython.cygrpc")
    patched = module.threading
    module.threading = SimpleNamespace(**{**vars(patched), "Thread": _NativeThread})
    try:
        yield
    finally:
        module.threading = patched
