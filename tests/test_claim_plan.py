"""The claim is an index scan whose cost does not grow with finished, future or locked jobs."""

from __future__ import annotations

import pytest
from plans import plan_with, shared_buffers_touched, statement_plans

FILL = """
INSERT INTO hopper._jobs (task_identifier, state, run_at, finished_at, locked_at, locked_by)
SELECT 'filler', s.state,
       now() + CASE s.state WHEN 'scheduled' THEN interval '1 day' ELSE interval '-1 day' END,
       CASE WHEN s.state IN ('completed', 'failed') THEN now() END,
       CASE WHEN s.state = 'running' THEN now() END,
       CASE WHEN s.state = 'running' THEN 'busy' END
FROM generate_series(1, %(n)s) AS i
CROSS JOIN LATERAL (SELECT (ARRAY['completed', 'scheduled', 'failed', 'running'])
                           [1 + i %% %(kinds)s] AS state) AS s
"""


def claim_plans(conn, tasks: list[str] | None) -> list[str]:
    """The plans of the statements run by one get_jobs call, the call itself first."""
    query = "SELECT count(*) FROM hopper.get_jobs('w1', %s, 5)"
    return statement_plans(conn, query, [tasks], "FROM hopper.get_jobs")


def add_work(conn) -> None:
    for _ in range(5):
        conn.execute("SELECT hopper.add_job('work')")


def measured_claim(conn, tasks: list[str] | None) -> list[str]:
    """Claims 5 jobs twice (the first warms the session's plan and catalog caches)
    and returns the plans of the second claim."""
    for _ in range(2):
        conn.execute("SELECT hopper.complete_claimed_jobs('w1', ARRAY(SELECT id FROM hopper._jobs"
                     " WHERE state = 'running'))")  # fmt: skip
        add_work(conn)
        plans = claim_plans(conn, tasks)
    return plans


@pytest.mark.parametrize("tasks", [None, ["work", "other"]], ids=["any task", "task list"])
def test_claim_cost_does_not_grow_with_finished_future_locked_or_foreign_jobs(conn, tasks):
    conn.execute("LOAD 'auto_explain'")
    empty = shared_buffers_touched(measured_claim(conn, tasks)[0])

    conn.execute(FILL, {"n": 200_000, "kinds": 2})  # 100,000 finished + 100,000 future
    conn.execute(FILL, {"n": 2_000, "kinds": 4})  # and some failed and locked ones
    if tasks is not None:  # and pending jobs of tasks this worker does not run
        conn.execute(
            "INSERT INTO hopper._jobs (task_identifier, state, priority)"
            " SELECT 'foreign', 'pending', -1 FROM generate_series(1, 100000)"
        )
    conn.execute("ANALYZE hopper._jobs")
    plans = measured_claim(conn, tasks)
    full = shared_buffers_touched(plans[0])

    candidate_plan = plan_with(plans, "FOR UPDATE OF j SKIP LOCKED")
    assert "Index Scan using jobs_pending_by_task" in candidate_plan
    assert "Seq Scan on _jobs" not in "\n".join(plans)
    assert (
        len(
            conn.execute(
                "SELECT * FROM hopper.jobs WHERE state = 'running' AND task_identifier = 'work'"
            ).fetchall()
        )
        == 5
    )
    print(f"\nbuffers touched by one claim ({tasks}): empty table {empty}, full {full}")
    # A walk over the 200,000 other jobs would touch thousands of pages; what
    # grows is only the depth of the b-trees the claimed rows are looked up
    # (three times: lock, update, read back) and re-indexed in (logarithmic).
    assert full <= 2.5 * empty, (empty, full)
    if tasks is None:
        print("candidate walk with 100,000 finished and 100,000 future jobs:\n" + candidate_plan)
