"""Every hopper function pins search_path, runs as the schema owner, and is not PUBLIC."""

from __future__ import annotations

import psycopg
import pytest

FUNCTIONS = """
SELECT p.proname, p.prosecdef, p.proconfig,
       has_function_privilege('public_probe', p.oid, 'EXECUTE') AS public_can_execute
FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
WHERE n.nspname = 'hopper'
ORDER BY p.proname
"""

PUBLIC_API = {
    "add_job", "add_jobs", "get_jobs", "get_job", "complete_job", "complete_claimed_jobs",
    "complete_claimed_job_ids",
    "fail_job", "fail_claimed_jobs", "complete_jobs", "permanently_fail_jobs",
    "reschedule_jobs", "remove_job", "force_unlock_workers", "job_status", "queue_stats",
    "set_queue", "prune", "get_setting", "set_setting",
}  # fmt: skip


def test_every_function_is_pinned_definer_and_revoked_from_public(conn):
    conn.execute("DROP ROLE IF EXISTS public_probe")
    conn.execute("CREATE ROLE public_probe")
    functions = conn.execute(FUNCTIONS).fetchall()
    names = {f["proname"] for f in functions}
    assert names >= PUBLIC_API
    for function in functions:
        assert function["prosecdef"], function["proname"]
        assert "search_path=pg_catalog, pg_temp" in function["proconfig"], function["proname"]
        # add_jobs' large batches pass through tuplestores: more memory there
        batch_memory = {"work_mem=64MB"} if function["proname"] == "add_jobs" else set()
        assert set(function["proconfig"]) <= {
            "search_path=pg_catalog, pg_temp",
            "plan_cache_mode=force_generic_plan",
            "jit=off",
            "enable_seqscan=off",
            *batch_memory,
        }, function["proname"]
        assert not function["public_can_execute"], function["proname"]


def test_a_role_without_grants_cannot_add_jobs(dsn, conn):
    conn.execute("DROP OWNED BY outsider") if _role_exists(conn, "outsider") else None
    conn.execute("DROP ROLE IF EXISTS outsider")
    conn.execute("CREATE ROLE outsider LOGIN")
    conn.execute("GRANT USAGE ON SCHEMA hopper TO outsider")
    with psycopg.connect(dsn, user="outsider", autocommit=True) as outsider:
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            outsider.execute("SELECT hopper.add_job('t')")
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            outsider.execute("SELECT * FROM hopper._jobs")
    assert conn.execute("SELECT count(*) AS n FROM hopper._jobs").fetchone()["n"] == 0


def _role_exists(conn, name: str) -> bool:
    return conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", [name]).fetchone() is not None
