"""cancel_jobs and retry_jobs."""

from __future__ import annotations

import threading

import psycopg
from sqlcalls import add_job, call, call_one, claim, job
from workerprocs import wait_until_blocked


def test_cancel_unlocked_jobs_at_once_with_reason(conn):
    pending = add_job(conn, "t")["id"]
    later = add_job(conn, "t", run_at=conn.execute("SELECT now() + '1 hour' AS t").fetchone()["t"])
    cancelled = call(conn, "cancel_jobs", [pending, later["id"], 999], "not needed")
    assert [(c["state"], c["last_error"]) for c in cancelled] == [("cancelled", "not needed")] * 2
    assert call(conn, "cancel_jobs", [pending]) == []
    assert claim(conn) == []


def test_cancel_running_job_requests_it_and_notifies_then_it_ends_cancelled(conn, connect):
    listener = connect()
    listener.execute("LISTEN hopper_cancel")
    target = add_job(conn, "t", max_attempts=5)["id"]
    call(conn, "register_worker", "w1")
    claim(conn, "w1")
    (requested,) = call(conn, "cancel_jobs", [target])
    assert (requested["state"], requested["cancel_requested"]) == ("running", True)
    assert [n.payload for n in listener.notifies(timeout=0.5, stop_after=1)] == [str(target)]
    assert call_one(conn, "heartbeat", "w1")["heartbeat"] == [target]
    failed = call_one(conn, "fail_job", "w1", target, "CancelledError")
    assert (failed["state"], failed["last_error"]) == ("cancelled", "cancelled")
    assert claim(conn, "w2") == []


def test_cancel_running_job_that_completes_anyway_is_completed(conn):
    target = add_job(conn, "t")["id"]
    claim(conn, "w1")
    call(conn, "cancel_jobs", [target])
    assert call_one(conn, "complete_job", "w1", target)["state"] == "completed"


def test_retry_failed_and_cancelled_jobs(conn):
    failed = add_job(conn, "t", max_attempts=1)["id"]
    claim(conn)
    call(conn, "fail_job", "w1", failed, "x")
    cancelled = add_job(conn, "t")["id"]
    call(conn, "cancel_jobs", [cancelled])
    done = add_job(conn, "t")["id"]
    call(conn, "complete_jobs", [done])
    retried = call(conn, "retry_jobs", [failed, cancelled, done])
    assert [(r["id"], r["state"], r["attempts"]) for r in retried] == [
        (failed, "pending", 0),
        (cancelled, "pending", 0),
    ]
    assert job(conn, failed)["finished_at"] is None


def test_retry_skips_job_whose_key_is_taken(conn):
    old = add_job(conn, "t", job_key="k")["id"]
    call(conn, "permanently_fail_jobs", [old])
    add_job(conn, "t", job_key="k")
    assert call(conn, "retry_jobs", [old]) == []


def test_retry_racing_a_new_job_of_the_same_key_skips_the_job(conn, connect):
    """A job of the same key added meanwhile (not committed when the retry looked)
    takes the key: the retry leaves the failed job alone instead of raising a
    unique violation, as it does when that job was there before."""
    old = add_job(conn, "t", job_key="k", max_attempts=1)["id"]
    call(conn, "permanently_fail_jobs", [old])
    producer, admin = connect(), connect()
    producer.execute("BEGIN")
    newer = add_job(producer, "t", job_key="k")["id"]
    outcome: dict = {}

    def retry() -> None:
        try:
            outcome["retried"] = call(admin, "retry_jobs", [old])
        except psycopg.Error as error:
            outcome["error"] = f"{type(error).__name__}: {error.diag.message_primary}"

    retrying = threading.Thread(target=retry)
    retrying.start()
    wait_until_blocked(conn, admin)  # on the new job's key
    producer.execute("COMMIT")
    retrying.join(10)
    assert outcome == {"retried": []}
    assert (job(conn, old)["state"], job(conn, newer)["state"]) == ("failed", "pending")


def test_retrying_two_failed_jobs_of_one_key_retries_the_newest(conn):
    first = add_job(conn, "t", job_key="k", max_attempts=1)["id"]
    call(conn, "permanently_fail_jobs", [first])
    second = add_job(conn, "t", job_key="k", max_attempts=1)["id"]
    call(conn, "permanently_fail_jobs", [second])
    assert [j["id"] for j in call(conn, "retry_jobs", [first, second])] == [second]
    assert (job(conn, first)["state"], job(conn, second)["state"]) == ("failed", "pending")
