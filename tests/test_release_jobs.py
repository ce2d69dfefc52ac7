"""release_jobs: a worker gives back claimed jobs without losing an attempt."""

from __future__ import annotations

import psycopg
import pytest
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


def test_release_unknown_jobs_releases_what_the_worker_holds_outside_the_kept_ids(conn):
    kept, lost, other = (add_job(conn, "t")["id"] for _ in range(3))
    claim(conn, "w1", batch_size=2)  # kept and lost
    claim(conn, "w2")  # other
    released = call(conn, "release_unknown_jobs", "w1", [kept])
    assert [(r["id"], r["state"], r["attempts"], r["locked_by"]) for r in released] == [
        (lost, "pending", 0, None),
    ]
    assert [(job(conn, i)["state"], job(conn, i)["locked_by"]) for i in (kept, other)] == [
        ("running", "w1"),
        ("running", "w2"),
    ]
    assert call(conn, "release_unknown_jobs", "w1", [kept]) == []


def test_release_unknown_jobs_names_a_missing_argument(conn):
    target = add_job(conn, "t")["id"]
    claim(conn, "w1")
    with pytest.raises(psycopg.errors.NullValueNotAllowed, match="kept_job_ids"):
        call(conn, "release_unknown_jobs", "w1", None)
    assert job(conn, target)["state"] == "running"
