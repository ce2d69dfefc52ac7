"""An in-process Worker wakes on NOTIFY (not the poll) and stops cleanly."""

from __future__ import annotations

import re
import time

import pytest
import worker_tasks
from psycopg import sql
from sqlcalls import add_job, job
from workerprocs import wait_for_listener, wait_until, worker_in_thread

import hopper


def test_idle_worker_starts_a_new_job_well_before_its_poll_interval(dsn, conn):
    worker = hopper.Worker(dsn, worker_tasks.tasks, concurrency=2, poll_interval=30)
    with worker_in_thread(worker):
        wait_for_listener(conn)
        time.sleep(0.2)
        latencies = []
        for _ in range(5):
            added = add_job(conn, "echo", {})["id"]
            latencies.append(
                wait_until(lambda a=added: job(conn, a)["state"] == "completed", 5, "completion")
            )
        assert max(latencies) < 1.0, latencies


def test_job_committed_after_the_worker_ran_dry_runs_long_before_the_poll(dsn, conn, connect):
    """add_job notifies only while a worker waits. Here the job is added while the
    only worker is busy (so no NOTIFY) and committed after it ran dry: the worker's
    quick re-polls after running dry must find it, not its 30 s poll."""
    worker = hopper.Worker(dsn, worker_tasks.tasks, concurrency=1, poll_interval=30)
    waiting = "SELECT bool_or(waiting) AS w FROM hopper._workers WHERE retired_at IS NULL"
    with worker_in_thread(worker):
        busy = add_job(conn, "slow_sync", {"seconds": 0.5})["id"]
        wait_until(lambda: job(conn, busy)["state"] == "running", 10, "the slow job to start")
        assert conn.execute(waiting).fetchone()["w"] is False
        producer = connect()
        producer.execute("BEGIN")
        late = add_job(producer, "echo", {})["id"]
        wait_until(lambda: conn.execute(waiting).fetchone()["w"], 10, "the worker to run dry")
        producer.execute("COMMIT")
        took = wait_until(lambda: job(conn, late)["state"] == "completed", 10, "the late job")
        assert took < 2.5, took


def test_worker_rejects_bad_concurrency(dsn):
    with pytest.raises(ValueError, match="concurrency must be at least 1"):
        hopper.Worker(dsn, worker_tasks.tasks, concurrency=0)


@pytest.mark.parametrize(
    ("option", "value", "message"),
    [
        ("poll_interval", 0, "poll_interval must be more than 0 seconds (got 0)"),
        ("poll_interval", -1.0, "poll_interval must be more than 0 seconds (got -1.0)"),
        ("heartbeat_interval", 0, "heartbeat_interval must be more than 0 seconds (got 0)"),
        ("schedule_interval", float("nan"), "schedule_interval must be more than 0 seconds"),
        ("grace_period", -1, "grace_period must not be negative (got -1)"),
    ],
)
def test_worker_rejects_intervals_that_would_call_the_database_without_pause(
    dsn, option, value, message
):
    with pytest.raises(ValueError, match=re.escape(message)):
        hopper.Worker(dsn, worker_tasks.tasks, **{option: value})
    assert hopper.Worker(dsn, worker_tasks.tasks, grace_period=0).grace_period == 0


def test_a_serial_queue_runs_back_to_back_not_at_poll_speed(dsn, conn):
    """Each completion frees the queue's one slot; the worker claims again as soon as
    its report is in, instead of waiting for a poll."""
    conn.execute("SELECT hopper.set_queue('serial', 1)")
    worker = hopper.Worker(dsn, worker_tasks.tasks, concurrency=4, poll_interval=30)
    with worker_in_thread(worker):
        for _ in range(20):
            add_job(conn, "echo", {}, queue_name="serial")
        done = "SELECT count(*) AS n FROM hopper.jobs WHERE state = 'completed'"
        took = wait_until(lambda: conn.execute(done).fetchone()["n"] == 20, 20, "20 completions")
        assert took < 1.0, took


def test_a_worker_told_of_each_job_claims_once_per_job(dsn, conn):
    """While its last claim came up short, the database counts the worker waiting
    and notifies it of whatever becomes claimable, so neither a job's end nor its
    report needs a claim of its own: that was three claims a job at low load."""
    conn.execute(sql.SQL("ALTER DATABASE {} SET track_functions = 'pl'").format(
        sql.Identifier(conn.info.dbname)))  # fmt: skip
    worker = hopper.Worker(dsn, worker_tasks.tasks, concurrency=4, poll_interval=30)
    with worker_in_thread(worker):
        wait_for_listener(conn)
        time.sleep(0.2)
        for _ in range(30):
            add_job(conn, "echo", {})
            time.sleep(0.01)
        done = "SELECT count(*) AS n FROM hopper.jobs WHERE state = 'completed'"
        wait_until(lambda: conn.execute(done).fetchone()["n"] == 30, 10, "30 completions")
    # a backend's function counts reach the statistics when it exits at the latest
    backends = (
        "SELECT count(*) AS n FROM pg_stat_activity"
        " WHERE datname = current_database() AND application_name LIKE 'hopper%%'"
    )
    wait_until(lambda: conn.execute(backends).fetchone()["n"] == 0, 10, "the backends to exit")
    claims = conn.execute(
        "SELECT calls AS n FROM pg_stat_user_functions"
        " WHERE schemaname = 'hopper' AND funcname = 'get_jobs'"
    ).fetchone()["n"]
    # a claim may take two jobs, and idle polls add a few; all counted, 10 at least
    assert 10 <= claims < 2 * 30, claims


def test_a_full_worker_told_of_new_jobs_waits_without_spinning(dsn, conn):
    """With notify = always a worker hears of every new job, also while all its slots
    are busy. It must then wait for a slot to free, not wake again at once for ever."""
    conn.execute("SELECT hopper.set_setting('notify', 'always')")
    worker = hopper.Worker(dsn, worker_tasks.tasks, concurrency=1, poll_interval=30)
    with worker_in_thread(worker):
        wait_for_listener(conn)
        busy = add_job(conn, "slow_sync", {"seconds": 1.5})["id"]
        wait_until(lambda: job(conn, busy)["state"] == "running", 10, "the slow job to start")
        cpu_before, wall_before = time.process_time(), time.monotonic()
        queued = add_job(conn, "echo", {})["id"]
        wait_until(lambda: job(conn, busy)["state"] == "completed", 10, "the slow job")
        cpu = time.process_time() - cpu_before
        wall = time.monotonic() - wall_before
        wait_until(lambda: job(conn, queued)["state"] == "completed", 5, "the queued job")
    assert cpu < 0.3 * wall, f"the worker used {cpu:.2f} s of CPU in {wall:.2f} s while full"


def test_a_stray_cancel_notification_does_not_stop_the_listener(dsn, conn):
    """Any role may NOTIFY any channel: a payload that is not a job id is ignored,
    and the listener still hands on cancellations (the heartbeat, every 5 s, would
    only pick them up later)."""
    worker = hopper.Worker(dsn, worker_tasks.tasks, concurrency=1, poll_interval=30)
    with worker_in_thread(worker):
        wait_for_listener(conn)
        conn.execute("NOTIFY hopper_cancel, 'not a job id'")
        busy = add_job(conn, "slow_sync", {"seconds": 30})["id"]
        wait_until(lambda: job(conn, busy)["state"] == "running", 10, "the slow job to start")
        conn.execute("SELECT count(*) FROM hopper.cancel_jobs(%s, 'user asked')", [[busy]])
        took = wait_until(lambda: job(conn, busy)["state"] == "cancelled", 10, "the cancellation")
    assert took < 2.0, took
