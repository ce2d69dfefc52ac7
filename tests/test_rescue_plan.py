"""rescue_stale_jobs' cost does not grow with the workers that ever ran."""

from __future__ import annotations

import re

from plans import plan_with, shared_buffers_touched, statement_plans
from sqlcalls import add_job, call, claim


def test_rescue_looks_for_silent_workers_among_live_ones_only(conn):
    conn.execute(
        "INSERT INTO hopper._workers (id, registered_at, retired_at)"
        " SELECT 'old-' || i, now() - interval '1 day', now() FROM generate_series(1, 5000) AS i"
    )
    target = add_job(conn, "t")["id"]
    call(conn, "register_worker", "alive")
    call(conn, "register_worker", "silent")
    claim(conn, "silent")
    conn.execute(
        "UPDATE hopper._workers SET last_heartbeat_at = now() - interval '1 hour'"
        " WHERE id = 'silent'"
    )
    conn.execute("ANALYZE hopper._workers")
    query = "SELECT id, state FROM hopper.rescue_stale_jobs('30 seconds')"
    plans = statement_plans(conn, query, None, "hopper.rescue_stale_jobs(")
    retiring = plan_with(plans, "SET retired_at")
    assert "Seq Scan" not in retiring
    assert shared_buffers_touched(retiring) <= 12, retiring
    retired = conn.execute(
        "SELECT id FROM hopper._workers WHERE retired_at IS NOT NULL AND id NOT LIKE 'old-%'"
    ).fetchall()
    assert [r["id"] for r in retired] == ["silent"]
    assert conn.execute("SELECT state FROM hopper._jobs WHERE id = %s", [target]).fetchone() == {
        "state": "pending"
    }


WORKER_CALLS = {
    "heartbeat": "SELECT * FROM hopper.heartbeat('w1')",
    "rescue_stale_jobs": "SELECT id FROM hopper.rescue_stale_jobs('30 seconds')",
    "force_unlock_workers": "SELECT * FROM hopper.force_unlock_workers(ARRAY['gone'])",
    "release_unknown_jobs": "SELECT * FROM hopper.release_unknown_jobs('w1', '{1}')",
    "unregister_worker": "SELECT * FROM hopper.unregister_worker('w1')",
}


def test_worker_calls_read_running_jobs_through_their_index(conn):
    """Each of these finds a worker's running jobs by state alone; with 100,000
    pending and 100,000 finished jobs none may read the table through."""
    conn.execute(
        "INSERT INTO hopper._jobs (task_identifier, state, finished_at)"
        " SELECT 't', CASE WHEN i % 2 = 0 THEN 'pending' ELSE 'completed' END,"
        " CASE WHEN i % 2 = 1 THEN now() END FROM generate_series(1, 200000) AS i"
    )
    call(conn, "register_worker", "w1")
    for _ in range(3):
        add_job(conn, "work")
    claimed = {row["id"] for row in claim(conn, "w1", batch_size=3)}
    assert len(claimed) == 3
    conn.execute("ANALYZE hopper._jobs")
    for name, query in WORKER_CALLS.items():
        plans = statement_plans(conn, query, None, f"hopper.{name}(")
        scans = [p for p in plans if "Seq Scan on _jobs" in p]
        assert not scans, (name, scans)
        for plan in plans:
            removed = [int(n) for n in re.findall(r"Rows Removed by Filter: (\d+)", plan)]
            assert max(removed, default=0) < 100, (name, plan)
    # unregister_worker ran last: the worker's jobs are back to pending
    states = conn.execute(
        "SELECT state FROM hopper._jobs WHERE id = any(%s)", [list(claimed)]
    ).fetchall()
    assert states == [{"state": "pending"}] * 3
