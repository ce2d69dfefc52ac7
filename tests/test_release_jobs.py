"""release_jobs: a worker gives back claimed jobs without losing an attempt."""

from __future__ import annotations

from sqlcalls import add_job, call, claim, job


def test_released_jobs_run_again_at_once_without_losing_an_attempt(conn):
    queued = add_job(conn, "t", queue_name="q")["id"]
    plain = add_job(conn, "t")["id"]
    claim(conn, "leaving", batch_size=5)
    released = call(conn, "release_jobs", "leaving", [queued, plain])
    assert [(r["id"], r["state"], r["attempts"], r["locked_by"]) for r in released] == [
        (queued, "pending", 0, None),
        (plain, "pending", 0, None),
    ]
    again = claim(conn, "other", batch_size=5)
    assert [(j["id"], j["attempts"]) for j in again] == [(queued, 1), (plain, 1)]


def test_release_is_fenced_to_the_lock_owner(conn):
    target = add_job(conn, "t")["id"]
    claim(conn, "owner")
    assert call(conn, "release_jobs", "someone_else", [target]) == []
    assert job(conn, target)["locked_by"] == "owner"


def test_released_job_that_was_asked_to_cancel_ends_cancelled(conn):
    target = add_job(conn, "t")["id"]
    claim(conn, "w1")
    conn.execute("UPDATE hopper._jobs SET cancel_requested = true WHERE id = %s", [target])
    (released,) = call(conn, "release_jobs", "w1", [target])
    assert (released["state"], released["last_error"]) == ("cancelled", "cancelled")
