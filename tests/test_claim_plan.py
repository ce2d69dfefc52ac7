"""The claim is an index scan whose cost does not grow with finished, future or locked jobs."""

from __future__ import annotations

import re

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


def claim_plans(conn) -> list[str]:
    """The plans of every statement run inside one get_jobs call."""
    notices: list[str] = []
    conn.add_notice_handler(lambda diag: notices.append(diag.message_primary or ""))
    for setting in (
        "auto_explain.log_min_duration = 0",
        "auto_explain.log_nested_statements = on",
        "auto_explain.log_analyze = on",
        "auto_explain.log_buffers = on",
        "auto_explain.log_timing = off",
        "auto_explain.log_level = notice",
    ):
        conn.execute(f"SET {setting}")
    conn.execute("SELECT count(*) FROM hopper.get_jobs('w1', batch_size => 5)")
    conn.execute("SET auto_explain.log_min_duration = -1")
    return notices


def claim_statement_plan(plans: list[str]) -> str:
    (plan,) = [p for p in plans if "WITH candidate AS MATERIALIZED" in p]
    return plan


def shared_buffers_touched(plan: str) -> int:
    first = re.search(r"Buffers: shared hit=(\d+)(?: read=(\d+))?(?: dirtied=(\d+))?", plan)
    assert first, plan
    return int(first.group(1)) + int(first.group(2) or 0)


def test_claim_cost_does_not_grow_with_finished_future_or_locked_jobs(conn, capsys):
    conn.execute("LOAD 'auto_explain'")
    for _ in range(5):
        conn.execute("SELECT hopper.add_job('work')")
    empty_plan = claim_statement_plan(claim_plans(conn))
    conn.execute("SELECT hopper.complete_claimed_jobs('w1', array_agg(id)) FROM hopper._jobs")

    conn.execute(FILL, {"n": 200_000, "kinds": 2})  # 100,000 finished + 100,000 future
    conn.execute(FILL, {"n": 2_000, "kinds": 4})  # and some failed and locked ones
    conn.execute("ANALYZE hopper._jobs")
    for _ in range(5):
        conn.execute("SELECT hopper.add_job('work')")
    plans = claim_plans(conn)
    full_plan = claim_statement_plan(plans)

    assert "Index Scan using jobs_pending_claim_order" in full_plan
    assert "Seq Scan on _jobs" not in "\n".join(plans)
    assert "Sort" not in full_plan.split("CTE open_queue")[0]
    empty_cost, full_cost = shared_buffers_touched(empty_plan), shared_buffers_touched(full_plan)
    print(f"\nshared buffers touched by the claim: empty table {empty_cost}, full {full_cost}")
    assert full_cost <= empty_cost + 10, (empty_cost, full_cost)
    with capsys.disabled():
        print("\nclaim plan with 100,000 finished and 100,000 future jobs:\n" + full_plan)
