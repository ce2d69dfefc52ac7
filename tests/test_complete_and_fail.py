"""complete/fail (single and batch): fencing, results, backoff, permanent failure, dead letters."""

from __future__ import annotations

import math
from datetime import timedelta

import pytest
from psycopg.types.json import Jsonb
from sqlcalls import add_job, call, call_one, claim, job


def claimed_job(conn, worker="w1", **options):
    added = add_job(conn, "t", **options)
    assert [j["id"] for j in claim(conn, worker)] == [added["id"]]
    return added["id"]


def test_complete_stores_result_and_finishes(conn):
    job_id = claimed_job(conn)
    done = call_one(conn, "complete_job", "w1", job_id, {"sent": True})
    assert done["state"] == "completed"
    assert done["result"] == {"sent": True}
    assert done["locked_by"] is None and done["finished_at"] is not None
    assert job(conn, job_id)["result"] == {"sent": True}


def test_only_the_lock_owner_can_complete_or_fail(conn):
    job_id = claimed_job(conn, "owner")
    assert call_one(conn, "complete_job", "intruder", job_id)["id"] is None
    assert call_one(conn, "fail_job", "intruder", job_id, "x")["id"] is None
    assert call(conn, "complete_claimed_jobs", "intruder", [job_id]) == []
    assert call(conn, "fail_claimed_jobs", "intruder", [job_id], ["x"]) == []
    current = job(conn, job_id)
    assert (current["state"], current["locked_by"], current["errors"]) == ("running", "owner", [])


def test_completing_twice_changes_nothing_the_second_time(conn):
    job_id = claimed_job(conn)
    first = call_one(conn, "complete_job", "w1", job_id, {"n": 1})
    assert call_one(conn, "complete_job", "w1", job_id, {"n": 2})["id"] is None
    assert job(conn, job_id)["result"] == {"n": 1}
    assert job(conn, job_id)["finished_at"] == first["finished_at"]


def test_late_completion_after_reclaim_by_another_worker_changes_nothing(conn):
    job_id = claimed_job(conn, "slow")
    now = conn.execute("SELECT now() AS t").fetchone()["t"]
    assert [j["id"] for j in claim(conn, "fast", now=now + timedelta(hours=5))] == [job_id]
    assert call_one(conn, "complete_job", "slow", job_id, {"by": "slow"})["id"] is None
    assert call_one(conn, "complete_job", "fast", job_id, {"by": "fast"})["result"] == {
        "by": "fast"
    }


def test_batch_complete_with_results(conn):
    ids = [add_job(conn, "t")["id"] for _ in range(3)]
    claim(conn, batch_size=3)
    done = call(conn, "complete_claimed_jobs", "w1", ids, [Jsonb(1), Jsonb({"a": 2}), None])
    assert [(d["id"], d["state"], d["result"]) for d in done] == [
        (ids[0], "completed", 1),
        (ids[1], "completed", {"a": 2}),
        (ids[2], "completed", None),
    ]


def test_zero_retention_deletes_at_completion(conn):
    call(conn, "set_setting", "completed_retention", "0")
    job_id = claimed_job(conn)
    done = call_one(conn, "complete_job", "w1", job_id, {"ok": 1})
    assert (done["id"], done["state"], done["result"]) == (job_id, "completed", {"ok": 1})
    assert call_one(conn, "job_status", job_id)["id"] is None


def test_failure_is_retried_after_default_backoff_and_recorded(conn):
    job_id = claimed_job(conn)
    failed = call_one(conn, "fail_job", "w1", job_id, "smtp down")
    assert failed["state"] == "scheduled"
    assert failed["last_error"] == "smtp down"
    assert failed["locked_by"] is None and failed["finished_at"] is None
    assert failed["run_at"] - failed["updated_at"] == pytest.approx(
        timedelta(seconds=math.exp(1)), abs=timedelta(milliseconds=1)
    )
    assert [(e["attempt"], e["message"]) for e in failed["errors"]] == [(1, "smtp down")]


@pytest.mark.parametrize(
    ("options", "expected_seconds"),
    [
        ({}, [math.exp(1), math.exp(2), math.exp(3), math.exp(4)]),
        ({"backoff_delay": "10 seconds"}, [10, 20, 40, 80]),
        ({"backoff": "linear", "backoff_delay": "10 seconds"}, [10, 20, 30, 40]),
        ({"backoff": "fixed", "backoff_delay": "7 seconds"}, [7, 7, 7, 7]),
        ({"backoff_delay": "10 seconds", "backoff_max": "25 seconds"}, [10, 20, 25, 25]),
        ({"backoff": "linear"}, [1, 2, 3, 4]),
    ],
)
def test_backoff_policies(conn, options, expected_seconds):
    job_id = add_job(conn, "t", **options)["id"]
    waits = []
    for _ in expected_seconds:
        due = job(conn, job_id)["run_at"]
        assert [j["id"] for j in claim(conn, now=due + timedelta(microseconds=1))] == [job_id]
        failed = call_one(conn, "fail_job", "w1", job_id, "again")
        waits.append((failed["run_at"] - failed["updated_at"]).total_seconds())
    assert waits == pytest.approx(expected_seconds, abs=0.001)


def test_default_backoff_is_capped_at_ten_attempts(conn):
    job_id = add_job(conn, "t")["id"]
    conn.execute("UPDATE hopper._jobs SET attempts = 14 WHERE id = %s", [job_id])
    claim(conn)
    failed = call_one(conn, "fail_job", "w1", job_id, "x")
    assert (failed["run_at"] - failed["updated_at"]).total_seconds() == pytest.approx(
        math.exp(10), abs=0.001
    )


def test_exhausted_attempts_fail_permanently_without_retry(conn):
    job_id = claimed_job(conn, max_attempts=1)
    failed = call_one(conn, "fail_job", "w1", job_id, "fatal")
    assert failed["state"] == "failed"
    assert failed["finished_at"] is not None
    assert failed["dead_letter_job_id"] is None
    assert claim(conn, now=failed["finished_at"] + timedelta(days=1)) == []


def test_dead_letter_job_carries_the_failed_job(conn):
    job_id = claimed_job(
        conn,
        max_attempts=2,
        dead_letter="graveyard",
        tags=["billing"],
        job_key="invoice:1",
        payload={"invoice": 1},
    )
    call(conn, "fail_job", "w1", job_id, "first")
    due = job(conn, job_id)["run_at"]
    claim(conn, now=due)
    failed = call_one(conn, "fail_job", "w1", job_id, "second")
    assert failed["state"] == "failed"
    letter = job(conn, failed["dead_letter_job_id"])
    assert letter["task_identifier"] == "graveyard"
    assert letter["state"] == "pending"
    assert letter["payload"]["payload"] == {"invoice": 1}
    assert letter["payload"]["error"] == "second"
    sent = letter["payload"]["job"]
    assert sent["id"] == job_id and sent["key"] == "invoice:1" and sent["tags"] == ["billing"]
    assert (sent["attempts"], sent["max_attempts"]) == (2, 2)
    assert [e["message"] for e in sent["errors"]] == ["first", "second"]


def test_replacement_payload_retries_only_failed_elements(conn):
    job_id = claimed_job(conn, payload=Jsonb([{"to": "a"}, {"to": "b"}, {"to": "c"}]))
    failed = call_one(conn, "fail_job", "w1", job_id, "b bounced", Jsonb([{"to": "b"}]))
    assert failed["payload"] == [{"to": "b"}]
    assert failed["state"] == "scheduled"


def test_cancel_requested_job_that_fails_ends_cancelled(conn):
    job_id = claimed_job(conn)
    conn.execute(
        "UPDATE hopper._jobs SET cancel_requested = true, last_error = 'user asked' WHERE id = %s",
        [job_id],
    )
    failed = call_one(conn, "fail_job", "w1", job_id, "interrupted")
    assert (failed["state"], failed["last_error"]) == ("cancelled", "user asked")


def test_batch_fail_returns_changed_jobs(conn):
    ids = [add_job(conn, "t", max_attempts=m)["id"] for m in (1, 5)]
    claim(conn, batch_size=2)
    changed = call(conn, "fail_claimed_jobs", "w1", [*ids, 999], ["a", "b", "c"])
    assert [(c["id"], c["state"], c["last_error"]) for c in changed] == [
        (ids[0], "failed", "a"),
        (ids[1], "scheduled", "b"),
    ]


def test_permanent_failure_skips_remaining_attempts(conn):
    job_id = claimed_job(conn, max_attempts=10)
    failed = call_one(conn, "fail_job", "w1", job_id, "bad payload", None, True)
    assert (failed["state"], failed["attempts"], failed["last_error"]) == (
        "failed", 1, "bad payload",
    )  # fmt: skip
    other = claimed_job(conn, max_attempts=10)
    (batch,) = call(conn, "fail_claimed_jobs", "w1", [other], ["bad"], None, True)
    assert batch["state"] == "failed"


def test_set_progress_only_by_the_holder(conn):
    job_id = claimed_job(conn, "w1")
    assert call_one(conn, "set_progress", "w2", job_id, 50)["set_progress"] is False
    assert call_one(conn, "set_progress", "w1", job_id, 40)["set_progress"] is True
    assert job(conn, job_id)["progress"] == 40
    with pytest.raises(Exception, match="progress must be between 0 and 100"):
        call(conn, "set_progress", "w1", job_id, 101)


@pytest.mark.parametrize("retention", ["1 day", "0"])
def test_complete_claimed_job_ids_returns_only_the_ids_it_completed(conn, retention):
    call(conn, "set_setting", "completed_retention", retention)
    mine = [claimed_job(conn, "w1") for _ in range(2)]
    theirs = claimed_job(conn, "w2")
    completed = conn.execute(
        "SELECT hopper.complete_claimed_job_ids('w1', %s, %s::jsonb[]) AS ids",
        [[*mine, theirs], ['{"n": 1}', None, '{"n": 3}']],
    ).fetchone()["ids"]
    assert sorted(completed) == sorted(mine)
    assert job(conn, theirs)["state"] == "running"
    if retention == "0":
        assert conn.execute("SELECT count(*) AS n FROM hopper._jobs WHERE id = any(%s)",
                            [mine]).fetchone()["n"] == 0  # fmt: skip
    else:
        assert [job(conn, i)["result"] for i in mine] == [{"n": 1}, None]
        assert {job(conn, i)["state"] for i in mine} == {"completed"}
    again = conn.execute("SELECT hopper.complete_claimed_job_ids('w1', %s) AS ids", [mine])
    assert again.fetchone()["ids"] == []


def test_complete_claimed_job_ids_frees_queue_slots(conn):
    call(conn, "set_queue", "q", 1)
    first = claimed_job(conn, "w1", queue_name="q")
    add_job(conn, "t", queue_name="q")
    assert claim(conn, "w1") == []
    conn.execute("SELECT hopper.complete_claimed_job_ids('w1', %s)", [[first]])
    assert len(claim(conn, "w1")) == 1
