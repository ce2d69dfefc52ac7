"""Workers apply the retention settings: finished jobs past them are deleted."""

from __future__ import annotations

import re
import time

import pytest
import worker_tasks
from sqlcalls import add_job, call
from workerprocs import WorkerProcess, wait_until, worker_in_thread

import hopper

KEPT = "SELECT task_identifier AS task, state FROM hopper.jobs ORDER BY id"


def finish_three_jobs(conn) -> None:
    """A completed job, a failed one, and a pending one nobody runs."""
    done = add_job(conn, "done")["id"]
    failed = add_job(conn, "failed")["id"]
    add_job(conn, "nobody_runs_this")
    call(conn, "complete_jobs", [done])
    call(conn, "permanently_fail_jobs", [failed], "x")


def test_a_worker_deletes_completed_jobs_past_completed_retention(dsn, conn, tmp_path):
    conn.execute("SELECT hopper.set_setting('completed_retention', '1 second')")
    finish_three_jobs(conn)
    worker = WorkerProcess(dsn, tmp_path, "pruner", "--prune-interval", "0.2")
    try:
        wait_until(lambda: len(conn.execute(KEPT).fetchall()) == 2, 10, "the completed job to go")
    finally:
        worker.signal()
        assert worker.wait() == 0
    assert conn.execute(KEPT).fetchall() == [
        {"task": "failed", "state": "failed"},  # failed_retention: 30 days
        {"task": "nobody_runs_this", "state": "pending"},
    ]


def test_a_worker_told_not_to_prune_keeps_them(dsn, conn):
    conn.execute("SELECT hopper.set_setting('completed_retention', '0.1 seconds')")
    finish_three_jobs(conn)
    worker = hopper.Worker(dsn, worker_tasks.tasks, prune_interval=None, poll_interval=0.1)
    with worker_in_thread(worker):
        time.sleep(1)
    assert len(conn.execute(KEPT).fetchall()) == 3


@pytest.mark.parametrize("interval", [0, -1.0, float("nan")])
def test_a_prune_interval_must_be_more_than_zero(dsn, interval):
    message = f"prune_interval must be more than 0 seconds, or None (got {interval})"
    with pytest.raises(ValueError, match=re.escape(message)):
        hopper.Worker(dsn, worker_tasks.tasks, prune_interval=interval)


def test_a_cli_worker_with_no_prune_keeps_them(dsn, conn, tmp_path):
    conn.execute("SELECT hopper.set_setting('completed_retention', '0.1 seconds')")
    finish_three_jobs(conn)
    worker = WorkerProcess(dsn, tmp_path, "keeper", "--prune-interval", "0.1", "--no-prune")
    try:
        time.sleep(1)
    finally:
        worker.signal()
        assert worker.wait() == 0
    assert len(conn.execute(KEPT).fetchall()) == 3
