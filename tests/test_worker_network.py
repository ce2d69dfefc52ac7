"""A worker behind a network that fails after its request reached the server."""

from __future__ import annotations

import logging
import time

import worker_tasks
from netproxy import Proxy, claim_held_before_its_commit, lose_a_claims_reply
from sqlcalls import add_job, job
from workerprocs import a_call_waits_for_a_lock, wait_until, worker_in_thread

import hopper
from hopper._worker import SETTLE_TIMEOUT


def hold_its_completion(conn, holder, job_id: int) -> None:
    """Once the job runs, holder locks its row; returns when the worker's report
    of it waits for that lock (the completion goes on when holder ends)."""
    wait_until(lambda: job(conn, job_id)["state"] == "running", 10, "the job to start")
    holder.execute("BEGIN")
    holder.execute("SELECT FROM hopper._jobs WHERE id = %s FOR UPDATE", [job_id])
    wait_until(lambda: a_call_waits_for_a_lock(conn, "complete_claimed_job_ids"), 10, "the report")


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


def test_a_worker_whose_database_is_out_of_reach_stops_within_the_settle_timeout(dsn, conn, caplog):
    """The last report cannot be sent and the worker cannot unregister: it gives up
    after SETTLE_TIMEOUT instead of retrying for many minutes, and says so; the job
    stays held by its id, for other workers to rescue."""
    target = add_job(conn, "slow_sync", {"seconds": 1})["id"]
    caplog.set_level(logging.ERROR, logger="hopper")
    with Proxy(dsn) as proxy:
        worker = hopper.Worker(proxy.dsn, worker_tasks.tasks, concurrency=1, poll_interval=0.2)
        with worker_in_thread(worker):
            wait_until(lambda: job(conn, target)["state"] == "running", 10, "the job to start")
            proxy.close()  # the database is out of reach from now on
            time.sleep(1.5)  # the job ends; its outcome cannot be sent
            stopping = time.monotonic()
        took = time.monotonic() - stopping
    assert took < SETTLE_TIMEOUT + 6, took  # and up to 5 s for the pools to close
    assert "stopped before 1 outcomes were reported" in caplog.text
    assert (job(conn, target)["state"], job(conn, target)["locked_by"]) == (
        "running", worker.worker_id,
    )  # fmt: skip


def test_a_second_stop_ends_the_last_reports_at_once(dsn, conn):
    target = add_job(conn, "slow_sync", {"seconds": 0.5})["id"]
    with Proxy(dsn) as proxy:
        worker = hopper.Worker(proxy.dsn, worker_tasks.tasks, concurrency=1, poll_interval=0.2)
        with worker_in_thread(worker):
            wait_until(lambda: job(conn, target)["state"] == "running", 10, "the job to start")
            proxy.close()
            time.sleep(1)
            worker._loop.call_soon_threadsafe(worker.stop)
            time.sleep(0.5)  # into its last reports, which cannot reach the database
            stopping = time.monotonic()
            worker._loop.call_soon_threadsafe(worker.stop)  # the second signal
        took = time.monotonic() - stopping
    assert took < 6, took  # the pools' closing: up to 5 s


def test_a_report_in_flight_when_the_worker_stops_is_sent_again_not_dropped(dsn, conn, connect):
    """Stopping cancels the reporter while its completion waits for a row lock; the
    worker's last report must send it again. Dropped, the job would be given back
    by unregister_worker and run a second time."""
    target = add_job(conn, "slow_sync", {"seconds": 0.5})["id"]
    worker = hopper.Worker(dsn, worker_tasks.tasks, concurrency=1, poll_interval=0.2)
    holder = connect()
    with worker_in_thread(worker):
        hold_its_completion(conn, holder, target)
        worker._loop.call_soon_threadsafe(worker.stop)
        time.sleep(0.5)  # the reporter is cancelled; the last report waits in turn
        holder.execute("COMMIT")
        # before the block's end stops the worker a second time, which would end
        # the last report at once
        wait_until(lambda: job(conn, target)["state"] != "running", 10, "the last report")
    done = job(conn, target)
    assert (done["state"], done["attempts"], done["result"]) == ("completed", 1, worker.worker_id)


def test_a_completion_whose_reply_was_lost_is_sent_again_and_logged_as_such(
    dsn, conn, connect, caplog
):
    """The completion commits, its reply is lost, the worker sends it again: the
    job is no longer held, because the first try completed it. The log says so,
    not that the job was taken from the worker."""
    target = add_job(conn, "slow_sync", {"seconds": 0.3})["id"]
    caplog.set_level(logging.INFO, logger="hopper")
    holder = connect()
    with Proxy(dsn) as proxy:
        worker = hopper.Worker(proxy.dsn, worker_tasks.tasks, concurrency=1, poll_interval=0.2)
        with worker_in_thread(worker):
            hold_its_completion(conn, holder, target)
            proxy.losing_replies.set()
            holder.execute("COMMIT")
            wait_until(lambda: job(conn, target)["state"] == "completed", 10, "the completion")
            proxy.cut()
            proxy.losing_replies.clear()
            wait_until(lambda: "sent again" in caplog.text, 10, "the completion sent again")
    done = job(conn, target)
    assert (done["state"], done["attempts"]) == ("completed", 1)
    assert (
        f"completion sent again not applied, jobs no longer held: [{target}] (most likely"
        " the earlier try, whose reply was lost, completed them)"
    ) in caplog.text
    assert "completion refused" not in caplog.text
