"""AioLoopThread: coroutines on a native thread's asyncio loop, awaited from greenlets."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator

import gevent
import pytest

from jobworker.adapters.grpc.aio_loop import AioLoopThread, LoopClosedError


@pytest.fixture
def loop_thread() -> Iterator[AioLoopThread]:
    thread = AioLoopThread("test-loop")
    thread.start()
    yield thread
    thread.close()


def test_a_coroutine_runs_on_the_loop_thread_and_its_result_comes_back(
    loop_thread: AioLoopThread,
) -> None:
    async def where() -> tuple[int, bool]:
        await asyncio.sleep(0)
        return threading.get_ident(), asyncio.get_running_loop().is_running()

    ident, running = loop_thread.run(where)

    assert ident != threading.get_ident()
    assert running


def test_what_the_coroutine_raises_is_raised_to_the_caller(loop_thread: AioLoopThread) -> None:
    async def fails() -> None:
        raise KeyError("no such result")

    with pytest.raises(KeyError, match="no such result"):
        loop_thread.run(fails)


def test_greenlets_wait_together_while_the_hub_goes_on(loop_thread: AioLoopThread) -> None:
    # Every coroutine ends only once a greenlet has run while all 50 callers wait: a
    # caller that held the hub would never let it.
    hub_ran = threading.Event()
    waiting = 0

    async def wait_for_the_hub() -> str:
        nonlocal waiting
        waiting += 1
        while not hub_ran.is_set():
            await asyncio.sleep(0.001)
        return "released"

    def watch() -> None:
        while waiting < 50:
            gevent.sleep(0.001)
        hub_ran.set()

    watcher = gevent.spawn(watch)
    callers = [gevent.spawn(loop_thread.run, wait_for_the_hub) for _ in range(50)]
    gevent.joinall([*callers, watcher], timeout=10, raise_error=True)

    assert [caller.value for caller in callers] == ["released"] * 50


def test_killing_a_waiting_greenlet_cancels_its_task(loop_thread: AioLoopThread) -> None:
    cancelled = threading.Event()

    async def forever() -> None:
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            cancelled.set()
            raise

    caller = gevent.spawn(loop_thread.run, forever)
    gevent.sleep(0.05)
    caller.kill(timeout=2)

    assert isinstance(caller.value, gevent.GreenletExit)
    assert cancelled.wait(5)


def test_plain_threads_each_wait_on_their_own_hub(loop_thread: AioLoopThread) -> None:
    async def double(value: int) -> int:
        await asyncio.sleep(0.001)
        return value * 2

    answers: dict[int, int] = {}

    def call(value: int) -> None:
        answers[value] = loop_thread.run(lambda: double(value))

    threads = [threading.Thread(target=call, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=10)

    assert answers == {n: n * 2 for n in range(8)}


def test_close_ends_what_still_runs_and_the_thread_and_refuses_later_calls() -> None:
    loop_thread = AioLoopThread("test-loop")
    loop_thread.start()
    closed: list[str] = []

    async def on_close() -> None:
        closed.append("on the loop")

    waiting = gevent.spawn(loop_thread.run, lambda: asyncio.sleep(60))
    gevent.sleep(0.05)
    loop_thread.close(on_close=on_close)
    waiting.join(timeout=5)

    assert closed == ["on the loop"]
    assert isinstance(waiting.exception, LoopClosedError)
    assert not loop_thread.running
    with pytest.raises(LoopClosedError):
        loop_thread.run(lambda: asyncio.sleep(0))
    loop_thread.close()  # idempotent


def test_what_on_start_raises_is_raised_by_start_and_no_thread_is_left() -> None:
    loop_thread = AioLoopThread("test-loop")

    def broken() -> None:
        raise OSError("no channel")

    with pytest.raises(OSError, match="no channel"):
        loop_thread.start(on_start=broken)
    assert not loop_thread.running
