"""The worker engine: jobs in from a source, through a gevent pool, results out to a sink.

    source.fetch ──▶ jobs queue (bounded) ──▶ pool_size slots ──▶ results queue (bounded)
         ▲                                                              │
         └────────────── source.ack(job) ◀── sink.send(result) ◀────────┘

A job waiting for its next attempt (a retry's backoff) holds no slot: it waits on a timer
of its own and goes back into the jobs queue when the time comes; ``stop`` gives it back
unfinished (not acked, so redelivered) instead of waiting its backoff out.

A job is *done* only once the sink accepted its result; only then is the source told
(``ack``), which is what lets a Kafka source commit offsets safely. Every queue is
bounded, so a slow sink stalls the pool, the jobs queue fills and the engine asks the
source for nothing (``fetch(0, …)``) until the queue drains to its low-water mark.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence

import gevent
from gevent.event import Event
from gevent.lock import Semaphore
from gevent.pool import Group
from gevent.queue import Empty, Queue

from jobworker.application.admission import Admission, AdmissionListener
from jobworker.application.engine_config import EngineConfig, StopReport
from jobworker.application.observers import ObserverGroup
from jobworker.application.registry import ExecutorRegistry
from jobworker.application.result_delivery import ResultCourier, approximate_bytes
from jobworker.application.run_job import JobRun, JobRunner
from jobworker.domain.errors import SourceFailed
from jobworker.domain.model import Job, JobResult
from jobworker.domain.ports import JobObserver, JobSource, RefusedResultStore, ResultSink

logger = logging.getLogger(__name__)

# A pool slot that runs queued jobs back to back yields to the hub after this many.
_TURN_JOBS = 32


class WorkerEngine:
    """Runs jobs from ``source`` and reports them to ``sink``. Lifecycle: start, stop."""

    def __init__(
        self,
        source: JobSource,
        sink: ResultSink,
        registry: ExecutorRegistry,
        config: EngineConfig | None = None,
        observers: Sequence[JobObserver] = (),
        refused_results: RefusedResultStore | None = None,
        admission_listener: AdmissionListener | None = None,
    ) -> None:
        self._source = source
        self._sink = sink
        self._config = config or EngineConfig()
        self._observer = ObserverGroup(observers)
        self._runner = JobRunner(
            registry,
            worker_id=self._config.worker_id,
            max_job_timeout_s=self._config.max_job_timeout_s,
            max_output_bytes=self._config.max_output_bytes,
            retry=self._config.retry,
            observer=self._observer,
            limits=self._config.limits,
        )
        # New jobs, and runs back from waiting for their next attempt.
        self._jobs: Queue[Job | JobRun] = Queue(self._config.jobs_queue_size)
        self._results: Queue[tuple[Job, JobResult]] = Queue(self._config.results_queue_size)
        # Pool slots: greenlets that take jobs from the queue and run them, one at a time,
        # for as long as the engine runs (see _slot).
        self._slots = Group()
        self._waiting_slots: set[gevent.Greenlet[..., object]] = set()  # holding no job
        self._running = 0  # jobs being run now
        # Timers of the jobs waiting for their next attempt, holding no slot.
        self._waiting_runs: dict[gevent.Greenlet[..., object], JobRun] = {}
        # Jobs waiting for a limit or a breaker wait in there, holding no slot either.
        self._admission = Admission(
            self._config.target_limits,
            self._config.breaker,
            wake=lambda run: self._wait(run, 0.0),
            expire=self._expired,
            listener=admission_listener,
        )
        self._given_back_draining = 0  # asked to come back while stop() drained the pool
        self._greenlets: list[gevent.Greenlet[..., object]] = []
        self._intake_stopped = Event()
        self._room_available = Event()
        self._idle = Event()
        self._unreported = 0  # jobs taken from the queue whose result is not yet settled
        self._sending = 0
        self._dispatch_stopped = False
        self._gathering = Semaphore()
        self._courier = ResultCourier(
            sink,
            refused_results,
            self._config.refusals,
            self._observer,
            self._settled,
            max_parked=self._config.results_queue_size,
        )
        self.failed = Event()  # set when the engine cannot go on; ``failure`` says why
        self.failure: BaseException | None = None
        self._started = False
        self._stopped: StopReport | None = None

    # -- lifecycle -------------------------------------------------------------------

    def start(self) -> None:
        if self._started:
            return
        self._started = True
        loops = [self._intake_loop] + [self._send_loop] * self._config.result_senders
        for loop in loops:
            greenlet = gevent.spawn(loop)
            # A loop that dies would stall the worker without a word: fail loudly.
            greenlet.link_exception(self._loop_died)
            self._greenlets.append(greenlet)

    def _loop_died(self, greenlet: gevent.Greenlet[..., object]) -> None:
        self._fail(greenlet.exception or RuntimeError("an engine loop ended"))

    def _fail(self, error: BaseException) -> None:
        if not self.failed.is_set():
            # A SourceFailed is one line saying what to fix, which whoever runs the engine
            # reports (the CLI: as its last line); a traceback before it would bury it.
            if not isinstance(error, SourceFailed):
                logger.critical("engine cannot go on: %s", error, exc_info=error)
            self.failure = error
            self.failed.set()

    def wait_until_drained(self, timeout: float | None = None) -> bool:
        """Block until the source is exhausted and every taken job was reported.

        For finite sources (a file, a test's memory source). Returns False on timeout.
        """
        return bool(self._idle.wait(timeout))

    def stop(self, timeout: float) -> StopReport:
        """Stop intake, let in-flight jobs finish and flush their results.

        Bounded by ``timeout`` seconds in all. Jobs still queued are not started; jobs
        still running at the deadline are interrupted; neither is acked, so a source
        with redelivery (Kafka) hands them out again. Idempotent.
        """
        if self._stopped is not None:
            return self._stopped
        deadline = time.monotonic() + timeout
        self._intake_stopped.set()
        intake, *senders = self._greenlets or [None]
        if intake is not None:
            intake.join(timeout=_left(deadline))
            intake.kill(block=True)
        self._dispatch_stopped = True  # pool slots take no further job
        # Slots waiting for a job hold none: they end now (a job the queue was about to
        # hand one of them stays in the queue, not started).
        gevent.killall(list(self._waiting_slots), block=True)
        # Jobs waiting for their next attempt are given back, their backoff not waited out.
        given_back = len(self._waiting_runs) + len(self._admission.close())
        gevent.killall(list(self._waiting_runs), block=True)
        self._waiting_runs.clear()
        # While the pool drains, the source keeps being polled for nothing: a Kafka
        # source then stays in its group and commits what finishes, so even a second
        # signal mid-drain leaves less to redeliver.
        drained = Event()
        keepalive = gevent.spawn(self._keep_source_alive, drained)
        not_started = self._jobs.qsize()
        self._slots.join(timeout=_left(deadline))
        in_flight = len(self._slots)
        if in_flight:
            logger.warning("shutdown timeout: interrupting running jobs", extra={"jobs": in_flight})
            self._slots.kill(block=True, timeout=1)
        self._courier.stop_waiting()
        self._wait_results_flushed(deadline)
        self._courier.flush(_left(deadline))
        undelivered = self._results.qsize() + self._sending + self._courier.abandoned
        gevent.killall([g for g in senders if g is not None], block=True, timeout=1)
        drained.set()  # let the last poll finish: killing one mid-call could hurt the client
        keepalive.join(timeout=self._config.fetch_timeout_s + 1)
        keepalive.kill(block=True)
        self._stopped = StopReport(
            jobs_abandoned_in_flight=in_flight,
            jobs_not_started=not_started,
            results_not_delivered=undelivered,
            jobs_given_back_waiting=given_back + self._given_back_draining,
        )
        return self._stopped

    # -- greenlets -------------------------------------------------------------------

    def _intake_loop(self) -> None:
        paused = False
        while not self._intake_stopped.is_set():
            depth = self._jobs.qsize()
            if paused and depth <= self._config.low_water:
                paused = False
            room = self._config.jobs_queue_size - depth
            if room <= 0:
                paused = True
            if paused:
                self._wait_for_room()
                continue
            jobs = self._fetch(room, self._config.fetch_timeout_s)
            for job in jobs:
                self._observer.job_received(job)
                self._unreported += 1
                self._idle.clear()
                self._jobs.put(job)
            if jobs:
                self._add_slots()
            if not jobs and self._source.exhausted():
                self._intake_stopped.set()
                self._mark_idle_if_drained()
                return

    def _keep_source_alive(self, drained: Event) -> None:
        while not drained.is_set():
            self._fetch(0, self._config.fetch_timeout_s)

    def _wait_for_room(self) -> None:
        # A no-room fetch keeps the source alive (a Kafka source pauses its partitions
        # and polls, so it stays in its group); then sleep until the dispatcher says the
        # queue is down to its low-water mark, not for a whole fetch timeout.
        self._room_available.clear()
        self._fetch(0, 0.0)
        if self._jobs.qsize() > self._config.low_water:
            self._room_available.wait(self._config.fetch_timeout_s)

    def _fetch(self, room: int, timeout_s: float) -> list[Job]:
        try:
            return list(self._source.fetch(room, timeout_s))
        except SourceFailed as fatal:
            self._intake_stopped.set()
            self._fail(fatal)
            # The keep-alive loop goes on asking while jobs drain: never a spin.
            gevent.sleep(min(1.0, self._config.fetch_timeout_s))
            return []
        except Exception:
            # A source's own errors (broker gone for a moment) must not end intake:
            # log, breathe, and ask again.
            logger.exception("job source failed; retrying")
            gevent.sleep(min(1.0, self._config.fetch_timeout_s))
            return []

    def _add_slots(self) -> None:
        """One more slot per queued job that no waiting slot will take, up to the pool."""
        wanted = min(
            self._jobs.qsize() - len(self._waiting_slots),
            self._config.pool_size - len(self._slots),
        )
        for _ in range(wanted):
            self._slots.spawn(self._slot)

    def _took_job(self) -> None:
        if self._jobs.qsize() <= self._config.low_water:
            self._room_available.set()

    def _slot(self) -> None:
        """A pool slot: runs queued jobs one after another until stop() begins.

        A slot lives on between jobs, waiting on the jobs queue: a greenlet spawned per
        job cost more than a short job itself (docs/benchmarks.md, "Costs quoted by the
        code"), and slots that ended whenever the queue ran dry between fetches spawned
        nearly that many.
        A slot waiting for a job holds none, so stop() ends the waiting ones at once and
        the others after their job; none takes a job once stop() began.
        """
        me = gevent.getcurrent()
        in_a_row = 0
        while not self._dispatch_stopped:
            if self._jobs.qsize():
                in_a_row += 1
                if in_a_row % _TURN_JOBS == 0:
                    # Jobs that never yield must not keep intake and the senders waiting.
                    gevent.sleep(0)
                    continue  # stop() may have begun meanwhile, another slot taken the job
                job = self._jobs.get_nowait()
            else:
                self._waiting_slots.add(me)
                try:
                    job = self._jobs.get()
                finally:
                    self._waiting_slots.discard(me)
                in_a_row = 0
            self._took_job()
            self._running += 1
            try:
                self._run_attempt(job)
            finally:
                self._running -= 1

    def _run_attempt(self, item: Job | JobRun) -> None:
        """Begin ``item`` (a new job) or go on with it (a run back from waiting): its
        result goes to the senders; a retry waits off the slot (``_wait``)."""
        run = item if isinstance(item, JobRun) else self._runner.begin(item)
        if isinstance(run, JobResult):
            self._finish(item if isinstance(item, Job) else item.job, run)
            return
        if not self._admission.admit(run):
            return  # parked until a limit or breaker lets it, or its deadline
        attempts = run.attempt
        try:
            outcome = self._runner.attempt(run)
        except BaseException:
            # Killed (stop() at its deadline): no verdict on the target.
            self._admission.release(run, used=False)
            raise
        # An attempt that found its deadline passed called nothing: it tells a breaker
        # nothing (a probe's would close it) and spends no token.
        self._admission.release(run, used=run.attempt > attempts)
        if isinstance(outcome, JobResult):
            self._finish(run.job, outcome)
        else:
            self._wait(run, outcome)

    def _finish(self, job: Job, result: JobResult) -> None:
        self._observer.job_finished(job, result)
        self._results.put((job, result))

    def _expired(self, run: JobRun, waiting_for: str) -> None:
        # From a timer of admission's, which must not block: the result may have to
        # wait for room in the results queue.
        gevent.spawn(self._finish, run.job, self._runner.timed_out(run, waiting_for))

    def _wait(self, run: JobRun, delay_s: float) -> None:
        if self._dispatch_stopped:
            # stop() already ended the timers and no slot would take it back: given back
            # now, not left on a timer that outlives the engine.
            self._given_back_draining += 1
            return
        timer = gevent.spawn_later(delay_s, self._resume, run)
        self._waiting_runs[timer] = run

    def _resume(self, run: JobRun) -> None:
        # Back into the jobs queue, behind what it holds (at most ``jobs_queue_size``):
        # the queue may be full, and what waits here is bounded by the source's window.
        self._jobs.put(run)
        self._waiting_runs.pop(gevent.getcurrent(), None)
        self._add_slots()

    def _send_loop(self) -> None:
        while True:
            batch: list[tuple[Job, JobResult]] = []
            handed_over = False
            try:
                # One sender gathers at a time, the others meanwhile send: at part load,
                # senders gathering side by side would share the results between them and
                # send several part-filled batches per linger, each call costing the hub
                # as much CPU as a full one.
                with self._gathering:
                    self._fill_batch(batch)
                handed_over = True
                # Returns once every result is settled, or parked off this sender.
                self._courier.deliver_batch(batch)
            except BaseException:
                if not handed_over:  # killed while gathering: these stay not done
                    for job, _ in batch:
                        self._settled(job, kept=False)
                raise
            finally:
                self._sending -= len(batch)

    def _fill_batch(self, batch: list[tuple[Job, JobResult]]) -> None:
        """Gather the next results to send: wait for one, then take more while they come.

        Up to ``result_batch_size`` results and about ``result_batch_max_bytes``, waiting
        at most ``result_batch_linger_s`` for more: under load batches fill at once,
        and a lone result waits no longer than the linger. Each result taken counts as
        being sent at once, so a stop never mistakes a gathering sender for an idle one.
        """
        config = self._config
        self._take_result(batch, self._results.get())
        # A sink that takes one result at a time gets them without waiting for more.
        most = config.result_batch_size if self._courier.takes_batches else 1
        size = approximate_bytes(batch[0][1])
        deadline = time.monotonic() + config.result_batch_linger_s
        while len(batch) < most and size < config.result_batch_max_bytes:
            try:
                item = self._results.get_nowait()
            except Empty:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                try:
                    item = self._results.get(timeout=left)
                except Empty:
                    break
            self._take_result(batch, item)
            size += approximate_bytes(item[1])

    def _take_result(self, batch: list[tuple[Job, JobResult]], item: tuple[Job, JobResult]) -> None:
        batch.append(item)
        self._sending += 1

    def _settled(self, job: Job, kept: bool) -> None:
        if kept:
            self._ack(job)
        self._unreported -= 1
        self._mark_idle_if_drained()

    def _ack(self, job: Job) -> None:
        try:
            self._source.ack(job)
        except Exception:
            logger.exception("job source failed to ack", extra={"job_id": job.id})

    def _mark_idle_if_drained(self) -> None:
        if self._intake_stopped.is_set() and self._unreported == 0:
            self._idle.set()

    def _wait_results_flushed(self, deadline: float) -> None:
        while (self._results.qsize() or self._sending) and time.monotonic() < deadline:
            gevent.sleep(0.01)

    # -- introspection (metrics, readiness, tests) ------------------------------------

    @property
    def taking_jobs(self) -> bool:
        """True once started until intake stops: ``stop()``, a failure, a finished source."""
        return self._started and not self._intake_stopped.is_set()

    @property
    def jobs_queue_depth(self) -> int:
        return int(self._jobs.qsize())

    @property
    def results_queue_depth(self) -> int:
        return int(self._results.qsize())

    @property
    def jobs_in_flight(self) -> int:
        return self._running

    @property
    def jobs_waiting_to_retry(self) -> int:
        """Jobs waiting for their next attempt, holding no slot."""
        return len(self._waiting_runs)

    @property
    def breaker_states(self) -> dict[str, str]:
        """Each HTTP host's circuit breaker state, by target (see ``Admission``)."""
        return self._admission.breaker_states()

    @property
    def limit_states(self) -> dict[str, dict[str, int]]:
        """Each ``LIMITS`` entry's attempts running and runs waiting (see ``Admission``)."""
        return self._admission.limit_states()

    @property
    def results_refused(self) -> int:
        """Final refusals from the sink so far, each counted (a result may have several)."""
        return self._courier.refusals

    @property
    def results_dead_lettered(self) -> int:
        """Refused results kept by the refused-result store, their jobs acked."""
        return self._courier.dead_lettered

    @property
    def results_waiting_to_retry(self) -> int:
        """Results off the senders, waiting to be offered (or stored) again."""
        return self._courier.parked


def _left(deadline: float) -> float:
    return max(0.0, deadline - time.monotonic())
