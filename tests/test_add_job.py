"""add_job: defaults, transactions, notifications and the job-key table of SPEC.md 3.2."""

from __future__ import annotations

from datetime import timedelta

import psycopg
import pytest
from psycopg.types.json import Jsonb
from sqlcalls import add_job, call, call_one, claim, job, jobs

import hopper


def fail_once(conn, job_id, worker="w1"):
    claimed = claim(conn, worker)
    assert [j["id"] for j in claimed] == [job_id]
    return call_one(conn, "fail_job", worker, job_id, "boom")


def finish(conn, job_id, state):
    """Drive a job to a finished state through the public functions."""
    if state == "completed":
        assert call(conn, "complete_jobs", [job_id])[0]["state"] == "completed"
    elif state == "failed":
        assert call(conn, "permanently_fail_jobs", [job_id], "dead")[0]["state"] == "failed"
    else:  # cancelled: a job asked to cancel while running ends cancelled when failed
        task = job(conn, job_id)["task_identifier"]
        assert [j["id"] for j in claim(conn, "canceller", task_identifiers=[task])] == [job_id]
        conn.execute("UPDATE hopper._jobs SET cancel_requested = true WHERE id = %s", [job_id])
        assert call_one(conn, "fail_job", "canceller", job_id, "stop")["state"] == "cancelled"


def test_plain_job_gets_documented_defaults(conn):
    added = add_job(conn, "send_email", {"to": "a@b.c"})
    assert added["outcome"] == "inserted"
    assert added["state"] == "pending"
    assert added["payload"] == {"to": "a@b.c"}
    assert (added["priority"], added["attempts"], added["max_attempts"]) == (0, 0, 25)
    assert added["queue_name"] is None and added["key"] is None
    assert added["errors"] == [] and added["revision"] == 0
    assert job(conn, added["id"])["state"] == "pending"


def test_null_payload_is_empty_object_and_future_run_at_is_scheduled(conn):
    added = add_job(
        conn, "t", None, run_at=conn.execute("SELECT now() + '1 hour'").fetchone()["?column?"]
    )
    assert added["payload"] == {}
    assert added["state"] == "scheduled"


def test_a_payload_with_the_character_u0000_is_refused_by_name(conn):
    """json text may escape U+0000, which jsonb cannot store: the cast inside add_job
    raised 22P05 "unsupported Unicode escape sequence", naming neither add_job nor
    its argument (a Python str with a NUL byte in it reached it so)."""
    refused = [
        ("SELECT hopper.add_job('t', %s)", ['{"a": "x\\u0000"}'], "add_job: payload"),
        ("SELECT hopper.add_job('t', %s::json)", ['["\\u0000"]'], "add_job: payload"),
        ("SELECT hopper.add_jobs(%s)", ['[{"identifier": "t", "payload": ["\\u0000"]}]'],
         "add_jobs: specs"),
    ]  # fmt: skip
    for query, params, named in refused:
        with pytest.raises(psycopg.errors.UntranslatableCharacter) as raised:
            conn.execute(query, params)
        assert raised.value.diag.message_primary == (
            f"{named} cannot hold the character U+0000 (\\u0000): jsonb cannot store it"
        )
    with pytest.raises(psycopg.errors.UntranslatableCharacter, match="add_job: payload"):
        hopper.add_job(conn, "t", {"text": "a\x00b"})
    assert conn.execute("SELECT count(*) AS n FROM hopper._jobs").fetchone()["n"] == 0
    # an escaped backslash before "u0000" is text like any other
    kept = call_one(conn, "add_job", "t", '{"a": "\\\\u0000"}')
    assert kept["payload"] == {"a": "\\u0000"}


def test_job_exists_only_if_transaction_commits(dsn):
    with psycopg.connect(dsn) as conn:
        conn.execute("SELECT hopper.add_job('rolled_back')")
        conn.rollback()
        conn.execute("SELECT hopper.add_job('committed')")
        conn.commit()
        rows = conn.execute("SELECT task_identifier FROM hopper.jobs").fetchall()
    assert rows == [("committed",)]


def wait_for_jobs(conn, worker_id: str = "idle") -> None:
    """A registered worker whose claim came up short: it now waits for a NOTIFY."""
    conn.execute("SELECT hopper.register_worker(%s)", [worker_id])
    assert conn.execute("SELECT * FROM hopper.get_jobs(%s, ARRAY['nothing'])", [worker_id])
    assert conn.execute(
        "SELECT waiting FROM hopper._workers WHERE id = %s", [worker_id]
    ).fetchone() == {"waiting": True}


def test_one_notification_per_runnable_add_and_none_for_future_jobs(conn, connect):
    wait_for_jobs(conn)
    listener = connect()
    listener.execute("LISTEN hopper_jobs")
    add_job(conn, "later", run_at=conn.execute("SELECT now() + '1 hour' AS t").fetchone()["t"])
    assert list(listener.notifies(timeout=0.3)) == []
    add_job(conn, "now")
    got = list(listener.notifies(timeout=0.3))
    assert [n.channel for n in got] == ["hopper_jobs"]


def test_no_notification_while_no_worker_waits(conn, connect):
    listener = connect()
    listener.execute("LISTEN hopper_jobs")
    add_job(conn, "nobody waits")
    assert list(listener.notifies(timeout=0.3)) == []
    conn.execute("SELECT hopper.register_worker('busy')")
    add_job(conn, "second")
    # a claim that fills its batch means the worker comes back by itself
    assert len(conn.execute("SELECT * FROM hopper.get_jobs('busy', NULL, 2)").fetchall()) == 2
    add_job(conn, "third")
    assert list(listener.notifies(timeout=0.3)) == []
    # a short claim makes it wait; from then on producers notify
    assert len(conn.execute("SELECT * FROM hopper.get_jobs('busy', NULL, 2)").fetchall()) == 1
    add_job(conn, "fourth")
    assert len(list(listener.notifies(timeout=0.3))) == 1
    conn.execute("SELECT hopper.unregister_worker('busy')")
    add_job(conn, "fifth")
    assert list(listener.notifies(timeout=0.3)) == []


def test_setting_notify_always_notifies_without_waiting_workers(conn, connect):
    listener = connect()
    listener.execute("LISTEN hopper_jobs")
    conn.execute("SELECT hopper.set_setting('notify', 'always')")
    add_job(conn, "t")
    assert len(list(listener.notifies(timeout=0.3))) == 1


# --- replace (the default) ---------------------------------------------------


def test_replace_without_existing_job_inserts(conn):
    assert add_job(conn, "t", job_key="k")["outcome"] == "inserted"


def test_replace_updates_active_job_in_place_with_new_values_and_defaults(conn):
    first = add_job(
        conn,
        "old_task",
        {"a": 1},
        job_key="k",
        queue_name="q",
        priority=5,
        max_attempts=3,
        flags=["f"],
        tags=["x"],
    )
    fail_once(conn, first["id"])  # attempts 1, last_error set, waiting for backoff
    second = add_job(conn, "new_task", {"b": 2}, job_key="k")
    assert second["outcome"] == "updated"
    assert second["id"] == first["id"]
    assert second["task_identifier"] == "new_task"
    assert second["payload"] == {"b": 2}
    assert second["queue_name"] is None  # omitted -> default
    assert (second["priority"], second["max_attempts"]) == (0, 25)
    assert second["flags"] is None and second["tags"] is None
    assert second["attempts"] == 0 and second["last_error"] is None
    assert second["revision"] == first["revision"] + 1
    assert second["state"] == "pending"
    assert len(jobs(conn)) == 1


def test_replace_after_finished_job_inserts_and_keeps_history(conn):
    for state in ("completed", "failed", "cancelled"):
        key = f"k-{state}"
        first = add_job(conn, key, job_key=key)
        finish(conn, first["id"], state)
        second = add_job(conn, key, job_key=key)
        assert second["outcome"] == "inserted", state
        assert second["id"] != first["id"]
        assert job(conn, first["id"])["key"] == key  # finished jobs keep their key


def test_replace_while_running_inserts_new_job_and_running_one_is_not_retried(conn):
    first = add_job(conn, "t", job_key="k")
    claim(conn, "w1")
    second = add_job(conn, "t", {"v": 2}, job_key="k")
    assert second["outcome"] == "inserted"
    assert second["id"] != first["id"]
    running = job(conn, first["id"])
    assert running["state"] == "running" and running["key"] is None
    failed = call_one(conn, "fail_job", "w1", first["id"], "boom")
    assert failed["state"] == "failed"  # no retry for the superseded run
    assert job(conn, second["id"])["key"] == "k"


def test_batch_payloads_merge_and_non_arrays_replace(conn):
    add_job(conn, "t", Jsonb([1, 2]), job_key="batch")
    merged = add_job(conn, "t", Jsonb([3]), job_key="batch")
    assert merged["payload"] == [1, 2, 3]
    replaced = add_job(conn, "t", {"x": 1}, job_key="batch")
    assert replaced["payload"] == {"x": 1}
    again = add_job(conn, "t", Jsonb([4]), job_key="batch")
    assert again["payload"] == [4]


# --- preserve_run_at ------------------------------------------------------------


def test_preserve_run_at_keeps_run_at_of_never_attempted_job(conn):
    later = conn.execute("SELECT now() + '1 hour' AS t").fetchone()["t"]
    first = add_job(conn, "t", job_key="k", run_at=later, job_key_mode="preserve_run_at")
    second = add_job(
        conn,
        "t",
        {"v": 2},
        job_key="k",
        run_at=later + timedelta(hours=5),
        job_key_mode="preserve_run_at",
    )
    assert second["outcome"] == "updated"
    assert second["run_at"] == first["run_at"]
    assert second["payload"] == {"v": 2}


def test_preserve_run_at_takes_new_run_at_once_attempted(conn):
    first = add_job(conn, "t", job_key="k")
    fail_once(conn, first["id"])
    target = conn.execute("SELECT now() + '3 hours' AS t").fetchone()["t"]
    second = add_job(conn, "t", job_key="k", run_at=target, job_key_mode="preserve_run_at")
    assert second["outcome"] == "updated"
    assert second["run_at"] == target


# --- unsafe_dedupe and dedupe ------------------------------------------------------


def test_unsafe_dedupe_returns_active_job_unchanged(conn):
    first = add_job(conn, "t", {"v": 1}, job_key="k")
    second = add_job(conn, "other", {"v": 2}, job_key="k", job_key_mode="unsafe_dedupe")
    assert second["outcome"] == "deduped"
    assert second["id"] == first["id"]
    assert job(conn, first["id"])["payload"] == {"v": 1}


def test_unsafe_dedupe_dedupes_against_running_job(conn):
    first = add_job(conn, "t", job_key="k")
    claim(conn)
    second = add_job(conn, "t", job_key="k", job_key_mode="unsafe_dedupe")
    assert (second["outcome"], second["id"], second["state"]) == ("deduped", first["id"], "running")


def test_unsafe_dedupe_after_failed_job_returns_it(conn):
    first = add_job(conn, "t", job_key="k")
    finish(conn, first["id"], "failed")
    second = add_job(conn, "t", job_key="k", job_key_mode="unsafe_dedupe")
    assert (second["outcome"], second["id"], second["state"]) == ("deduped", first["id"], "failed")
    assert len(jobs(conn)) == 1


def test_unsafe_dedupe_after_completed_or_cancelled_inserts(conn):
    for state in ("completed", "cancelled"):
        first = add_job(conn, state, job_key=state)
        finish(conn, first["id"], state)
        second = add_job(conn, state, job_key=state, job_key_mode="unsafe_dedupe")
        assert second["outcome"] == "inserted", state


def test_dedupe_returns_active_job_and_inserts_after_any_finished_one(conn):
    first = add_job(conn, "t", job_key="k")
    assert add_job(conn, "t", job_key="k", job_key_mode="dedupe")["id"] == first["id"]
    finish(conn, first["id"], "failed")
    again = add_job(conn, "t", job_key="k", job_key_mode="dedupe")
    assert again["outcome"] == "inserted"
    assert again["id"] != first["id"]


def test_keys_are_shared_across_task_identifiers(conn):
    first = add_job(conn, "a", job_key="shared")
    second = add_job(conn, "b", job_key="shared")
    assert second["id"] == first["id"]
    assert second["task_identifier"] == "b"


def test_keyed_and_unkeyed_inserts_fill_every_column_alike(conn):
    """The keyed insert (with ON CONFLICT) and the batch insert (without) are two
    statements: given the same arguments they must write the same job."""
    options = {
        "queue_name": "q", "run_at": "2001-02-03T04:05:06Z", "max_attempts": 3,
        "priority": -2, "flags": ["f"], "tags": ["t"], "timeout": "1 minute",
        "backoff": "linear", "backoff_delay": "2 seconds", "backoff_max": "1 hour",
        "dead_letter": "dl",
    }  # fmt: skip
    plain = add_job(conn, "t", {"a": 1}, **options)
    keyed = add_job(conn, "t", {"a": 1}, job_key="k", **options)
    for column in ("id", "key", "created_at", "updated_at"):
        assert (plain.pop(column), keyed.pop(column))[1] is not None
    assert plain == keyed
    assert plain["state"] == "pending" and plain["timeout"] == timedelta(minutes=1)
    defaults_plain, defaults_keyed = add_job(conn, "u"), add_job(conn, "u", job_key="k2")
    assert (defaults_plain["max_attempts"], defaults_plain["payload"]) == (25, {})
    assert (defaults_keyed["max_attempts"], defaults_keyed["payload"]) == (25, {})


def test_plain_add_and_fully_checked_add_write_the_same_job(conn):
    """add_job of an identifier and a payload (and a run_at) skips the full check and
    _insert_jobs; an explicit default option takes that path: the jobs must agree."""
    cases = {
        None: "pending",
        "2001-02-03T04:05:06Z": "pending",
        "2100-01-01T00:00:00Z": "scheduled",
    }
    for run_at, state in cases.items():
        plain = add_job(conn, "t", {"a": [1]}, run_at=run_at)
        checked = add_job(conn, "t", {"a": [1]}, run_at=run_at, priority=0)
        for column in ("id", "created_at", "updated_at", "run_at"):
            assert (plain.pop(column), checked.pop(column))[1] is not None
        assert plain == checked
        assert plain["state"] == state
