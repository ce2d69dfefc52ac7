"""Admin and status functions: they change active jobs nobody holds and skip the rest."""

from __future__ import annotations

from datetime import timedelta

import psycopg
import pytest
from sqlcalls import add_job, call, call_one, claim, job


def test_complete_jobs_skips_running_and_finished_jobs(conn):
    running = add_job(conn, "t")["id"]
    claim(conn)
    pending = add_job(conn, "t")["id"]
    done = call(conn, "complete_jobs", [running, pending, 12345])
    assert [(d["id"], d["state"]) for d in done] == [(pending, "completed")]
    assert call(conn, "complete_jobs", [pending]) == []
    assert job(conn, running)["state"] == "running"


def test_permanently_fail_jobs_sets_error_and_sends_dead_letter(conn):
    target = add_job(conn, "t", dead_letter="dlq")["id"]
    failed = call(conn, "permanently_fail_jobs", [target], "bad data")
    assert [(f["state"], f["last_error"]) for f in failed] == [("failed", "bad data")]
    assert job(conn, failed[0]["dead_letter_job_id"])["task_identifier"] == "dlq"
    assert call(conn, "permanently_fail_jobs", [target], "again") == []


def test_reschedule_jobs_updates_given_fields_of_unlocked_jobs(conn):
    target = add_job(conn, "t", priority=3, max_attempts=5)["id"]
    running = add_job(conn, "t", priority=-9)["id"]
    claim(conn)
    later = conn.execute("SELECT now() + '2 hours' AS t").fetchone()["t"]
    changed = call(conn, "reschedule_jobs", [target, running], later, None, 2)
    assert len(changed) == 1
    row = changed[0]
    assert (row["id"], row["state"], row["run_at"]) == (target, "scheduled", later)
    assert (row["priority"], row["attempts"], row["max_attempts"]) == (3, 2, 5)
    assert row["revision"] == 1
    assert job(conn, running)["state"] == "running"


def test_reschedule_refuses_attempts_at_or_above_max_attempts(conn):
    target = add_job(conn, "t", max_attempts=3)["id"]
    with pytest.raises(psycopg.errors.InvalidParameterValue, match="below max_attempts"):
        call(conn, "reschedule_jobs", [target], None, None, 3)
    assert job(conn, target)["attempts"] == 0


def test_reschedule_never_revives_finished_jobs(conn):
    target = add_job(conn, "t")["id"]
    call(conn, "permanently_fail_jobs", [target], "x")
    assert call(conn, "reschedule_jobs", [target], None, None, 0) == []
    assert job(conn, target)["state"] == "failed"


def test_remove_job_deletes_unlocked_job_and_unkeys_running_one(conn):
    pending = add_job(conn, "t", job_key="a")["id"]
    assert call_one(conn, "remove_job", "a")["id"] == pending
    assert call_one(conn, "job_status", pending)["id"] is None
    running = add_job(conn, "t", job_key="b")["id"]
    claim(conn)
    removed = call_one(conn, "remove_job", "b")
    assert (removed["id"], removed["state"], removed["key"]) == (running, "running", None)
    assert call_one(conn, "fail_job", "w1", running, "x")["state"] == "failed"
    # NULL, as job_status of a missing job: it read as a record whose state was pending
    missing = conn.execute("SELECT hopper.remove_job('missing') IS NULL AS none").fetchone()
    assert missing["none"] is True


def test_force_unlock_workers_makes_jobs_runnable_and_frees_queue(conn):
    ids = [add_job(conn, "t", queue_name="q")["id"], add_job(conn, "t")["id"]]
    claim(conn, "dead", batch_size=5)
    unlocked = call(conn, "force_unlock_workers", ["dead", "other"])
    assert [(u["id"], u["state"], u["locked_by"]) for u in unlocked] == [
        (ids[0], "pending", None),
        (ids[1], "pending", None),
    ]
    assert [j["id"] for j in claim(conn, "w2", batch_size=5)] == ids
    assert [j["attempts"] for j in call(conn, "force_unlock_workers", ["w2"])] == [2, 2]


def test_job_status_and_view_show_derived_state(conn):
    later = conn.execute("SELECT now() + '1 hour' AS t").fetchone()["t"]
    target = add_job(conn, "t", run_at=later)["id"]
    assert job(conn, target)["state"] == "scheduled"
    conn.execute(
        "UPDATE hopper._jobs SET run_at = now() - interval '1 second' WHERE id = %s", [target]
    )
    # stored as scheduled until a claim promotes it, but it reads as pending
    assert job(conn, target)["state"] == "pending"
    assert call_one(conn, "job_status", 999)["id"] is None


def test_queue_stats_counts_states_per_task_and_queue(conn):
    add_job(conn, "a")
    add_job(conn, "a", queue_name="q")
    add_job(conn, "b", run_at=conn.execute("SELECT now() + '1 hour' AS t").fetchone()["t"])
    done = add_job(conn, "a")["id"]
    call(conn, "complete_jobs", [done])
    stats = {(s["task_identifier"], s["queue_name"]): s for s in call(conn, "queue_stats")}
    assert set(stats) == {("a", None), ("a", "q"), ("b", None)}
    assert (stats[("a", None)]["pending"], stats[("a", None)]["completed"]) == (1, 1)
    assert stats[("b", None)]["scheduled"] == 1
    assert stats[("a", None)]["oldest_pending_age"] >= timedelta(0)
    assert stats[("b", None)]["oldest_pending_age"] is None
    counts = ("waiting", "scheduled", "pending", "running", "completed", "failed", "cancelled")
    assert [stats[("a", "q")][c] for c in counts] == [0, 0, 1, 0, 0, 0, 0]


def test_settings_round_trip_and_normalise(conn):
    assert call_one(conn, "get_setting", "completed_retention")["get_setting"] == "1 day"
    stored = call_one(conn, "set_setting", "failed_retention", "48 hours")["set_setting"]
    assert stored == "48:00:00"
    assert call_one(conn, "get_setting", "failed_retention")["get_setting"] == "48:00:00"
    assert call_one(conn, "set_setting", "max_batch_size", " 500")["set_setting"] == "500"


def test_prune_respects_retention_per_state(conn):
    ids = {state: add_job(conn, state)["id"] for state in ("completed", "failed", "recent")}
    call(conn, "complete_jobs", [ids["completed"], ids["recent"]])
    call(conn, "permanently_fail_jobs", [ids["failed"]], "x")
    active = add_job(conn, "active")["id"]
    conn.execute(
        "UPDATE hopper._jobs SET finished_at = now() - interval '2 days' WHERE id = any(%s)",
        [[ids["completed"], ids["failed"]]],
    )
    assert call_one(conn, "prune")["prune"] == 1  # completed past 1 day; failed kept 30 days
    remaining = {r["id"] for r in conn.execute("SELECT id FROM hopper.jobs")}
    assert remaining == {ids["failed"], ids["recent"], active}
    assert call_one(conn, "prune", "1 day")["prune"] == 1  # every finished job older than a day
    assert call_one(conn, "prune", "0")["prune"] == 1
    assert {r["id"] for r in conn.execute("SELECT id FROM hopper.jobs")} == {active}


FINISHED_AGO = """
INSERT INTO hopper._jobs (task_identifier, state, finished_at)
SELECT %(state)s, %(state)s, now() - %(age)s::interval - make_interval(secs => i)
FROM generate_series(1, %(n)s) AS i RETURNING id
"""


def finished(conn, state: str, age: str, n: int = 1) -> list[int]:
    rows = conn.execute(FINISHED_AGO, {"state": state, "age": age, "n": n}).fetchall()
    return [r["id"] for r in rows]


def kept_ids(conn) -> set[int]:
    return {r["id"] for r in conn.execute("SELECT id FROM hopper.jobs")}


def test_prune_expired_deletes_what_retention_ends_oldest_first_in_batches(conn):
    old_completed = finished(conn, "completed", "2 days", 5)  # past 1 day: 5 s apart
    old_cancelled = finished(conn, "cancelled", "40 days")
    kept = finished(conn, "failed", "2 days") + finished(conn, "completed", "1 hour")
    active = add_job(conn, "active")["id"]
    assert call_one(conn, "prune_expired", 2)["prune_expired"] == 2
    gone = set(old_completed + old_cancelled) - kept_ids(conn)
    assert gone == {old_cancelled[0], old_completed[-1]}  # the two oldest
    assert call_one(conn, "prune_expired")["prune_expired"] == 4
    assert call_one(conn, "prune_expired")["prune_expired"] == 0
    assert kept_ids(conn) == {*kept, active}


def test_prune_expired_skips_jobs_another_session_holds(conn, connect):
    held, _other = finished(conn, "completed", "2 days", 2)
    holder = connect()
    holder.execute("BEGIN")
    holder.execute("SELECT FROM hopper._jobs WHERE id = %s FOR UPDATE", [held])
    assert call_one(conn, "prune_expired")["prune_expired"] == 1  # no wait for the lock
    holder.execute("ROLLBACK")
    assert kept_ids(conn) == {held}


@pytest.mark.parametrize(
    ("batch_size", "error", "message"),
    [
        (
            0,
            psycopg.errors.InvalidParameterValue,
            r"prune_expired: batch_size must be at least 1 \(got 0\)",
        ),
        (None, psycopg.errors.NullValueNotAllowed, "prune_expired: batch_size must not be null"),
    ],
)
def test_prune_expired_refuses_a_bad_batch_size_and_deletes_nothing(
    conn, batch_size, error, message
):
    finished(conn, "completed", "2 days")
    with pytest.raises(error, match=message):
        call(conn, "prune_expired", batch_size)
    assert conn.execute("SELECT count(*) AS n FROM hopper.jobs").fetchone()["n"] == 1


def test_force_unlock_of_a_job_with_no_attempt_left_fails_it(conn):
    target = add_job(conn, "t", max_attempts=1)["id"]
    claim(conn, "dead")
    (unlocked,) = call(conn, "force_unlock_workers", ["dead"])
    assert (unlocked["state"], unlocked["last_error"]) == (
        "failed", "unlocked from worker dead with no attempt left",
    )  # fmt: skip
    assert claim(conn, "w2") == []
    assert job(conn, target)["attempts"] == 1
