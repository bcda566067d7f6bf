"""Which executor runs which job type; plugins join through an entry-point group."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping
from importlib.metadata import EntryPoint, entry_points

from jobworker.domain.errors import DuplicateExecutor, JobWorkerError, UnknownJobType
from jobworker.domain.ports import Executor

PLUGIN_GROUP = "jobworker.executors"

logger = logging.getLogger(__name__)


class PluginLoadError(JobWorkerError):
    """A plugin's entry point could not be loaded or did not give an executor."""


class ExecutorRegistry:
    """Maps a job type name to the executor that runs it.

    Adding a job type never touches the engine: register an executor here, or ship a
    package whose ``jobworker.executors`` entry point is named after the type and points
    at a zero-argument callable (usually the executor class) returning an executor.
    """

    def __init__(self, executors: Mapping[str, Executor] | None = None) -> None:
        self._executors: dict[str, Executor] = {}
        for job_type, executor in (executors or {}).items():
            self.register(job_type, executor)

    def register(self, job_type: str, executor: Executor) -> None:
        if not job_type:
            raise ValueError("an executor needs a non-empty job type")
        if job_type in self._executors:
            existing = type(self._executors[job_type]).__name__
            raise DuplicateExecutor(
                f"job type {job_type!r} already has an executor ({existing}); "
                f"refusing to register {type(executor).__name__} over it"
            )
        self._executors[job_type] = executor

    def get(self, job_type: str) -> Executor:
        try:
            return self._executors[job_type]
        except KeyError:
            raise UnknownJobType(job_type) from None

    def job_types(self) -> list[str]:
        return sorted(self._executors)

    def discover_plugins(self, plugins: Iterable[EntryPoint] | None = None) -> list[str]:
        """Register every executor advertised in the ``jobworker.executors`` group.

        Returns the job types added. A broken plugin stops start-up with a
        ``PluginLoadError`` naming it, rather than a worker that silently lacks a type.
        """
        found = entry_points(group=PLUGIN_GROUP) if plugins is None else plugins
        added = []
        for plugin in found:
            factory = _load(plugin)
            try:
                executor = factory()
            except Exception as error:
                raise PluginLoadError(
                    f"executor plugin {plugin.name!r} ({plugin.value}) failed to start: {error}"
                ) from error
            if not callable(getattr(executor, "execute", None)):
                raise PluginLoadError(
                    f"executor plugin {plugin.name!r} ({plugin.value}) gave "
                    f"{type(executor).__name__}, which has no execute(job) method"
                )
            self.register(plugin.name, executor)
            logger.info("executor plugin registered", extra={"job_type": plugin.name})
            added.append(plugin.name)
        return added


def _load(plugin: EntryPoint) -> Callable[[], Executor]:
    try:
        factory = plugin.load()
    except Exception as error:
        raise PluginLoadError(
            f"executor plugin {plugin.name!r} ({plugin.value}) cannot be imported: {error}"
        ) from error
    if not callable(factory):
        raise PluginLoadError(f"executor plugin {plugin.name!r} ({plugin.value}) is not callable")
    return factory  # type: ignore[no-any-return]
