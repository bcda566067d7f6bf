"""``jobworker run --processes N``: N worker processes in one consumer group, supervised.

A gevent worker uses one core. The parent runs no jobs: it starts N children, each the
same CLI (``python -m <this package> run``) in a fresh interpreter, so nothing is forked
after gevent has patched this process, and each child is exactly what ``run`` alone
would be. Each child gets its own ``WORKER_ID`` (``<id>-<n>``), hence its own Kafka client
id, and joins the one consumer group; Kafka shares the partitions among them.

- A child that dies is restarted with backoff (1 s doubling to 30 s, back to 1 s after a
  minute of running), and the parent logs why: exit code or signal. Whatever the code:
  the parent checked the settings before starting any child, so a child's start-up
  failure (Kafka not reachable yet, its metrics port taken meanwhile) may pass, and a
  lasting one shows as a crash loop in the log and in ``/readyz``.
- First SIGTERM/SIGINT: SIGTERM to every child, which finishes its in-flight jobs and
  reports their results; a child still running after ``SHUTDOWN_TIMEOUT`` plus a margin
  is killed. A second signal kills every child at once (Kafka redelivers).
- The parent exits 0 when every child stopped cleanly, 1 when one did not, 128+signal
  after a second signal.

Children run in their own session, so a terminal's Ctrl-C reaches only the parent (a
child would otherwise take the parent's forwarded SIGTERM as a second signal and quit at
once), and each is sent SIGTERM by the kernel should the parent die without cleaning up.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import gevent
import structlog
from gevent import subprocess
from gevent.event import Event

from jobworker.domain.errors import ConfigurationError
from jobworker.entrypoints.settings import Settings
from jobworker.entrypoints.settings.modes import JobSourceKind, ResultSinkKind
from jobworker.entrypoints.unknown_variables import WARNED_BY_PARENT

log = structlog.get_logger("jobworker.supervisor")

EXIT_CLEAN = 0
EXIT_UNCLEAN = 1
# Beyond SHUTDOWN_TIMEOUT: the child's own stop (consumer close, last commit, metrics
# server) takes a little longer than draining its pool.
STOP_MARGIN_S = 10.0
BACKOFF_FIRST_S = 1.0
BACKOFF_MAX_S = 30.0
# A child that ran this long was healthy: its next death starts the backoff again.
STABLE_AFTER_S = 60.0
_PR_SET_PDEATHSIG = 1
_HINTS = {2: "a configuration error: see the child's own line above"}


@dataclass
class WorkerSlot:
    """One of the N places for a child: the child now in it, and what became of the last."""

    index: int
    worker_id: str
    process: subprocess.Popen | None = None
    metrics_port: int | None = None
    restarts: int = 0
    last_exit: str | None = None
    stopped_cleanly: bool = True
    _started_at: float = field(default=0.0, repr=False)

    @property
    def age_s(self) -> float:
        """Seconds since the child now in this place was started."""
        return time.monotonic() - self._started_at

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def send(self, signum: int) -> None:
        if self.running and self.process is not None:
            with contextlib.suppress(ProcessLookupError):
                self.process.send_signal(signum)


def describe_exit(code: int) -> str:
    """``exit code 3`` or ``signal SIGKILL`` (Popen gives -N for death by signal N)."""
    if code < 0:
        try:
            return f"signal {signal.Signals(-code).name}"
        except ValueError:
            return f"signal {-code}"
    return f"exit code {code}"


def child_arguments(argv: Sequence[str]) -> list[str]:
    """The parent's CLI arguments without ``--processes``: each child is one process."""
    args: list[str] = []
    skip = False
    for arg in argv:
        if skip:
            skip = False
        elif arg == "--processes":
            skip = True
        elif not arg.startswith("--processes="):
            args.append(arg)
    return args


class Supervisor:
    """Starts, restarts and stops the children; see the module docstring."""

    def __init__(
        self,
        processes: int,
        argv: Sequence[str],
        worker_id: str,
        client_id: str | None,
        shutdown_timeout_s: float,
        metrics: bool,
        command: Sequence[str] | None = None,
    ) -> None:
        package = __name__.rpartition(".")[0]
        # ``command``: another child program, for tests of the supervision itself.
        self._command = list(command or [sys.executable, "-m", package, *child_arguments(argv)])
        self._client_id = client_id
        self._metrics = metrics
        self._stop_after_s = shutdown_timeout_s + STOP_MARGIN_S
        self.slots = [WorkerSlot(i, f"{worker_id}-{i}") for i in range(processes)]
        self._stopping = Event()
        self._signals = 0
        self._exit_override: int | None = None
        self._preexec = _pdeathsig_setter()

    # -- running -----------------------------------------------------------------------

    def install_signals(self) -> None:
        for signum in (signal.SIGTERM, signal.SIGINT):
            gevent.signal_handler(signum, self._received, signum)

    def run(self) -> int:
        log.info(
            "supervisor starting",
            processes=len(self.slots),
            worker_ids=[slot.worker_id for slot in self.slots],
        )
        keepers = [gevent.spawn(self._keep_running, slot) for slot in self.slots]
        gevent.joinall(keepers)
        status = self._exit_status()
        log.info(
            "supervisor stopped",
            exit_status=status,
            children={slot.worker_id: slot.last_exit for slot in self.slots},
            restarts=sum(slot.restarts for slot in self.slots),
        )
        return status

    def _keep_running(self, slot: WorkerSlot) -> None:
        delay = BACKOFF_FIRST_S
        while not self._stopping.is_set():
            self._start(slot)
            if self._stopping.is_set():
                slot.send(signal.SIGTERM)  # the stop came while it was being started
            assert slot.process is not None
            code = slot.process.wait()
            slot.last_exit = describe_exit(code)
            if self._stopping.is_set():
                # Killed by SIGTERM's default action: it had not yet installed its
                # handlers, so had taken no job either.
                slot.stopped_cleanly = code in (0, -signal.SIGTERM)
                log.info(
                    "worker process stopped",
                    process=slot.index,
                    pid=slot.process.pid,
                    reason=slot.last_exit,
                )
                return
            if time.monotonic() - slot._started_at >= STABLE_AFTER_S:
                delay = BACKOFF_FIRST_S
            slot.restarts += 1
            log.warning(
                "worker process died; restarting it",
                **({"hint": _HINTS[code]} if code in _HINTS else {}),
                process=slot.index,
                pid=slot.process.pid,
                reason=slot.last_exit,
                restart_in_s=delay,
                restarts=slot.restarts,
            )
            self._stopping.wait(delay)
            delay = min(delay * 2, BACKOFF_MAX_S)

    def _start(self, slot: WorkerSlot) -> None:
        env = dict(os.environ)
        env.update(WORKER_PROCESSES="1", WORKER_ID=slot.worker_id, **{WARNED_BY_PARENT: "1"})
        if self._client_id:
            env["KAFKA_CLIENT_ID"] = f"{self._client_id}-{slot.index}"
        if self._metrics:
            # Each child serves its own endpoint on loopback; the parent's merges them.
            slot.metrics_port = _free_loopback_port()
            env.update(METRICS_HOST="127.0.0.1", METRICS_PORT=str(slot.metrics_port))
        else:
            env["METRICS_PORT"] = "0"
        slot.process = subprocess.Popen(
            self._command,
            env=env,
            start_new_session=True,
            preexec_fn=self._preexec,
        )
        slot._started_at = time.monotonic()
        log.info(
            "worker process started",
            process=slot.index,
            pid=slot.process.pid,
            worker_id=slot.worker_id,
            metrics_port=slot.metrics_port,
        )

    # -- stopping ----------------------------------------------------------------------

    def stop(self) -> None:
        """Drain every child: SIGTERM now, SIGKILL to those left after the deadline."""
        if self._stopping.is_set():
            return
        self._stopping.set()
        for slot in self.slots:
            slot.send(signal.SIGTERM)
        gevent.spawn_later(self._stop_after_s, self._kill_left, "did not stop in time")

    def _received(self, signum: int) -> None:
        self._signals += 1
        name = signal.Signals(signum).name
        if self._signals == 1:
            log.info(
                "shutdown requested; draining every worker process",
                signal=name,
                within_s=self._stop_after_s,
            )
            self.stop()
            return
        log.warning(
            "second signal: stopping every worker process now; unfinished jobs will be redelivered",
            signal=name,
        )
        self._exit_override = 128 + signum
        self._stopping.set()
        self._kill_left("second signal")

    def _kill_left(self, why: str) -> None:
        for slot in self.slots:
            if slot.running:
                log.warning("killing worker process", process=slot.index, why=why)
                slot.send(signal.SIGKILL)

    def _exit_status(self) -> int:
        if self._exit_override is not None:
            return self._exit_override
        return EXIT_CLEAN if all(s.stopped_cleanly for s in self.slots) else EXIT_UNCLEAN


def _free_loopback_port() -> int:
    import socket  # noqa: PLC0415 - only with metrics on

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _pdeathsig_setter() -> Callable[[], None] | None:
    """What the child runs between fork and exec: SIGTERM (a graceful stop) when the
    parent dies, so no worker outlives a supervisor killed with SIGKILL. Linux only.

    prctl is looked up here, in the parent: the child only calls it, and so takes no
    loader lock that another thread of the parent (gevent's resolver) may have held at
    the fork."""
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (AttributeError, OSError):
        return None

    def set_pdeathsig() -> None:
        prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)

    return set_pdeathsig


def run_supervisor(settings: Settings, argv: Sequence[str]) -> int:
    """``run`` with ``WORKER_PROCESSES`` > 1: supervise that many children until stopped."""
    if settings.job_source is not JobSourceKind.KAFKA:
        raise ConfigurationError(
            "WORKER_PROCESSES",
            "needs JOB_SOURCE=kafka: with a jobs file every process would run every job",
        )
    if settings.result_sink is not ResultSinkKind.GRPC:
        raise ConfigurationError(
            "WORKER_PROCESSES",
            "needs RESULT_SINK=grpc: processes appending to one results file could"
            " interleave their lines",
        )
    supervisor = Supervisor(
        settings.worker_processes,
        argv,
        worker_id=settings.worker_id,
        client_id=settings.kafka_client_id,
        shutdown_timeout_s=settings.shutdown_timeout,
        metrics=bool(settings.metrics_port),
    )
    supervisor.install_signals()
    server = None
    if settings.metrics_port:
        from jobworker.entrypoints.supervisor_http import start_merged_endpoint  # noqa: PLC0415

        try:
            server = start_merged_endpoint(settings.metrics_host, settings.metrics_port, supervisor)
        except OSError as error:
            raise ConfigurationError(
                "METRICS_PORT", f"cannot listen on {settings.metrics_port}: {error.strerror}"
            ) from None
    try:
        return supervisor.run()
    finally:
        if server is not None:
            server.stop()
