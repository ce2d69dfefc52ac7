"""prune and prune_expired read the finished jobs past the retention bound, not every
finished job kept."""

from __future__ import annotations

from plans import plan_with, shared_buffers_touched, statement_plans
from sqlcalls import add_job, call_one

FINISHED = """
INSERT INTO hopper._jobs (task_identifier, state, finished_at)
SELECT 'kept', s.state, now() - %(age)s::interval
FROM generate_series(1, %(n)s) AS i
CROSS JOIN LATERAL (SELECT (ARRAY['completed', 'failed', 'cancelled'])[1 + i %% 3] AS state) AS s
"""


def keep_30_000_and_some_past_retention(conn) -> None:
    conn.execute(FINISHED, {"n": 30_000, "age": "1 hour"})  # within every retention
    conn.execute(FINISHED, {"n": 30, "age": "2 days"})  # completed ones past 1 day
    conn.execute(FINISHED, {"n": 30, "age": "40 days"})  # all past 30 days


def assert_the_delete_reads_the_index_from_its_bound(conn, call: str) -> None:
    """Runs call (a SELECT of one function) and checks the plan of its DELETE."""
    conn.execute("ANALYZE hopper._jobs")
    plans = statement_plans(conn, f"SELECT {call} AS n", None, call.split("(")[0] + "(")
    delete = plan_with(plans, "Delete on _jobs")
    print(f"\n{call} with 30,000 finished jobs kept, buffers {shared_buffers_touched(delete)}:")
    print(delete)
    assert "Index Cond: (finished_at <" in delete, delete
    assert shared_buffers_touched(delete) <= 200, delete


def test_prune_reads_only_jobs_past_the_bound(conn):
    keep_30_000_and_some_past_retention(conn)
    active = add_job(conn, "active")["id"]
    assert_the_delete_reads_the_index_from_its_bound(conn, "hopper.prune()")

    left = conn.execute(
        "SELECT state, finished_at < now() - interval '1 day' AS old, count(*) AS n"
        " FROM hopper._jobs GROUP BY 1, 2 ORDER BY 1, 2"
    ).fetchall()
    assert left == [
        {"state": "cancelled", "old": False, "n": 10_000},
        {"state": "cancelled", "old": True, "n": 10},  # 2 days: within failed_retention
        {"state": "completed", "old": False, "n": 10_000},
        {"state": "failed", "old": False, "n": 10_000},
        {"state": "failed", "old": True, "n": 10},
        {"state": "pending", "old": None, "n": 1},
    ]
    pending = conn.execute("SELECT id FROM hopper._jobs WHERE state = 'pending'").fetchall()
    assert pending == [{"id": active}]
    assert call_one(conn, "prune", "1 day")["prune"] == 20


def test_prune_expired_reads_only_jobs_past_the_bound(conn):
    keep_30_000_and_some_past_retention(conn)
    assert_the_delete_reads_the_index_from_its_bound(conn, "hopper.prune_expired(15)")
    assert call_one(conn, "prune_expired")["prune_expired"] == 30 + 10 - 15
    assert call_one(conn, "prune_expired")["prune_expired"] == 0
