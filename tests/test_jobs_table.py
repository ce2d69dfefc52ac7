"""The job table's own rules: a row's state, finished_at and lock agree, whatever writes it."""

from __future__ import annotations

import psycopg
import pytest

LOCK = "now(), 'w1'"
NO_LOCK = "NULL, NULL"

CONSISTENT = [
    ("pending", "NULL", NO_LOCK),
    ("scheduled", "NULL", NO_LOCK),
    ("waiting", "NULL", NO_LOCK),
    ("running", "NULL", LOCK),
    ("completed", "now()", NO_LOCK),
    ("failed", "now()", NO_LOCK),
    ("cancelled", "now()", NO_LOCK),
]

INCONSISTENT = [
    ("pending", "now()", NO_LOCK),  # an active job with finished_at
    ("pending", "NULL", LOCK),  # locked, but not running
    ("running", "NULL", NO_LOCK),  # running without a lock
    ("running", "NULL", "now(), NULL"),  # running without its worker
    ("running", "now()", LOCK),  # running and finished
    ("completed", "NULL", NO_LOCK),  # finished without finished_at
    ("cancelled", "now()", LOCK),  # finished and still locked
    ("done", "now()", NO_LOCK),  # no such state
]


def insert_row(conn: psycopg.Connection, state: str, finished_at: str, lock: str) -> int:
    return conn.execute(
        "INSERT INTO hopper._jobs (task_identifier, state, finished_at, locked_at, locked_by)"
        f" VALUES ('t', %s, {finished_at}, {lock}) RETURNING id",
        [state],
    ).fetchone()["id"]


@pytest.mark.parametrize(("state", "finished_at", "lock"), CONSISTENT)
def test_consistent_rows_are_stored(conn, state, finished_at, lock):
    job_id = insert_row(conn, state, finished_at, lock)
    row = conn.execute("SELECT state FROM hopper._jobs WHERE id = %s", [job_id]).fetchone()
    assert row == {"state": state}


@pytest.mark.parametrize(("state", "finished_at", "lock"), INCONSISTENT)
def test_inconsistent_rows_are_refused(conn, state, finished_at, lock):
    with pytest.raises(psycopg.errors.CheckViolation) as refused:
        insert_row(conn, state, finished_at, lock)
    assert refused.value.diag.constraint_name == "jobs_state_consistent"
    assert conn.execute("SELECT count(*) AS n FROM hopper._jobs").fetchone() == {"n": 0}


def test_an_update_that_breaks_the_rules_is_refused(conn):
    job_id = insert_row(conn, "completed", "now()", NO_LOCK)
    with pytest.raises(psycopg.errors.CheckViolation):
        conn.execute("UPDATE hopper._jobs SET state = 'pending' WHERE id = %s", [job_id])
    row = conn.execute("SELECT state FROM hopper._jobs WHERE id = %s", [job_id]).fetchone()
    assert row == {"state": "completed"}
