"""An in-process Worker wakes on NOTIFY (not the poll) and stops cleanly."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest
import worker_tasks
from sqlcalls import add_job, job
from workerprocs import wait_until

import hopper


def test_idle_worker_starts_a_new_job_well_before_its_poll_interval(dsn, conn):
    worker = hopper.Worker(dsn, worker_tasks.tasks, concurrency=2, poll_interval=30)
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=lambda: loop.run_until_complete(worker.run()))
    thread.start()
    try:
        wait_until(
            lambda: conn.execute(
                "SELECT 1 FROM pg_stat_activity WHERE application_name = 'hopper-listener'"
                " AND datname = current_database()"
            ).fetchone(),
            timeout=10,
            what="listener",
        )
        time.sleep(0.2)
        latencies = []
        for _ in range(5):
            added = add_job(conn, "echo", {})["id"]
            latencies.append(
                wait_until(lambda a=added: job(conn, a)["state"] == "completed", 5, "completion")
            )
        assert max(latencies) < 1.0, latencies
    finally:
        loop.call_soon_threadsafe(worker.stop)
        thread.join(timeout=15)
    assert not thread.is_alive()


def test_worker_rejects_bad_concurrency(dsn):
    with pytest.raises(ValueError, match="concurrency must be at least 1"):
        hopper.Worker(dsn, worker_tasks.tasks, concurrency=0)
