"""An asyncio event loop on one native thread, its coroutines awaited from greenlets.

grpcio's blocking stub, in a gevent process, hands every call to a thread of the hub's
threadpool and back (``init_grpc_for_gevent``): two thread switches and a completion
queue per call. grpcio's asyncio client instead keeps any number of calls in flight on
one event loop. That loop runs here, on a real thread (not a greenlet: after
``patch_all`` the ``threading`` module would give one), so the hub never waits for it
and it never waits for the hub.

Calls cross between the two threads in batches: greenlets append to a queue and the
loop is woken once per batch (``call_soon_threadsafe``); finished calls go back to
their hub's inbox, which the loop thread wakes with a libev async watcher (gevent's one
thread-safe wake-up; its sends coalesce while one is pending). gevent's events and
``AsyncResult`` are not safe across threads, so nothing else is shared.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import time
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any, Generic, TypeVar

import gevent
from gevent import monkey
from gevent.hub import Hub, Waiter

T = TypeVar("T")

# The thread, its start-up handshake and its selector must be the real ones: after
# patch_all the thread would be a greenlet (running only while the hub lets it), the lock
# a hub wait, and the default selector gevent's (which would wait on this thread's hub).
_start_native_thread = monkey.get_original("_thread", "start_new_thread")
_native_lock = monkey.get_original("_thread", "allocate_lock")
_NativeSelector = monkey.get_original("selectors", "DefaultSelector")

_START_TIMEOUT_S = 10.0
_EXIT_POLL_S = 0.005


class LoopClosedError(RuntimeError):
    """The loop thread is closed (or closing): the coroutine was not run to its end."""


class _Pending(Generic[T]):
    """One coroutine on its way to the loop and its outcome on its way back."""

    __slots__ = ("abandoned", "context", "error", "inbox", "make", "task", "value", "waiter")

    def __init__(self, make: Callable[[], Awaitable[T]], inbox: _Inbox) -> None:
        self.make = make
        self.inbox = inbox
        # The caller's context (its current span, for tracing interceptors) is the task's.
        self.context = contextvars.copy_context()
        self.waiter: Waiter[Any] = Waiter(inbox.hub)
        self.value: T | None = None
        self.error: BaseException | None = None
        self.task: asyncio.Task[T] | None = None
        self.abandoned = False


class _Inbox:
    """Finished calls for the greenlets of one hub, and the watcher that wakes it.

    Touched by the loop thread only through ``post``; everything else runs on the hub's
    own thread. The watcher holds the hub's loop alive only while calls are out.
    """

    def __init__(self, hub: Hub) -> None:
        self.hub = hub
        self._finished: deque[_Pending[Any]] = deque()
        self._out = 0
        self._closed = False
        self._watcher = hub.loop.async_()
        self._watcher.start(self._deliver)
        self._watcher.ref = False

    def sent(self) -> None:
        self._out += 1
        if self._out == 1:
            self._watcher.ref = True

    def post(self, pending: _Pending[Any]) -> None:
        """From the loop thread: hand ``pending`` back and wake the hub."""
        self._finished.append(pending)
        self._watcher.send()

    def _deliver(self) -> None:
        while self._finished:
            pending = self._finished.popleft()
            self._out -= 1
            if not pending.abandoned:
                pending.waiter.switch(None)
        if self._out == 0 and not self._closed:
            self._watcher.ref = False

    def close(self) -> None:
        """On the hub: deliver what is left, then stop the watcher."""
        self._deliver()
        self._closed = True
        self._watcher.stop()
        self._watcher.close()


class AioLoopThread:
    """A native thread running an asyncio loop; ``run`` awaits a coroutine on it.

    ``start`` makes the thread and waits (natively, a few milliseconds) until the loop
    runs; ``on_start``, when given, runs on the loop first, while the caller still
    waits. ``run`` waits cooperatively: other greenlets go on meanwhile, and a kill of
    the waiting greenlet cancels the coroutine's task. ``close`` cancels what is still
    running, runs ``on_close`` on the loop, ends the thread and waits for it. Usable
    from any thread that has a gevent hub (every thread, in a patched process).
    """

    def __init__(self, name: str) -> None:
        self._name = name
        self._loop: asyncio.AbstractEventLoop | None = None
        self._submitted: deque[_Pending[Any]] = deque()
        self._drain_scheduled = False
        self._inboxes: dict[Hub, _Inbox] = {}
        self._inboxes_lock = _native_lock()
        self._exited = _native_lock()
        self._closed = False
        self._loop_gone = False

    def start(self, on_start: Callable[[], None] | None = None) -> None:
        """Start the thread and its loop; ``on_start`` runs on it before this returns.

        Raises ``RuntimeError`` when the loop does not run within 10 s, and what
        ``on_start`` raised (the thread is then gone).
        """
        if self._loop is not None:
            raise RuntimeError(f"{self._name} is already started")
        ready = _native_lock()
        ready.acquire()
        failure: list[BaseException] = []

        def main() -> None:
            self._exited.acquire()
            try:
                loop = asyncio.SelectorEventLoop(_NativeSelector())
                asyncio.set_event_loop(loop)
                try:
                    if on_start is not None:
                        on_start()
                except BaseException as error:
                    failure.append(error)
                    ready.release()
                    loop.close()
                    return
                self._loop = loop
                ready.release()
                loop.run_forever()
                _cancel_all(loop)
                loop.close()
            finally:
                self._loop_gone = True
                self._sweep()
                self._exited.release()

        _start_native_thread(main, ())
        if not ready.acquire(timeout=_START_TIMEOUT_S):
            raise RuntimeError(f"{self._name}: the event loop did not start")
        if failure:
            raise failure[0]

    def run(self, make: Callable[[], Awaitable[T]]) -> T:
        """Run ``make()`` on the loop; its result, or what it raised, once it ends.

        Raises ``LoopClosedError`` when the loop is closed or closes first; a kill of the
        waiting greenlet raises here as usual and cancels the task.
        """
        loop = self._loop
        if loop is None or self._closed:
            raise LoopClosedError(f"{self._name} is closed")
        inbox = self._inbox()
        pending: _Pending[T] = _Pending(make, inbox)
        inbox.sent()
        self._submitted.append(pending)
        if not self._drain_scheduled:
            self._drain_scheduled = True
            with contextlib.suppress(RuntimeError):  # closed: the sweep below hands it back
                loop.call_soon_threadsafe(self._drain)
        if self._loop_gone:
            self._sweep()  # the loop ended meanwhile: nothing else would hand it back
        try:
            pending.waiter.get()
        except BaseException:
            pending.abandoned = True
            task = pending.task
            if task is not None:
                with contextlib.suppress(RuntimeError):
                    loop.call_soon_threadsafe(task.cancel)
            raise
        if pending.error is not None:
            raise pending.error
        return pending.value  # type: ignore[return-value]  # set when there is no error

    def close(
        self, timeout_s: float = 5.0, on_close: Callable[[], Awaitable[None]] | None = None
    ) -> None:
        """Run ``on_close`` on the loop, cancel what still runs there and end the thread.

        Waits cooperatively, up to ``timeout_s`` for the thread to end. Idempotent.
        """
        loop = self._loop
        if loop is None or self._closed:
            self._closed = True
            return
        if on_close is not None:
            with contextlib.suppress(Exception):  # closing goes on whatever it raised
                self.run(on_close)
        self._closed = True
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(loop.stop)
        deadline = time.monotonic() + timeout_s
        while not self._exited.acquire(blocking=False):
            if time.monotonic() > deadline:
                break
            gevent.sleep(_EXIT_POLL_S)
        else:
            self._exited.release()
        hub = gevent.get_hub()
        with self._inboxes_lock:
            inbox = self._inboxes.pop(hub, None)
        if inbox is not None:
            # From the hub: it first hands back what the loop posted last.
            hub.loop.run_callback(inbox.close)

    @property
    def running(self) -> bool:
        """True from ``start`` until the thread has ended."""
        return self._loop is not None and not self._loop_gone

    def _inbox(self) -> _Inbox:
        hub = gevent.get_hub()
        inbox = self._inboxes.get(hub)
        if inbox is None:
            with self._inboxes_lock:
                inbox = self._inboxes.setdefault(hub, _Inbox(hub))
        return inbox

    def _sweep(self) -> None:
        """Hand back, as not run, what was submitted after the loop's last drain."""
        while self._submitted:
            try:
                pending = self._submitted.popleft()
            except IndexError:  # another thread swept it meanwhile
                return
            pending.error = LoopClosedError(f"{self._name} is closed")
            pending.inbox.post(pending)

    # -- on the loop thread -------------------------------------------------------------

    def _drain(self) -> None:
        # Reset before draining: a submission after the last pop schedules another drain.
        self._drain_scheduled = False
        loop = self._loop
        assert loop is not None
        while self._submitted:
            pending = self._submitted.popleft()
            if pending.abandoned:  # its greenlet was killed before the loop saw it
                pending.inbox.post(pending)
                continue
            pending.task = loop.create_task(self._await(pending), context=pending.context)

    async def _await(self, pending: _Pending[Any]) -> None:
        try:
            pending.value = await pending.make()
        except asyncio.CancelledError:
            pending.error = LoopClosedError(f"{self._name}: cancelled before it ended")
        except BaseException as error:  # handed to the waiting greenlet
            pending.error = error
        finally:
            pending.inbox.post(pending)


def _cancel_all(loop: asyncio.AbstractEventLoop) -> None:
    """Cancel the tasks still running and let them hand their outcome back."""
    tasks = asyncio.all_tasks(loop)
    for task in tasks:
        task.cancel()
    if tasks:
        loop.run_until_complete(asyncio.gather(*tasks, return_exceptions=True))
    loop.run_until_complete(loop.shutdown_asyncgens())
