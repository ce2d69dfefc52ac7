"""add_jobs: one call, rows in input order with outcomes, repeated keys applied in order."""

from __future__ import annotations

from psycopg.types.json import Jsonb
from sqlcalls import add_job, call, jobs


def test_rows_come_back_in_input_order_with_outcomes(conn):
    existing = add_job(conn, "t", {"v": 0}, job_key="k1")
    specs = [
        {"identifier": "a", "payload": {"n": 1}},
        {"identifier": "b", "job_key": "k1", "payload": {"v": 1}},
        {"identifier": "c", "payload": {"n": 3}, "queue_name": "q", "priority": -1},
        {"identifier": "d", "job_key": "k1", "job_key_mode": "dedupe"},
        {"identifier": "e", "job_key": "k2"},
    ]
    rows = call(conn, "add_jobs", Jsonb(specs))
    assert [r["task_identifier"] for r in rows] == ["a", "b", "c", "b", "e"]
    assert [r["outcome"] for r in rows] == [
        "inserted", "updated", "inserted", "deduped", "inserted",
    ]  # fmt: skip
    assert rows[1]["id"] == rows[3]["id"] == existing["id"]
    assert rows[2]["queue_name"] == "q" and rows[2]["priority"] == -1
    assert len(jobs(conn)) == 4


def test_plain_batch_records_follow_input_order(conn):
    """The plain path reads the array without sorting it; records and ids keep its order."""
    later = "2100-01-01T00:00:00Z"
    specs = [
        {"identifier": f"t{i % 7}", "payload": {"n": i}} | ({"run_at": later} if i % 5 == 0 else {})
        for i in range(3000)
    ]
    rows = call(conn, "add_jobs", Jsonb(specs))
    assert [r["payload"]["n"] for r in rows] == list(range(3000))
    assert [r["task_identifier"] for r in rows] == [f"t{i % 7}" for i in range(3000)]
    assert [r["state"] for r in rows] == [
        "scheduled" if i % 5 == 0 else "pending" for i in range(3000)
    ]
    ids = [r["id"] for r in rows]
    assert ids == sorted(ids) and len(set(ids)) == 3000
    stored = conn.execute("SELECT id, payload FROM hopper._jobs ORDER BY id").fetchall()
    assert [(r["id"], r["payload"]["n"]) for r in stored] == list(
        zip(ids, range(3000), strict=True)
    )


def test_composite_array_form_matches_jsonb_form(conn):
    rows = conn.execute(
        "SELECT * FROM hopper.add_jobs(ARRAY["
        " ROW('a', '{\"x\": 1}', NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL,"
        "     NULL, NULL, NULL, NULL, NULL, NULL, NULL)::hopper.job_spec,"
        " ROW('b', NULL, 'q', NULL, 3, 'key', NULL, NULL, NULL, NULL,"
        "     NULL, NULL, NULL, NULL, NULL, NULL, NULL)::hopper.job_spec])"
    ).fetchall()
    assert [(r["task_identifier"], r["payload"], r["max_attempts"]) for r in rows] == [
        ("a", {"x": 1}, 25),
        ("b", {}, 3),
    ]


def test_a_json_array_written_as_a_string_literal_is_taken(conn):
    """'[...]' from psql, or a driver's untyped string, matched both the jsonb and
    the job_spec[] form, and PostgreSQL refused the call as ambiguous (the README's
    own quick start did so). The text form takes it as the jsonb form would."""
    text = '[{"identifier": "a"}, {"identifier": "b", "priority": -1, "job_key": "k"}]'
    rows = conn.execute(f"SELECT * FROM hopper.add_jobs('{text}')").fetchall()
    assert [(r["task_identifier"], r["priority"], r["outcome"]) for r in rows] == [
        ("a", 0, "inserted"),
        ("b", -1, "inserted"),
    ]
    again = conn.execute(f"SELECT * FROM hopper.add_jobs('{text}', true)").fetchall()
    assert [r["outcome"] for r in again] == ["inserted", "updated"]
    sent = conn.execute("SELECT * FROM hopper.add_jobs(%s)", ['[{"identifier": "c"}]'])
    assert [r["task_identifier"] for r in sent.fetchall()] == ["c"]


def test_repeated_key_within_one_call_is_applied_in_order(conn):
    specs = [
        {"identifier": "t", "job_key": "k", "payload": [1]},
        {"identifier": "t", "job_key": "k", "payload": [2]},
        {"identifier": "t", "job_key": "k", "payload": [3], "job_key_mode": "dedupe"},
        {"identifier": "t", "job_key": "k", "payload": [4]},
    ]
    rows = call(conn, "add_jobs", Jsonb(specs))
    assert [r["outcome"] for r in rows] == ["inserted", "updated", "deduped", "updated"]
    assert rows[-1]["payload"] == [1, 2, 4]
    assert [j["payload"] for j in jobs(conn)] == [[1, 2, 4]]


def test_preserve_run_at_flag_applies_to_specs_without_a_mode(conn):
    later = conn.execute("SELECT now() + '1 hour' AS t").fetchone()["t"]
    add_job(conn, "t", job_key="k", run_at=later)
    spec = {"identifier": "t", "job_key": "k", "run_at": "2100-01-01T00:00:00Z"}
    (row,) = call(conn, "add_jobs", Jsonb([spec]), True)
    assert row["outcome"] == "updated" and row["run_at"] == later
    (row,) = call(conn, "add_jobs", Jsonb([{**spec, "job_key_mode": "replace"}]), True)
    assert row["run_at"].year == 2100


def test_empty_input_returns_no_rows(conn):
    assert call(conn, "add_jobs", Jsonb([])) == []
    assert (
        conn.execute("SELECT * FROM hopper.add_jobs(ARRAY[]::hopper.job_spec[])").fetchall() == []
    )


def test_batch_of_many_sends_one_notification(conn, connect):
    conn.execute("SELECT hopper.set_setting('notify', 'always')")
    listener = connect()
    listener.execute("LISTEN hopper_jobs")
    call(conn, "add_jobs", Jsonb([{"identifier": "t"}] * 500))
    assert len(list(listener.notifies(timeout=0.3))) == 1
    assert len(jobs(conn)) == 500


def test_records_of_inserted_jobs_are_the_view_rows(conn):
    """Inserted records come from RETURNING, not from the view: they must agree."""
    specs = [
        {"identifier": "a", "payload": {"n": 1}},
        {"identifier": "b", "run_at": "2100-01-01T00:00:00Z", "queue_name": "q", "priority": 3},
        {"identifier": "c", "payload": [1], "max_attempts": 2, "flags": ["f"], "tags": ["t"],
         "timeout": "5 minutes", "backoff": "linear", "dead_letter": "dl"},
    ]  # fmt: skip
    rows = call(conn, "add_jobs", Jsonb(specs))
    rows.append(add_job(conn, "d", {"x": 1}, run_at="2000-01-01T00:00:00Z"))
    for row in rows:
        assert row.pop("outcome") == "inserted"
    assert rows == jobs(conn)
    assert [r["state"] for r in rows] == ["pending", "scheduled", "pending", "pending"]
