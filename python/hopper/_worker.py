"""The worker: claims jobs in batches, runs handlers, reports outcomes in batches,
heartbeats, rescues jobs of dead workers and honours cancellation."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import os
import random
import signal
import socket
import threading
import uuid
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any, TypeVar

import psycopg

from hopper._db import Database
from hopper._notifier import listen
from hopper._options import as_list
from hopper._records import Job
from hopper._tasks import (
    Completed,
    Failed,
    JobContext,
    Report,
    Task,
    TaskRegistry,
    log_failure,
    run_handler,
)

logger = logging.getLogger("hopper.worker")
ReportT = TypeVar("ReportT", bound=Report)
ResultT = TypeVar("ResultT")

RECONNECT_DELAYS = (0.1, 0.2, 0.5, 1.0, 2.0, 5.0)
# A worker that runs dry polls again after this, doubling up to poll_interval:
# a job added in a transaction that began before the worker's short claim
# made it "waiting" sends no NOTIFY (see _notify_jobs).
FIRST_IDLE_POLL = 0.05
# finished jobs a worker deletes per call when it applies the retention settings
PRUNE_BATCH = 10_000
CANCELLED_BY_REQUEST = "cancelled by request"
# The most connections handlers' job transactions hold at once, unless told: a
# worker of concurrency 500 must not take a server's max_connections (100 by
# default) from everyone else. A handler beyond it waits for one.
DEFAULT_JOB_CONNECTIONS = 10
# Seconds a stopping worker gives its last reports and its unregistering.
SETTLE_TIMEOUT = 10.0
# Seconds a stopping worker waits for a cancelled handler (or helper) to end.
CANCEL_PATIENCE = 5.0
# A heartbeat this many seconds late means something held the event loop.
LATE_LOOP_WARNING = 1.0
# Wakes this long after a firing, so that the database's now() has passed it.
FIRING_MARGIN = 0.005


# graphile-worker's forbiddenFlags: a fixed list, or a callable asked before each claim
ForbiddenFlags = Sequence[str] | Callable[[], Sequence[str] | Awaitable[Sequence[str]] | None]


def _flags(flags: object, source: str) -> list[str] | None:
    """flags as get_jobs takes them (None for none); a str, which would be taken for
    a list of one-letter flags, or a blank flag raises."""
    if flags is None:
        return None
    checked = as_list(flags, source, "flags")
    if not all(isinstance(flag, str) and flag.strip() for flag in checked):
        raise ValueError(f"{source} must hold non-blank strings (got {checked!r})")
    return checked or None


def new_worker_id() -> str:
    """Unique per process start, so a restarted worker never inherits an identity."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


@dataclass
class _Running:
    job: Job
    task: asyncio.Task[None]
    context: JobContext
    cancel_requested: bool = False


class Worker:
    """Runs the handlers of ``tasks`` for jobs of the database at ``dsn_or_conn``.

    ``run()`` processes jobs until ``stop()``; ``run_once()`` processes every job
    due now and returns how many it ran. ``worker_id`` (by default
    ``host:pid:random``) is the lock owner of the jobs it claims. An id that
    unregistered, or whose jobs were rescued, is retired and refused (55000), so a
    fixed one serves a single run. ``forbidden_flags`` (graphile-worker's
    forbiddenFlags): no claimed job carries any of them; a list, or a callable
    (sync or async) asked before each claim.
    """

    def __init__(
        self,
        dsn_or_conn: str | psycopg.Connection | psycopg.AsyncConnection,
        tasks: TaskRegistry,
        *,
        concurrency: int = 8,
        poll_interval: float = 2.0,
        listen: bool = True,
        grace_period: float = 10.0,
        heartbeat_interval: float = 5.0,
        stale_after: float = 30.0,
        schedule_interval: float = 60.0,
        schema: str = "hopper",
        worker_id: str | None = None,
        job_connections: int | None = None,
        prune_interval: float | None = 60.0,
        forbidden_flags: ForbiddenFlags | None = None,
    ) -> None:
        if not tasks.tasks:
            # a worker that knows no task claims nothing, silently: most often the
            # module whose @tasks.task handlers fill the registry was never imported
            raise ValueError("tasks holds no task: register handlers with @tasks.task(...)")
        if concurrency < 1:
            raise ValueError(f"concurrency must be at least 1 (got {concurrency})")
        if job_connections is None:
            job_connections = min(concurrency, DEFAULT_JOB_CONNECTIONS)
        if job_connections < 1:
            raise ValueError(f"job_connections must be at least 1 (got {job_connections})")
        # zero would make its loop call the database without pause (NaN too)
        for name, seconds in (
            ("poll_interval", poll_interval),
            ("heartbeat_interval", heartbeat_interval),
            ("schedule_interval", schedule_interval),
        ):
            if not seconds > 0:
                raise ValueError(f"{name} must be more than 0 seconds (got {seconds})")
        if prune_interval is not None and not prune_interval > 0:
            raise ValueError(
                f"prune_interval must be more than 0 seconds, or None (got {prune_interval})"
            )
        if not grace_period >= 0:
            raise ValueError(f"grace_period must not be negative (got {grace_period})")
        if stale_after <= heartbeat_interval:
            raise ValueError("stale_after must be longer than heartbeat_interval")
        self.tasks = tasks
        self.forbidden_flags = forbidden_flags
        self._fixed_flags = (
            None if callable(forbidden_flags) else _flags(forbidden_flags, "forbidden_flags")
        )
        self.concurrency = concurrency
        self.poll_interval = poll_interval
        self.grace_period = grace_period
        self.heartbeat_interval = heartbeat_interval
        self.stale_after = stale_after
        self.schedule_interval = schedule_interval
        self.prune_interval = prune_interval
        self._firings_readable = True
        self._schedules_changed = asyncio.Event()
        self.worker_id = worker_id or new_worker_id()
        # a worker that may not listen sits behind a pooler in transaction mode
        self.db = Database(
            dsn_or_conn, schema, pool_size=3, job_pool_size=job_connections, prepare=listen
        )
        self._transactions = self.db.job_transaction if self.db.dsn else None
        self._loop: asyncio.AbstractEventLoop | None = None
        self.listen = listen and self.db.dsn is not None
        self._running: dict[int, _Running] = {}
        self._outcomes: list[Report] = []
        self._progress: dict[int, int] = {}
        self._wake = asyncio.Event()
        # set while worker_id is registered: claims and heartbeats wait for it, so
        # no job is locked by an id that rescue_stale_jobs cannot see
        self._registered = asyncio.Event()
        # the tasks of the jobs running at the last heartbeat or started since (see
        # _warn_if_late)
        self._tasks_started: set[str] = set()
        self._reported = asyncio.Event()
        self._stopping = False
        self._stop_now = False
        self._helper_error: BaseException | None = None
        # the most jobs one call may carry; lowered when the database's max_batch_size
        # refuses a call (a concurrency above it)
        self._batch_limit = concurrency
        self._sending: list[Report] = []  # the outcomes of the report in flight
        # jobs whose completion failed on the way: it may have committed all the same
        self._maybe_reported: set[int] = set()
        self._unknown_releasable = True
        self._opening: asyncio.Task[None] | None = None
        self._claiming: asyncio.Task[None] | None = None
        self._settling: asyncio.Task[None] | None = None
        # our last claim came up short, so the database counts us waiting and
        # notifies us of whatever becomes claimable
        self._notified_when_claimable = False
        # the last claim was cut short by outcomes not yet reported (_free_slots)
        self._held_back = False

    # --- control --------------------------------------------------------------

    def stop(self, immediately: bool = False) -> None:
        """Stop claiming; let running jobs finish within the grace period (or not)."""
        self._stop_now = self._stop_now or immediately or self._stopping
        self._stopping = True
        self._wake.set()
        if self._opening is not None:
            self._opening.cancel()  # a no-op once open
        if self._claiming is not None:
            self._claiming.cancel()
        if self._stop_now and self._settling is not None:
            self._settling.cancel()

    async def run(self) -> None:
        self._loop = asyncio.get_running_loop()
        if not await self._start_up():
            logger.info("worker %s stopped before it could register", self.worker_id)
            return
        helpers = [
            asyncio.create_task(self._report_forever(), name="reporting"),
            asyncio.create_task(self._heartbeat_forever(), name="heartbeat"),
            asyncio.create_task(self._enqueue_schedules_forever(), name="schedules"),
        ]
        if self.prune_interval is not None:
            helpers.append(asyncio.create_task(self._prune_forever(), name="pruning"))
        if self.listen and self.db.dsn:
            helpers.append(
                asyncio.create_task(
                    listen(
                        self.db.dsn,
                        self.db.schema,
                        self._wake,
                        self._cancel_requested,
                        self._schedules_changed,
                    ),
                    name="listener",
                )
            )
        for helper in helpers:
            helper.add_done_callback(self._helper_ended)
        logger.info("worker %s started (concurrency %s)", self.worker_id, self.concurrency)
        # a task of its own, so that stop() can end a claim that waits for the
        # database (a job it claimed unseen is given back by unregister_worker)
        self._claiming = asyncio.create_task(self._claim_until_stopped(), name="claiming")
        try:
            await asyncio.wait({self._claiming})
            if not self._claiming.cancelled():
                self._claiming.result()  # its error, if any, is run()'s
            await self._drain()
        finally:
            self._claiming.cancel()
            stuck = await cancel_and_wait(helpers)
            if stuck:
                logger.error("helpers did not stop: %s", [h.get_name() for h in stuck])
            await self._settle_up()
            await self.db.close()
            logger.info("worker %s stopped", self.worker_id)
        if self._helper_error is not None:
            raise self._helper_error

    async def _start_up(self) -> bool:
        """Opens the pool (waiting up to 30 s for a first connection) and registers;
        False when stop() came first. Whatever ends it early closes the pool, which
        would otherwise go on connecting in the background."""
        self._opening = asyncio.create_task(self.db.open(), name="opening")
        try:
            await self._opening
            registered = await self._register()
        except BaseException:
            await self.db.close()
            current = asyncio.current_task()
            if self._opening.cancelled() and not (current and current.cancelling()):
                return False  # stop() ended the wait for a connection
            raise
        if not registered:
            await self.db.close()
        return registered

    def _helper_ended(self, helper: asyncio.Task[None]) -> None:
        """Helpers end by being cancelled at shutdown (the schedules one also when its
        role may not enqueue). One that failed leaves this worker without its
        heartbeats, reports or listener, so it stops the worker, whose run() raises
        the error once running jobs had their grace period."""
        if helper.cancelled() or helper.exception() is None:
            return
        error = helper.exception()
        logger.error("the worker's %s failed; stopping", helper.get_name(), exc_info=error)
        self._helper_error = self._helper_error or error
        self.stop()

    async def run_once(self) -> int:
        """Enqueue what the schedules owe, then run every job due now (for tests and
        cron-style use); returns the count."""
        self._loop = asyncio.get_running_loop()
        await self.db.open()
        ran = 0
        try:
            await self._enqueue_schedules()
            while True:
                jobs = await self._claim(self.concurrency, await self._forbidden_flags_now())
                if not jobs:
                    break
                ran += len(jobs)
                for job in jobs:
                    self._start(job)
                await asyncio.gather(*(r.task for r in list(self._running.values())))
                await self._report_all()
        finally:
            await self.db.close()
        return ran

    # --- claiming -------------------------------------------------------------

    async def _claim_until_stopped(self) -> None:
        failures = 0
        idle_poll = FIRST_IDLE_POLL
        clock = asyncio.get_running_loop().time
        release_at = clock() + self.heartbeat_interval
        while not self._stopping:
            free = self._free_slots()
            # when full, only a finishing job makes room, and it sets _wake: a
            # notification heard meanwhile must not turn the wait into a busy loop
            self._wake.clear()
            await self._registered.wait()
            worker_id = self.worker_id
            try:
                forbidden = await self._forbidden_flags_now() if free > 0 else None
            except Exception as error:  # the user's callable: no claim until it answers
                failures += 1
                await self._sleep_after_failure("forbidden_flags()", error, failures)
                continue
            try:
                if clock() >= release_at:
                    await self._release_unknown_jobs()
                    release_at = clock() + self.heartbeat_interval
                jobs = await self._claim(free, forbidden) if free > 0 else []
                failures = 0
            except psycopg.errors.ObjectNotInPrerequisiteState:
                self._notified_when_claimable = False
                await self._identity_lost(worker_id)
                continue
            except psycopg.OperationalError as error:
                self._notified_when_claimable = False
                release_at = 0.0  # the claim may have committed: see _release_unknown_jobs
                failures += 1
                await self._sleep_after_failure("claim", error, failures)
                continue
            for job in jobs:
                self._start(job)
            if free > 0:
                idle_poll = FIRST_IDLE_POLL if jobs else idle_poll * 2
                if len(jobs) == free and len(self._running) < self.concurrency:
                    continue
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), min(idle_poll, self.poll_interval))

    def _free_slots(self) -> int:
        """How many jobs the next claim may take: the handler slots that are free, less
        what the reports lag behind. A job stays ours, and would run again after a
        crash, until its outcome is reported, so no more than twice the concurrency
        may be held (running, or ended and unreported): with a reporter slower than
        the handlers (a slow database, a blocked completion), claims would otherwise
        outrun it without bound."""
        unreported = len(self._outcomes) + len(self._sending)
        lag = max(0, unreported - self.concurrency)
        self._held_back = lag > 0
        return max(0, self.concurrency - len(self._running) - lag)

    async def _claim(self, batch_size: int, forbidden: list[str] | None) -> list[Job]:
        while True:
            size = min(batch_size, self._batch_limit)
            try:
                jobs = await self.db.claim(self.worker_id, self.tasks.names(), size, forbidden)
            except psycopg.errors.ProgramLimitExceeded as error:
                self._lower_batch_limit(size, error)
                continue
            self._notified_when_claimable = self.listen and len(jobs) < size
            return jobs

    async def _forbidden_flags_now(self) -> list[str] | None:
        """The flags no job of the next claim may carry: the fixed list, or what the
        callable (sync or async) answers now."""
        if not callable(self.forbidden_flags):
            return self._fixed_flags
        answer = self.forbidden_flags()
        if inspect.isawaitable(answer):
            answer = await answer
        return _flags(answer, "forbidden_flags()")

    async def _release_unknown_jobs(self) -> None:
        """A claim can commit while its reply is lost (the network failed after
        the request went through), or commit after the worker gave it up (its
        backend waited for a lock): its jobs are locked by us, unknown to us, and
        as we heartbeat no rescue frees them. The claim loop calls this before its
        next claim after a failed one, and every heartbeat interval: it releases
        whatever we hold but do not run or report (no claim of ours is in flight
        then)."""
        if not self._unknown_releasable:
            return
        kept = {*self._running, *(o.job_id for o in self._outcomes + self._sending)}
        try:
            released = await self.db.release_unknown(self.worker_id, sorted(kept))
        except (psycopg.errors.InsufficientPrivilege, psycopg.errors.UndefinedFunction):
            _warn_ungranted(
                "release_unknown_jobs",
                "jobs of a claim whose reply was lost stay running until this worker stops",
            )
            self._unknown_releasable = False
            return
        if released:
            logger.warning("released jobs of a claim whose reply was lost: %s", released)

    async def _in_batches(
        self, send: Callable[[list[ReportT]], Awaitable[ResultT]], items: list[ReportT]
    ) -> list[ResultT]:
        """send(items), in slices that max_batch_size allows; returns each one's result."""
        results: list[ResultT] = []
        start = 0
        while start < len(items):
            size = min(self._batch_limit, len(items) - start)
            try:
                results.append(await send(items[start : start + size]))
            except psycopg.errors.ProgramLimitExceeded as error:
                self._lower_batch_limit(size, error)
                continue
            start += size
        return results

    def _lower_batch_limit(self, refused_size: int, error: Exception) -> None:
        """Halves the calls' size after max_batch_size refused refused_size jobs (its
        value is a setting this role may not read, and an administrator may lower it)."""
        if refused_size <= 1:
            raise error
        self._batch_limit = refused_size // 2
        logger.warning(
            "the database refused %s jobs in one call (%s); sending at most %s from now on",
            refused_size, error, self._batch_limit,
        )  # fmt: skip

    async def _sleep_after_failure(self, what: str, error: Exception, failures: int) -> None:
        delay = RECONNECT_DELAYS[min(failures, len(RECONNECT_DELAYS)) - 1]
        logger.warning("%s failed (%s); retrying in %.1fs", what, error, delay)
        await asyncio.sleep(delay)

    # --- running --------------------------------------------------------------

    def _start(self, job: Job) -> None:
        task = self.tasks.tasks[job.task_identifier]
        self._tasks_started.add(task.name)
        context = JobContext(
            job=job,
            worker_id=self.worker_id,
            _report_progress=partial(self._progress_from_any_thread, job.id),
            _transactions=self._transactions,
        )
        runner = asyncio.create_task(self._run_job(task, job, context))
        self._running[job.id] = _Running(job, runner, context)

    async def _run_job(self, task: Task, job: Job, context: JobContext) -> None:
        if logger.isEnabledFor(logging.DEBUG):
            context.logger.debug("job started")
        try:
            outcome = await run_handler(task, job, context)
        except asyncio.CancelledError:
            running = self._running.get(job.id)
            if running is None or not running.cancel_requested:
                raise  # shutdown or lost identity: the job is released or rescued
            outcome = Failed(job.id, CANCELLED_BY_REQUEST)
        except Exception as error:
            # a fault of hopper's own: the job must still end, and its slot free up
            context.logger.exception("running the job failed")
            outcome = Failed(job.id, f"the worker failed running this job: {error!r}")
        else:
            if isinstance(outcome, Failed):
                log_failure(context, outcome)
        self._ended(job.id, outcome)

    def _ended(self, job_id: int, outcome: Report) -> None:
        """Reports a job's outcome unless the job was dropped meanwhile (a lost
        identity, a drain), and frees its slot."""
        if self._running.pop(job_id, None) is not None:
            self._outcomes.append(outcome)
            self._reported.set()
        self._room_made()

    def _room_made(self) -> None:
        """A job that finished frees a slot, and its report a queue's slot. While
        the database counts us waiting, what that makes claimable notifies us (a
        freed queue slot too), and claiming at every end as well cost two claims more
        per job at low load. Otherwise only this makes us claim again; a drain waits
        for it."""
        if self._stopping or self._held_back or not self._notified_when_claimable:
            self._wake.set()

    def _progress_from_any_thread(self, job_id: int, percent: int) -> None:
        assert self._loop is not None
        self._loop.call_soon_threadsafe(self._note_progress, job_id, percent)

    def _note_progress(self, job_id: int, percent: int) -> None:
        self._progress[job_id] = percent
        self._reported.set()

    def _cancel_requested(self, job_id: int) -> None:
        running = self._running.get(job_id)
        if running is not None and not running.cancel_requested:
            running.context.logger.info("cancelling on request")
            running.cancel_requested = True
            running.context._abandon()
            running.task.cancel()
            running.task.add_done_callback(partial(self._end_if_never_run, running))

    def _end_if_never_run(self, running: _Running, task: asyncio.Task[None]) -> None:
        """A task cancelled before its first step never runs _run_job, which reports
        the job: a request can come between a claim and that step."""
        if self._running.get(running.job.id) is running:
            self._ended(running.job.id, Failed(running.job.id, CANCELLED_BY_REQUEST))

    # --- liveness: registration, heartbeats, rescue ------------------------------

    async def _register(self) -> bool:
        """Registers worker_id, retrying while that fails for a reason that can pass
        (the database out of reach, a lock timeout) until it succeeds or the worker
        stops; returns whether it registered. A retired id raises at once: an id
        fences its claims, so it serves one run (give each start a new one)."""
        metadata = {
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "concurrency": self.concurrency,
            "tasks": self.tasks.names(),
        }
        failures = 0
        while not self._stopping:
            try:
                await self.db.register(self.worker_id, metadata)
                self._registered.set()
                return True
            except psycopg.errors.ObjectNotInPrerequisiteState:
                raise
            except psycopg.OperationalError as error:
                failures += 1
                await self._sleep_after_failure("register", error, failures)
        return False

    async def _heartbeat_forever(self) -> None:
        """Heartbeat, pick up cancellation requests, and rescue dead workers' jobs."""
        clock = asyncio.get_running_loop().time
        while True:
            due = clock() + self.heartbeat_interval
            self._tasks_started = {r.job.task_identifier for r in self._running.values()}
            await asyncio.sleep(self.heartbeat_interval)
            self._warn_if_late(clock() - due)
            if not self._registered.is_set():
                continue  # the new id's registration is on its way
            worker_id = self.worker_id
            try:
                for job_id in await self.db.heartbeat(worker_id):
                    self._cancel_requested(job_id)
                rescued = await self.db.rescue(self.stale_after)
                if rescued:
                    logger.warning(
                        "rescued %s jobs of lost workers: %s", len(rescued), [j.id for j in rescued]
                    )
                    self._wake.set()
            except psycopg.errors.ObjectNotInPrerequisiteState:
                await self._identity_lost(worker_id)
            except psycopg.OperationalError as error:
                logger.warning("heartbeat failed (%s)", error)

    def _warn_if_late(self, late: float) -> None:
        """An async handler that blocks (time.sleep, a sync client) holds the event
        loop: no heartbeat, claim or report runs meanwhile, and past stale_after
        other workers rescue its jobs and run them again. Say so, naming the tasks
        that ran meanwhile (those running at the last heartbeat, and those started
        since)."""
        if late < LATE_LOOP_WARNING:
            return
        logger.warning(
            "the event loop ran %.1f s late (heartbeats stop while it is held; past"
            " stale_after, %s s, other workers rescue this worker's jobs). Tasks run"
            " meanwhile: %s. An async handler must not block: make a blocking one a"
            " sync def, which runs in a thread",
            late, self.stale_after, ", ".join(sorted(self._tasks_started)) or "none",
        )  # fmt: skip

    async def _enqueue_schedules_forever(self) -> None:
        """Enqueue the firings schedules owe, at start, when the next one is due, when
        add_schedule notifies, and at least every schedule_interval (enqueue_due_schedules
        enqueues each firing once, however many workers call)."""
        while True:
            self._schedules_changed.clear()
            if not await self._enqueue_schedules():
                return
            # the timeout first: a cancellation while it is read must not leave
            # an Event.wait() coroutine that was never awaited
            timeout = await self._until_next_firing()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._schedules_changed.wait(), timeout)

    async def _until_next_firing(self) -> float:
        if not self._firings_readable:
            return self.schedule_interval
        try:
            seconds = await self.db.seconds_to_next_firing()
        except (psycopg.errors.InsufficientPrivilege, psycopg.errors.UndefinedFunction):
            _warn_ungranted(
                "next_schedule_firing",
                "this worker enqueues firings up to schedule_interval late",
            )
            self._firings_readable = False
            return self.schedule_interval
        except psycopg.Error as error:
            logger.warning("reading the next schedule firing failed (%s)", error)
            return self.schedule_interval
        if seconds is None:
            return self.schedule_interval
        return min(self.schedule_interval, max(0.0, seconds) + FIRING_MARGIN)

    async def _enqueue_schedules(self) -> bool:
        """One call of enqueue_due_schedules; False when this role may not make it
        (a role granted before schedules existed), which no retry mends."""
        try:
            if await self.db.enqueue_due_schedules():
                self._wake.set()
        except psycopg.errors.InsufficientPrivilege:
            logger.warning(
                "this role may not call enqueue_due_schedules, so this worker enqueues no"
                " schedules: run grant_worker for it again"
            )
            return False
        except psycopg.OperationalError as error:
            logger.warning("enqueueing due schedules failed (%s)", error)
        return True

    async def _prune_forever(self) -> None:
        """Applies the retention settings: deletes finished jobs past them, PRUNE_BATCH
        at a time, every prune_interval, and batch after batch while a backlog lasts
        (a first run, a shortened retention). The first call comes at a random point
        of the first interval, so that workers started together spread out."""
        assert self.prune_interval is not None
        await asyncio.sleep(random.uniform(0, self.prune_interval))
        while True:
            try:
                pruned = await self.db.prune_expired(PRUNE_BATCH)
            except (psycopg.errors.InsufficientPrivilege, psycopg.errors.UndefinedFunction):
                _warn_ungranted(
                    "prune_expired",
                    "finished jobs past their retention stay until someone calls prune()",
                )
                return
            except psycopg.Error as error:
                # pruning can wait; running jobs cannot
                logger.warning("pruning finished jobs failed (%s)", error)
                pruned = 0
            if pruned < PRUNE_BATCH:
                await asyncio.sleep(self.prune_interval)

    async def _identity_lost(self, retired_id: str) -> None:
        """Our id was retired (we looked dead): our jobs run elsewhere now, so drop
        them here and carry on under a new id. The claim loop and the heartbeat can
        both learn it at once; the second must not drop what the new id claimed."""
        if retired_id != self.worker_id:
            return
        old = self.worker_id
        self._registered.clear()
        self.worker_id = new_worker_id()
        lost = list(self._running.values())
        self._running.clear()
        for running in lost:
            running.context._abandon()
            running.task.cancel()
        logger.warning(
            "worker %s was retired; dropped %s jobs, continuing as %s",
            old,
            len(lost),
            self.worker_id,
        )
        await self._register()

    # --- reporting outcomes ------------------------------------------------------

    async def _report_forever(self) -> None:
        """Sends outcomes as they come; what piles up during one call goes in the next.
        Outcomes left after _report_all gave up are tried again at once: no later job
        may come to send them (an idle queue), and their jobs would stay running."""
        while True:
            if not self._outcomes:
                await self._reported.wait()
            self._reported.clear()
            await self._report_all()

    async def _report_all(self) -> None:
        failures = 0
        while self._outcomes or self._progress:
            outcomes, self._outcomes = self._outcomes, []
            progress, self._progress = self._progress, {}
            self._sending = outcomes
            try:
                await self._send(outcomes, progress)
                failures = 0
                if outcomes:
                    self._room_made()
            except asyncio.CancelledError:
                # the worker stops: its last report sends them again, or they would
                # be given back by unregister_worker and run again
                self._outcomes = outcomes + self._outcomes
                raise
            except psycopg.OperationalError as error:
                # completion is fenced and idempotent, so sending again is safe
                self._outcomes = outcomes + self._outcomes
                self._maybe_reported.update(o.job_id for o in outcomes if isinstance(o, Completed))
                failures += 1
                if failures > 30:
                    logger.error("%s outcomes unsent after 30 tries: %s", len(outcomes), error)
                    return
                await self._sleep_after_failure("reporting outcomes", error, failures)
            except psycopg.Error as error:
                # the same batch would be refused again, and a reporter that gave up
                # would leave every later job of this worker running
                logger.error("the database refused %s outcomes (%s); sending each alone",
                             len(outcomes), error)  # fmt: skip
                self._outcomes = await self._send_each(outcomes) + self._outcomes
            finally:
                self._sending = []

    async def _send_each(self, outcomes: list[Report]) -> list[Report]:
        """Sends each outcome alone, failing for good the job of one the database
        refuses; returns those to send again (the connection failed)."""
        unsent: list[Report] = []
        for outcome in outcomes:
            try:
                await self._send([outcome], {})
            except psycopg.OperationalError:
                unsent.append(outcome)
            except psycopg.Error as error:
                logger.error("job %s: its outcome was refused (%s)", outcome.job_id, error)
                message = f"the worker could not report this job's outcome: {error}"
                try:
                    await self._send([Failed(outcome.job_id, message, permanent=True)], {})
                except psycopg.OperationalError:
                    unsent.append(outcome)
                except psycopg.Error as again:
                    logger.error("job %s: failing it was refused too (%s)", outcome.job_id, again)
        return unsent

    async def _send(self, outcomes: list[Report], progress: dict[int, int]) -> None:
        """Sends progress, completions and failures; Settled jobs need nothing."""
        completed = [o for o in outcomes if isinstance(o, Completed)]
        failed = [o for o in outcomes if isinstance(o, Failed) and not o.permanent]
        doomed = [o for o in outcomes if isinstance(o, Failed) and o.permanent]
        if progress:
            await self.db.set_progress(self.worker_id, progress)
        if completed:
            batches = await self._in_batches(partial(self.db.complete, self.worker_id), completed)
            accepted = {job_id for batch in batches for job_id in batch}
            refused = [o.job_id for o in completed if o.job_id not in accepted]
            if refused:
                self._log_refused_completions(refused)
            if self._maybe_reported:  # nearly always empty: no pass over every report
                self._maybe_reported.difference_update(o.job_id for o in completed)
        if failed:
            await self._in_batches(partial(self.db.fail, self.worker_id, permanent=False), failed)
        if doomed:
            await self._in_batches(partial(self.db.fail, self.worker_id, permanent=True), doomed)

    def _log_refused_completions(self, refused: list[int]) -> None:
        again = [job_id for job_id in refused if job_id in self._maybe_reported]
        taken = [job_id for job_id in refused if job_id not in self._maybe_reported]
        if again:
            logger.info(
                "completion sent again not applied, jobs no longer held: %s (most likely"
                " the earlier try, whose reply was lost, completed them)", again
            )  # fmt: skip
        if taken:
            # rescued, unlocked or retried meanwhile: they run (or ran) elsewhere
            logger.warning("completion refused, jobs no longer held: %s", taken)

    # --- shutting down -------------------------------------------------------------

    async def _drain(self) -> None:
        """Give running jobs the grace period, then cancel and release what is left."""
        if self._running and not self._stop_now:
            logger.info(
                "waiting up to %ss for %s running jobs", self.grace_period, len(self._running)
            )
            deadline = asyncio.get_running_loop().time() + self.grace_period
            while self._running and not self._stop_now:
                remaining = deadline - asyncio.get_running_loop().time()
                if remaining <= 0:
                    break
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), remaining)
        left = list(self._running.values())
        self._running.clear()
        for running in left:
            running.context._abandon()
        if left:
            stuck = await cancel_and_wait([r.task for r in left])
            if stuck:
                logger.warning(
                    "%s handlers ignored their cancellation; their jobs are released all"
                    " the same and may run again elsewhere while they go on", len(stuck)
                )  # fmt: skip
            logger.info("releasing %s unfinished jobs: %s", len(left), [r.job.id for r in left])

    async def _settle_up(self) -> None:
        """The last reports and the unregistering, within SETTLE_TIMEOUT (a second
        stop ends them at once): with the database out of reach they would retry
        for many minutes. What they leave is still held by this worker id, and
        other workers rescue it after stale_after."""
        settling = self._settling = asyncio.create_task(self._report_then_unregister())
        await asyncio.wait({settling}, timeout=SETTLE_TIMEOUT)
        if settling.done() and not settling.cancelled():
            settling.result()  # its error, if any, is run()'s
            return
        unsent = len(self._outcomes) + len(self._sending)
        await cancel_and_wait([settling])
        logger.error(
            "stopped before %s outcomes were reported and its jobs given back (the"
            " database out of reach?): other workers rescue them after stale_after",
            unsent,
        )  # fmt: skip

    async def _report_then_unregister(self) -> None:
        await self._report_all()
        await self._unregister()

    async def _unregister(self) -> None:
        """Gives back whatever we still hold (no attempt lost) and retires our id."""
        for failures in range(1, 6):
            try:
                await self.db.unregister(self.worker_id)
                return
            except psycopg.OperationalError as error:
                await self._sleep_after_failure("unregister", error, failures)


async def cancel_and_wait(
    tasks: Iterable[asyncio.Task[Any]], patience: float = CANCEL_PATIENCE
) -> set[asyncio.Task[Any]]:
    """Cancels tasks and waits for them to end, cancelling again every second, up
    to patience seconds; returns those still running. A single cancel is not enough:
    on Python 3.11, asyncio.wait_for (with which psycopg_pool waits for a free
    connection) returns normally when what it awaits completes as the cancellation
    comes, and the task goes on; a handler may swallow it too. A worker stopped
    while its helpers waited for the pool's first connections hung for good."""
    tasks = list(tasks)
    pending = {task for task in tasks if not task.done()}
    deadline = asyncio.get_running_loop().time() + patience
    while pending:
        for task in pending:
            task.cancel()
        remaining = deadline - asyncio.get_running_loop().time()
        if remaining <= 0:
            break
        # not sooner: a second cancellation cuts short psycopg's own, which cancels
        # the query in the server and reads its end, and closes the connection
        _, pending = await asyncio.wait(pending, timeout=min(1.0, remaining))
    for task in tasks:
        if task.done() and not task.cancelled():
            task.exception()  # retrieved: it was logged where it mattered
    return pending


def _warn_ungranted(function: str, consequence: str) -> None:
    """For a role granted before function existed (or a schema that predates it)."""
    logger.warning(
        "this role may not call %s (or the schema predates it), so %s: run grant_worker"
        " for it again (or migrate)",
        function, consequence,
    )  # fmt: skip


def run_worker(dsn: str, tasks: TaskRegistry, *, concurrency: int = 8, **options: object) -> None:
    """Run a worker until SIGINT/SIGTERM (graceful); a second signal stops at once."""
    if threading.current_thread() is not threading.main_thread():
        raise RuntimeError(
            "run_worker stops on SIGINT and SIGTERM, which only the main thread can"
            " handle; in another thread run Worker(...).run() and call its stop()"
        )
    worker = Worker(dsn, tasks, concurrency=concurrency, **options)  # type: ignore[arg-type]

    async def main() -> None:
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, worker.stop)
        await worker.run()

    asyncio.run(main())


def run_once(dsn_or_conn: str | psycopg.Connection, tasks: TaskRegistry, **options: object) -> int:
    """Run every job due now and return how many ran (the testing helper)."""
    worker = Worker(dsn_or_conn, tasks, listen=False, **options)  # type: ignore[arg-type]
    return asyncio.run(worker.run_once())
