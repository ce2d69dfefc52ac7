"""rescue_stale_jobs' cost does not grow with the workers that ever ran."""

from __future__ import annotations

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
