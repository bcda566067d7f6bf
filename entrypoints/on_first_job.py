"""Executors built when their first job comes, not at start-up.

The HTTP executor needs requests and urllib3, the IMAGE_RESIZE executor Pillow: together
about 7 MB of resident memory in every worker process, and most workers run only some
job types (a SLEEP-only worker, none of them). So the composition root registers these
two wrapped in ``BuiltOnFirstJob``, and their modules are imported by the builder
functions below, not at the top of container.py. Their settings are still checked at
start-up: the container builds the checked values (folders, limits) before the wrapper.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING

from gevent.threadpool import ThreadPool

from jobworker.domain.model import Job
from jobworker.domain.ports import Executor

if TYPE_CHECKING:
    from jobworker.adapters.executors.safe_http import SafeHttpClient


class BuiltOnFirstJob:
    """An executor that ``build`` makes at the first ``execute``, then runs every job.

    The first job of the type pays the import (tens of milliseconds, once, on the hub).
    No lock: building imports and constructs without any gevent switch, so no other
    greenlet can see a half-made executor, and the builders are Singleton providers, so
    a second build would return the same executor anyway.
    """

    def __init__(self, build: Callable[[], Executor]) -> None:
        self._build = build
        self._executor: Executor | None = None

    def execute(self, job: Job) -> str:
        if self._executor is None:
            self._executor = self._build()
        return self._executor.execute(job)

    def targets(self, job: Job) -> Iterable[str]:
        """The built executor's targets for ``job`` (none if it names none): admission
        looks them up to apply LIMITS and the circuit breakers per host, so the wrapper
        must not hide them."""
        targets: Callable[[Job], Iterable[str]] | None = getattr(self.built(), "targets", None)
        return () if targets is None else targets(job)

    def built(self) -> Executor:
        """The executor itself, built now if no job has come yet."""
        if self._executor is None:
            self._executor = self._build()
        return self._executor


def on_first_job(build: Callable[[], Executor], *checked_now: object) -> BuiltOnFirstJob:
    """``build``'s executor, made at its first job. ``checked_now``: the values its
    settings give (folders, a client's limits), which the container computes (and so
    checks) at start-up so that a wrong setting still stops the worker there."""
    del checked_now
    return BuiltOnFirstJob(build)


def http_client(pool_size: int, allow_private_networks: bool, max_redirects: int) -> SafeHttpClient:
    from jobworker.adapters.executors.safe_http import (  # noqa: PLC0415 - see the module docstring
        SafeHttpClient,
    )

    return SafeHttpClient(
        pool_size=pool_size,
        allow_private_networks=allow_private_networks,
        max_redirects=max_redirects,
    )


def http_executor(
    client: SafeHttpClient,
    max_response_bytes: int,
    default_timeout_s: float,
    idempotency_header: str,
) -> Executor:
    from jobworker.adapters.executors.http import (  # noqa: PLC0415 - see the module docstring
        HttpExecutor,
    )

    return HttpExecutor(
        client,
        max_response_bytes=max_response_bytes,
        default_timeout_s=default_timeout_s,
        idempotency_header=idempotency_header,
    )


def image_resize_executor(
    input_root: Path,
    output_root: Path,
    threadpool: ThreadPool,
    http_client: SafeHttpClient,
    max_source_bytes: int,
    max_pixels: int,
    fetch_timeout_s: float,
) -> Executor:
    from jobworker.adapters.executors.image_resize import (  # noqa: PLC0415 - see the module docstring
        ImageResizeExecutor,
    )

    return ImageResizeExecutor(
        input_root=input_root,
        output_root=output_root,
        threadpool=threadpool,
        http_client=http_client,
        max_source_bytes=max_source_bytes,
        max_pixels=max_pixels,
        fetch_timeout_s=fetch_timeout_s,
    )
