"""A worker behind a network that fails after its request reached the server."""

from __future__ import annotations

import logging
import time

import worker_tasks
from netproxy import Proxy, claim_held_before_its_commit, lose_a_claims_reply
from sqlcalls import add_job, job
from workerprocs import wait_until, worker_in_thread

import hopper


def test_a_claim_whose_reply_was_lost_is_released_and_its_job_runs(dsn, conn, caplog):
    """The claim commits, its reply never comes, the connection fails: the job is
    locked by a worker that heartbeats, so no rescue would ever free it. The worker
    releases what it holds but does not know of before it claims again."""
    conn.execute("SELECT hopper.set_queue('held', paused => true)")
    target = add_job(conn, "echo", {"n": 1}, queue_name="held")["id"]
    caplog.set_level(logging.WARNING, logger="hopper")
    with Proxy(dsn) as proxy:
        worker = hopper.Worker(proxy.dsn, worker_tasks.tasks, concurrency=1, poll_interval=0.2)
        with worker_in_thread(worker):
            lose_a_claims_reply(conn, proxy, worker, target, "held")
            wait_until(lambda: job(conn, target)["state"] == "completed", 15, "the job to run")
    done = job(conn, target)
    assert (done["attempts"], done["result"]) == (1, {"echo": {"n": 1}, "attempt": 1})
    assert f"released jobs of a claim whose reply was lost: [{target}]" in caplog.text


def test_a_failed_claim_that_commits_later_is_released_too(dsn, conn):
    """The claim's backend waits for a lock when the network fails, so it commits
    only after the worker gave it up and claimed again; the worker releases what
    it holds but does not know of at every heartbeat interval as well."""
    conn.execute("SELECT hopper.set_queue('held', paused => true)")
    target = add_job(conn, "echo", {"n": 2}, queue_name="held")["id"]
    with Proxy(dsn) as proxy:
        worker = hopper.Worker(
            proxy.dsn, worker_tasks.tasks, concurrency=1, poll_interval=0.2,
            heartbeat_interval=0.5, stale_after=5,
        )  # fmt: skip
        with worker_in_thread(worker):
            with claim_held_before_its_commit(conn, worker, "held"):
                proxy.cut()
                time.sleep(1)  # the worker claims again (nothing: the job is locked)
            # the first claim has committed, to nobody
            wait_until(lambda: job(conn, target)["state"] == "completed", 15, "the job to run")
    assert job(conn, target)["attempts"] == 1
