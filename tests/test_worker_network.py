"""A worker behind a network that fails after its request reached the server."""

from __future__ import annotations

import logging

import worker_tasks
from netproxy import Proxy, lose_a_claims_reply
from sqlcalls import add_job, job
from workerprocs import wait_for_listener, wait_until, worker_in_thread

import hopper


def test_a_claim_whose_reply_was_lost_is_released_and_its_job_runs(dsn, conn, caplog):
    """The claim commits, its reply never comes, the connection fails: the job is
    locked by a worker that heartbeats, so no rescue would ever free it. The worker
    releases what it holds but does not know of before it claims again."""
    conn.execute("SELECT hopper.set_queue('held', paused => true)")
    target = add_job(conn, "echo", {"n": 1}, queue_name="held")["id"]
    caplog.set_level(logging.WARNING, logger="hopper")
    with Proxy(dsn) as proxy:
        worker = hopper.Worker(proxy.dsn, worker_tasks.tasks, concurrency=2, poll_interval=0.2)
        with worker_in_thread(worker):
            wait_for_listener(conn)
            lose_a_claims_reply(conn, proxy, target, "held")
            wait_until(lambda: job(conn, target)["state"] == "completed", 15, "the job to run")
    done = job(conn, target)
    assert (done["attempts"], done["result"]) == (1, {"echo": {"n": 1}, "attempt": 1})
    assert f"released jobs of a claim whose reply was lost: [{target}]" in caplog.text
