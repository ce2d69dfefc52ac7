"""Crashes and faults with real worker processes (issue 4): kill -9, SIGSTOP,
killed backends and a server restart, hung handlers, a long open transaction."""

from __future__ import annotations

import asyncio
import logging
import signal
import socket
import threading
import time

import psycopg
import pytest
import worker_tasks
from psycopg.conninfo import make_conninfo
from psycopg.types.json import Jsonb
from workerprocs import WorkerProcess, scalar, wait_until, worker_in_thread

import hopper

FAST_LIVENESS = ("--heartbeat-interval", "0.5", "--stale-after", "2", "--poll-interval", "0.5")


@pytest.fixture
def workers(dsn, tmp_path):
    worker_tasks.create_executions_table(dsn)
    started: list[WorkerProcess] = []

    def start(*args: str) -> WorkerProcess:
        process = WorkerProcess(dsn, tmp_path, f"worker{len(started)}", *FAST_LIVENESS, *args)
        started.append(process)
        return process

    yield start
    for process in started:
        if process.process.poll() is None:
            process.process.send_signal(signal.SIGCONT)
        process.kill()


def starts(dsn: str) -> list[tuple[int, str, str]]:
    return [e for e in worker_tasks.executions(dsn) if e[2] == "start"]


def job_row(dsn: str, job_id: int) -> tuple:
    with psycopg.connect(dsn) as conn:
        return conn.execute(
            "SELECT state, attempts, result, locked_by FROM hopper.jobs WHERE id = %s", [job_id]
        ).fetchone()


def test_kill_9_mid_job_runs_again_elsewhere_within_stale_after_plus_1s(dsn, workers):
    victim = workers()
    job_id = scalar(dsn, "SELECT id FROM hopper.add_job('slow', '{\"seconds\": 1}')")
    wait_until(lambda: len(starts(dsn)) == 1, timeout=10, what="first run")
    survivor = workers()
    victim.process.kill()
    killed_at = time.monotonic()
    wait_until(lambda: len(starts(dsn)) == 2, timeout=10, what="second run")
    recovery = time.monotonic() - killed_at
    wait_until(lambda: job_row(dsn, job_id)[0] == "completed", timeout=10, what="completion")
    state, attempts, result, _ = job_row(dsn, job_id)
    runs = starts(dsn)
    assert runs[0][1] != runs[1][1]
    assert (state, attempts, result) == ("completed", 2, runs[1][1])
    assert recovery <= 2 + 1, recovery
    print(f"\nrecovery after kill -9: {recovery:.2f}s (stale_after 2s)")
    survivor.signal()
    assert survivor.wait() == 0


def test_sigstopped_worker_woken_after_rescue_changes_nothing(dsn, workers):
    sleeper = workers()
    job_id = scalar(dsn, "SELECT id FROM hopper.add_job('slow', '{\"seconds\": 1.5}')")
    wait_until(lambda: len(starts(dsn)) == 1, timeout=10, what="first run")
    sleeper.signal(signal.SIGSTOP)
    other = workers()
    wait_until(lambda: job_row(dsn, job_id)[0] == "completed", timeout=15, what="rerun elsewhere")
    completed_by = job_row(dsn, job_id)[2]
    assert completed_by == starts(dsn)[1][1] != starts(dsn)[0][1]
    sleeper.signal(signal.SIGCONT)
    wait_until(lambda: "was retired" in sleeper.log(), timeout=10, what="sleeper to notice")
    time.sleep(2)  # its handler wakes up and reports; the report must change nothing
    assert job_row(dsn, job_id)[:3] == ("completed", 2, completed_by)
    # the woken worker carries on under a new id and still runs jobs
    more = scalar(dsn, "SELECT id FROM hopper.add_job('echo', '{}')")
    wait_until(lambda: job_row(dsn, more)[0] == "completed", timeout=10, what="later job")
    for process in (sleeper, other):
        process.signal()
        assert process.wait() == 0


def test_a_retirement_learnt_twice_gives_one_new_id(dsn, conn):
    """The claim loop and the heartbeat can both have a call in flight under the old
    id when it is retired (as after a SIGSTOP), and both hear 55000. The second to
    hear it must not take another new id: the worker would leave the first
    registered (until a rescue) and drop what it had claimed under it."""
    worker = hopper.Worker(
        dsn, worker_tasks.tasks, concurrency=2, poll_interval=0.1, heartbeat_interval=0.2
    )
    live = "SELECT array_agg(id) AS ids FROM hopper._workers WHERE retired_at IS NULL"
    with worker_in_thread(worker):
        first = worker.worker_id
        wait_until(lambda: conn.execute(live).fetchone()["ids"] == [first], 10, "registration")
        conn.execute("UPDATE hopper._workers SET retired_at = now() WHERE id = %s", [first])
        wait_until(
            lambda: conn.execute(live).fetchone()["ids"] not in (None, [first]), 10, "a new id"
        )
        second = worker.worker_id
        # the other loop's reply, late
        asyncio.run_coroutine_threadsafe(worker._identity_lost(first), worker._loop).result(5)
        assert worker.worker_id == second
        assert conn.execute(live).fetchone()["ids"] == [second]
        added = scalar(dsn, "SELECT id FROM hopper.add_job('echo', '{}')")
        wait_until(lambda: job_row(dsn, added)[0] == "completed", 10, "a job under the new id")


def test_a_new_id_claims_nothing_until_its_registration_commits(dsn, conn, monkeypatch):
    """After a retirement the heartbeat registers the new id while the claim loop
    goes on. A claim under an id not yet registered locks jobs that no rescue can
    free: had the worker died then, they would have waited for job_expiry (4 h)."""
    worker_tasks.create_executions_table(dsn)
    monkeypatch.setenv("HOPPER_TEST_DSN", dsn)
    monkeypatch.setattr(hopper._worker, "new_worker_id", lambda: "second-id")
    holder = psycopg.connect(dsn)
    holder.execute("INSERT INTO hopper._workers (id) VALUES ('second-id')")  # not committed
    worker = hopper.Worker(
        dsn, worker_tasks.tasks, worker_id="first-id", concurrency=1,
        heartbeat_interval=0.2, stale_after=1, grace_period=0.1,
    )  # fmt: skip
    job_id = scalar(dsn, "SELECT id FROM hopper.add_job('slow', '{\"seconds\": 30}')")
    try:
        with worker_in_thread(worker):
            wait_until(lambda: job_row(dsn, job_id)[3] == "first-id", 10, "the first claim")
            # the claim loop is full, so the heartbeat is the one to hear of it
            conn.execute("SELECT * FROM hopper.unregister_worker('first-id')")
            wait_until(lambda: worker.worker_id == "second-id", 10, "the new id")
            time.sleep(1)  # the claim loop has room again, and the job is pending
            assert job_row(dsn, job_id)[::3] == ("pending", None)
            holder.rollback()  # the registration goes through
            wait_until(lambda: job_row(dsn, job_id)[3] == "second-id", 10, "the claim")
            registered = conn.execute(
                "SELECT retired_at IS NULL AS live FROM hopper._workers WHERE id = 'second-id'"
            ).fetchone()
            assert registered == {"live": True}
    finally:
        holder.close()


def test_the_heartbeat_waits_for_the_new_ids_registration(dsn, conn, monkeypatch):
    """When the claim loop hears of the retirement, it registers the new id itself.
    A heartbeat sent under that id before the registration commits was refused as
    unregistered, and the worker took it for a second retirement: a third id, and
    whatever the second had claimed dropped."""
    ids = iter(["second-id", "third-id"])
    monkeypatch.setattr(hopper._worker, "new_worker_id", lambda: next(ids))
    holder = psycopg.connect(dsn)
    holder.execute("INSERT INTO hopper._workers (id) VALUES ('second-id')")  # not committed
    worker = hopper.Worker(
        dsn, worker_tasks.tasks, worker_id="first-id", heartbeat_interval=0.2, stale_after=1
    )
    try:
        with worker_in_thread(worker):
            live = "SELECT count(*) AS n FROM hopper._workers WHERE id = 'first-id'"
            wait_until(lambda: conn.execute(live).fetchone()["n"] == 1, 10, "registration")
            conn.execute("UPDATE hopper._workers SET retired_at = now() WHERE id = 'first-id'")
            # as the claim loop does on hearing 55000; the registration waits on holder
            asyncio.run_coroutine_threadsafe(worker._identity_lost("first-id"), worker._loop)
            time.sleep(1)  # five heartbeat intervals
            assert worker.worker_id == "second-id"
            holder.rollback()
            added = scalar(dsn, "SELECT id FROM hopper.add_job('echo', '{}')")
            wait_until(lambda: job_row(dsn, added)[0] == "completed", 10, "a job")
            assert worker.worker_id == "second-id"
            live = "SELECT array_agg(id) AS ids FROM hopper._workers WHERE retired_at IS NULL"
            assert conn.execute(live).fetchone()["ids"] == ["second-id"]
    finally:
        holder.close()


def test_an_async_handler_that_blocks_the_loop_is_named_in_a_warning(dsn, conn, caplog):
    """time.sleep in an async handler stops the worker's heartbeats: past
    stale_after its jobs are rescued and run twice, and nothing said why."""
    caplog.set_level(logging.WARNING, logger="hopper")
    worker = hopper.Worker(dsn, worker_tasks.tasks, heartbeat_interval=0.2, stale_after=5)
    with worker_in_thread(worker):
        blocked = scalar(
            dsn, "SELECT id FROM hopper.add_job('blocks_the_loop', '{\"seconds\": 1.5}')"
        )
        wait_until(lambda: job_row(dsn, blocked)[0] == "completed", 10, "the blocking job")
        quick = scalar(dsn, "SELECT id FROM hopper.add_job('echo', '{}')")
        wait_until(lambda: job_row(dsn, quick)[0] == "completed", 10, "a quick job")
    warnings = [r.getMessage() for r in caplog.records if "event loop ran" in r.getMessage()]
    assert len(warnings) == 1, warnings
    assert (
        "the event loop ran 1." in warnings[0]
        and "Tasks run meanwhile: blocks_the_loop." in warnings[0]
    )
    assert "make a blocking one a sync def" in warnings[0]


def test_a_blocked_report_stops_the_claims_at_twice_the_concurrency(dsn, conn, connect):
    """A job is ours until its outcome is reported. With the reporter stuck (here a
    completion waits for a row lock) the worker claimed on as its handlers ended,
    until it held every pending job; a crash then would have run them all again."""
    worker = hopper.Worker(dsn, worker_tasks.tasks, concurrency=4, poll_interval=0.2)
    running = "SELECT count(*) FROM hopper._jobs WHERE state = 'running'"
    with worker_in_thread(worker):
        first = scalar(dsn, "SELECT id FROM hopper.add_job('slow_sync', '{\"seconds\": 0.5}')")
        wait_until(lambda: job_row(dsn, first)[0] == "running", 10, "the slow job to start")
        locker = connect()
        locker.execute("BEGIN")
        locker.execute("SELECT FROM hopper._jobs WHERE id = %s FOR UPDATE", [first])
        blocked = (
            "SELECT count(*) > 0 FROM pg_stat_activity"
            " WHERE application_name LIKE 'hopper%%' AND wait_event_type = 'Lock'"
        )
        wait_until(lambda: scalar(dsn, blocked), 10, "its completion to wait for the lock")
        conn.execute("SELECT hopper.add_job('echo', '{}') FROM generate_series(1, 100)")
        time.sleep(1.5)
        assert scalar(dsn, running) <= 2 * 4
        locker.execute("ROLLBACK")
        done = "SELECT count(*) FROM hopper.jobs WHERE state = 'completed'"
        wait_until(lambda: scalar(dsn, done) == 101, 20, "all 101 jobs to complete")


def test_a_worker_given_a_retired_id_refuses_to_start(dsn, conn):
    """An id fences the claims made under it, so an id that unregistered (a clean
    stop) or was rescued is refused for good. A worker given one retried its
    registration for eight minutes, deaf to stop(), as if the database were out of
    reach, and then ran unregistered."""
    conn.execute("SELECT hopper.register_worker('fixed-id')")
    conn.execute("SELECT * FROM hopper.unregister_worker('fixed-id')")
    worker = hopper.Worker(dsn, worker_tasks.tasks, worker_id="fixed-id")
    started = time.monotonic()
    with pytest.raises(psycopg.errors.ObjectNotInPrerequisiteState, match="was retired"):
        asyncio.run(asyncio.wait_for(worker.run(), 10))
    assert time.monotonic() - started < 5
    assert worker.db._pool is None  # closed
    live = conn.execute("SELECT count(*) AS n FROM hopper._workers WHERE retired_at IS NULL")
    assert live.fetchone()["n"] == 0


def test_a_worker_that_cannot_register_yet_stops_when_told(dsn, conn, caplog):
    """Registration is retried while it fails for a reason that can pass: here a
    lock on the worker's row, under lock_timeout. stop() ends the retries, and
    the worker ends without having claimed anything."""
    caplog.set_level(logging.INFO, logger="hopper")
    holder = psycopg.connect(dsn)
    holder.execute("INSERT INTO hopper._workers (id) VALUES ('held-id')")  # not committed
    added = scalar(dsn, "SELECT id FROM hopper.add_job('echo', '{}')")
    worker = hopper.Worker(
        make_conninfo(dsn, options="-c lock_timeout=50"), worker_tasks.tasks,
        worker_id="held-id", poll_interval=0.1,
    )  # fmt: skip
    try:
        with worker_in_thread(worker):
            wait_until(lambda: "register failed" in caplog.text, 10, "a failed registration")
            stopping = time.monotonic()
        assert time.monotonic() - stopping < 6  # the longest pause between tries is 5 s
    finally:
        holder.close()
    assert job_row(dsn, added)[:2] == ("pending", 0)
    assert "stopped before it could register" in caplog.text


def test_a_worker_stopped_while_it_waits_for_its_first_connection_ends_at_once(dsn):
    """With the database out of reach at start the pool waits up to 30 s for a
    first connection; stop() (SIGTERM) did nothing meanwhile. It now ends the wait,
    and the pool is closed instead of connecting on in the background."""
    with socket.create_server(("127.0.0.1", 0)) as unused:
        port = unused.getsockname()[1]
    worker = hopper.Worker(make_conninfo(dsn, port=port), worker_tasks.tasks)
    with worker_in_thread(worker):
        time.sleep(0.5)  # the pool is waiting for a connection
        stopping = time.monotonic()
    assert time.monotonic() - stopping < 5
    assert worker.db._pool is None


def test_a_handler_that_swallows_its_cancellation_does_not_keep_the_worker_from_stopping(dsn, conn):
    """After the grace period the worker cancels what still runs, and cancels again
    until it ends: one cancellation can be lost (Python 3.11's asyncio.wait_for, in
    a handler or in psycopg_pool), and the worker waited for the handler for good."""
    worker = hopper.Worker(dsn, worker_tasks.tasks, grace_period=0.2)
    with worker_in_thread(worker):
        target = scalar(dsn, "SELECT id FROM hopper.add_job('stubborn', '{}')")
        wait_until(lambda: job_row(dsn, target)[0] == "running", 10, "the job to start")
        stopping = time.monotonic()
    took = time.monotonic() - stopping
    assert took < 10, took  # the handler sleeps 30 s more if not cancelled again
    assert job_row(dsn, target)[:2] == ("pending", 0)  # released, no attempt counted


def test_a_cancellation_that_comes_before_the_handler_starts_ends_the_job(dsn, conn):
    """The heartbeat (or a notification) can ask to cancel a job claimed a moment
    ago, before its task has taken its first step. Cancelling that task kept its
    coroutine from ever running, so nothing reported the job: it stayed running
    under a live worker for good (found by test_worker_chaos, 1 run in 6). The
    moment is forced here: a busy worker's one slot is taken, and the job is
    claimed, started and asked to cancel in one step of the worker's loop."""
    worker = hopper.Worker(dsn, worker_tasks.tasks, concurrency=1, poll_interval=0.1)
    with worker_in_thread(worker):
        busy = scalar(dsn, "SELECT id FROM hopper.add_job('slow_sync', '{\"seconds\": 3}')")
        wait_until(lambda: job_row(dsn, busy)[0] == "running", 10, "the slot to fill")
        target = scalar(dsn, "SELECT id FROM hopper.add_job('echo', '{}')")

        async def claim_start_and_cancel() -> None:
            (claimed,) = await worker.db.claim(worker.worker_id, ["echo"], 1)
            assert claimed.id == target
            conn.execute("SELECT hopper.cancel_jobs(ARRAY[%s::bigint])", [target])
            worker._start(claimed)
            worker._cancel_requested(target)

        asyncio.run_coroutine_threadsafe(claim_start_and_cancel(), worker._loop).result(10)
        wait_until(lambda: job_row(dsn, target)[0] == "cancelled", 10, "the job to end")
        assert target not in worker._running


def hopper_backends(dsn: str) -> list[int]:
    with psycopg.connect(dsn) as conn:
        return [
            pid
            for (pid,) in conn.execute(
                "SELECT pid FROM pg_stat_activity WHERE application_name LIKE 'hopper-%'"
            )
        ]


def test_killed_backends_and_a_server_restart_lose_no_job(dsn, workers, pg_server):
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(
            "SELECT count(*) FROM hopper.add_jobs(%s)", [Jsonb([{"identifier": "record"}] * 2000)]
        )
    processes = [workers("-c", "4") for _ in range(2)]
    completed = lambda: scalar(dsn, "SELECT count(*) FROM hopper.jobs WHERE state = 'completed'")  # noqa: E731
    faults = 0
    for threshold in (300, 700, 1100):
        wait_until(lambda t=threshold: completed() >= t, timeout=60, what=f"{threshold} done")
        with psycopg.connect(dsn, autocommit=True) as conn:
            for pid in hopper_backends(dsn):
                conn.execute("SELECT pg_terminate_backend(%s)", [pid])
        faults += 1
    wait_until(lambda: completed() >= 1500, timeout=60, what="1500 done")
    pg_server.restart()
    faults += 1
    wait_until(lambda: completed() == 2000, timeout=120, what="the queue to drain")
    executions = worker_tasks.executions(dsn)
    distinct = {job_id for job_id, _, _ in executions}
    duplicates = len(executions) - len(distinct)
    in_flight_per_fault = 2 * 4
    assert len(distinct) == 2000
    assert duplicates <= faults * in_flight_per_fault, duplicates
    assert all(p.process.poll() is None for p in processes)
    print(f"\n2000 jobs, {faults} faults: {len(executions)} executions, {duplicates} duplicated")
    for process in processes:
        process.signal()
        assert process.wait() == 0


def test_hung_handlers_with_timeouts_do_not_block_the_next_job(dsn, workers):
    workers("-c", "1")
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("SELECT hopper.add_job('slow_sync', '{\"seconds\": 60}', timeout => '1s')")
        conn.execute("SELECT hopper.add_job('slow', '{\"seconds\": 60}', timeout => '1s')")
        last = conn.execute("SELECT id FROM hopper.add_job('echo', '{}')").fetchone()[0]
    took = wait_until(lambda: job_row(dsn, last)[0] == "completed", timeout=10, what="next job")
    assert took < 4
    with psycopg.connect(dsn) as conn:
        errors = conn.execute(
            "SELECT last_error FROM hopper.jobs WHERE task_identifier LIKE 'slow%'"
        ).fetchall()
    assert errors == [("timeout after 00:00:01",)] * 2


def test_long_open_transaction_slows_but_never_stops_processing(dsn, workers):
    workers("-c", "4")
    hold = threading.Event()

    def hold_transaction_open() -> None:
        with psycopg.connect(dsn) as conn:
            conn.execute("SELECT txid_current()")  # a snapshot that pins old rows
            hold.wait(30)

    holder = threading.Thread(target=hold_transaction_open)
    holder.start()
    try:
        done_in_windows = []
        with psycopg.connect(dsn, autocommit=True) as conn:
            for _ in range(6):
                before = scalar(dsn, "SELECT count(*) FROM hopper.jobs WHERE state = 'completed'")
                conn.execute(
                    "SELECT count(*) FROM hopper.add_jobs(%s)",
                    [Jsonb([{"identifier": "record"}] * 200)],
                )
                time.sleep(5)
                after = scalar(dsn, "SELECT count(*) FROM hopper.jobs WHERE state = 'completed'")
                done_in_windows.append(after - before)
        assert all(done == 200 for done in done_in_windows), done_in_windows
    finally:
        hold.set()
        holder.join()


def test_worker_backends_are_never_idle_in_transaction(dsn, workers):
    workers("-c", "4")
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(
            "SELECT count(*) FROM hopper.add_jobs(%s)", [Jsonb([{"identifier": "record"}] * 1000)]
        )
        worst = 0.0
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            row = conn.execute(
                "SELECT coalesce(max(extract(epoch FROM now() - state_change)), 0)"
                " FROM pg_stat_activity WHERE application_name LIKE 'hopper-%'"
                " AND state LIKE 'idle in transaction%'"
            ).fetchone()
            worst = max(worst, float(row[0]))
            if scalar(dsn, "SELECT count(*) FROM hopper.jobs WHERE state = 'completed'") == 1000:
                break
            time.sleep(0.01)
    assert worst < 0.5, worst


def test_worker_cancels_a_running_handler_on_request(dsn, workers):
    workers()
    job_id = scalar(dsn, "SELECT id FROM hopper.add_job('slow', '{\"seconds\": 60}')")
    wait_until(lambda: len(starts(dsn)) == 1, timeout=10, what="start")
    asked = time.monotonic()
    scalar(dsn, "SELECT count(*) FROM hopper.cancel_jobs(%s, 'user asked')", [[job_id]])
    wait_until(lambda: job_row(dsn, job_id)[0] == "cancelled", timeout=5, what="cancellation")
    assert time.monotonic() - asked < 1.5
    with psycopg.connect(dsn) as conn:
        assert conn.execute(
            "SELECT last_error, attempts FROM hopper.jobs WHERE id = %s", [job_id]
        ).fetchone() == ("user asked", 1)
