"""add_job's cost does not grow with the workers that ever ran."""

from __future__ import annotations

from plans import plan_with, shared_buffers_touched, statement_plans


def test_notification_test_reads_waiting_workers_only(conn):
    conn.execute(
        "INSERT INTO hopper._workers (id, registered_at, retired_at)"
        " SELECT 'old-' || i, now() - interval '1 day', now() FROM generate_series(1, 5000) AS i"
    )
    conn.execute("SELECT hopper.register_worker('idle')")
    conn.execute("ANALYZE hopper._workers")
    plans = statement_plans(conn, "SELECT hopper.add_job('t')", None, "hopper.add_job('t')")
    waiting_test = plan_with(plans, "w.waiting")
    assert "Seq Scan" not in waiting_test
    assert shared_buffers_touched(waiting_test) <= 3, waiting_test
    # and the test still finds a waiting worker
    conn.execute("UPDATE hopper._workers SET waiting = true WHERE id = 'idle'")
    conn.execute("LISTEN hopper_jobs")
    conn.execute("SELECT hopper.add_job('t')")
    assert len(list(conn.notifies(timeout=1, stop_after=1))) == 1
