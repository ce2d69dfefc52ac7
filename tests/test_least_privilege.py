"""grant_producer / grant_worker: exactly the functions of SPEC.md section 7, no table access."""

from __future__ import annotations

import asyncio
import logging
import time
import uuid

import psycopg
import pytest
import worker_tasks
from netproxy import Proxy, lose_a_claims_reply
from psycopg.conninfo import make_conninfo
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb
from sqlcalls import add_job, call, job
from workerprocs import wait_until, worker_in_thread

import hopper

PRODUCER = {"add_job", "add_jobs", "job_status"}
WORKER = PRODUCER | {
    "register_worker", "unregister_worker", "heartbeat", "get_jobs", "get_job", "complete_job",
    "complete_claimed_jobs", "complete_claimed_job_ids", "fail_job", "fail_claimed_jobs",
    "release_jobs", "release_unknown_jobs",
    "rescue_stale_jobs", "set_progress", "enqueue_due_schedules", "next_schedule_firing",
    "prune_expired",
}  # fmt: skip

# one harmless call per operation; "me" is replaced by the role's name
OPERATIONS = {
    "add_job": "SELECT hopper.add_job('t')",
    # the jsonb form and the text form (an untyped literal)
    "add_jobs": 'SELECT hopper.add_jobs(\'[{"identifier": "t"}]\'::jsonb),'
    ' hopper.add_jobs(\'[{"identifier": "t"}]\')',
    "job_status": "SELECT hopper.job_status(1)",
    "register_worker": "SELECT hopper.register_worker('me')",
    "heartbeat": "SELECT hopper.register_worker('me'), hopper.heartbeat('me')",
    "unregister_worker": "SELECT hopper.unregister_worker('me-2')",
    "get_jobs": "SELECT hopper.get_jobs('me', ARRAY['none'])",
    "get_job": "SELECT hopper.get_job('me', ARRAY['none'])",
    "complete_job": "SELECT hopper.complete_job('me', 1)",
    "complete_claimed_jobs": "SELECT hopper.complete_claimed_jobs('me', ARRAY[1]::bigint[])",
    "complete_claimed_job_ids": "SELECT hopper.complete_claimed_job_ids('me', '{1}')",
    "fail_job": "SELECT hopper.fail_job('me', 1, 'x')",
    "fail_claimed_jobs": "SELECT hopper.fail_claimed_jobs('me', ARRAY[1]::bigint[], ARRAY['x'])",
    "release_jobs": "SELECT hopper.release_jobs('me', ARRAY[1]::bigint[])",
    "release_unknown_jobs": "SELECT hopper.release_unknown_jobs('me', '{}')",
    "rescue_stale_jobs": "SELECT hopper.rescue_stale_jobs()",
    "set_progress": "SELECT hopper.set_progress('me', 1, 5)",
    "enqueue_due_schedules": "SELECT hopper.enqueue_due_schedules()",
    "next_schedule_firing": "SELECT hopper.next_schedule_firing()",
    "add_schedule": "SELECT hopper.add_schedule('s', '@daily', 't')",
    "remove_schedule": "SELECT hopper.remove_schedule('s')",
    "read schedules view": "SELECT * FROM hopper.schedules",
    "cancel_jobs": "SELECT hopper.cancel_jobs(ARRAY[1]::bigint[])",
    "retry_jobs": "SELECT hopper.retry_jobs(ARRAY[1]::bigint[])",
    "complete_jobs": "SELECT hopper.complete_jobs(ARRAY[1]::bigint[])",
    "permanently_fail_jobs": "SELECT hopper.permanently_fail_jobs(ARRAY[1]::bigint[])",
    "reschedule_jobs": "SELECT hopper.reschedule_jobs(ARRAY[1]::bigint[])",
    "remove_job": "SELECT hopper.remove_job('k')",
    "force_unlock_workers": "SELECT hopper.force_unlock_workers(ARRAY['x'])",
    "prune": "SELECT hopper.prune()",
    "prune_expired": "SELECT hopper.prune_expired()",
    "set_setting": "SELECT hopper.set_setting('max_batch_size', '10')",
    "get_setting": "SELECT hopper.get_setting('max_batch_size')",
    "set_queue": "SELECT hopper.set_queue('q')",
    "queue_stats": "SELECT hopper.queue_stats()",
    "grant_worker": "SELECT hopper.grant_worker('me')",
    "read jobs table": "SELECT * FROM hopper._jobs",
    "write jobs table": "UPDATE hopper._jobs SET priority = 0",
    "read jobs view": "SELECT * FROM hopper.jobs",
    "read settings": "SELECT * FROM hopper.settings",
    "internal helper": "SELECT hopper._notify_jobs()",
}


@pytest.fixture
def roles(conn):
    """Roles are cluster-wide, so each test gets its own three."""
    suffix = uuid.uuid4().hex[:8]
    granted = {
        f"nobody_{suffix}": set(),
        f"producer_{suffix}": PRODUCER,
        f"worker_{suffix}": WORKER,
    }
    for role in granted:
        conn.execute(f"CREATE ROLE {role} LOGIN")
    call(conn, "grant_producer", f"producer_{suffix}")
    call(conn, "grant_worker", f"worker_{suffix}")
    conn.execute(f"GRANT USAGE ON SCHEMA hopper TO nobody_{suffix}")
    add_job(conn, "t")
    return granted


@pytest.mark.parametrize("operation", sorted(OPERATIONS))
def test_each_role_can_do_exactly_what_it_was_granted(dsn, roles, operation):
    for role, allowed in roles.items():
        statement = OPERATIONS[operation].replace("'me", f"'{role}")
        with psycopg.connect(dsn, user=role, autocommit=True) as conn:
            if operation in allowed:
                conn.execute(statement)
            else:
                with pytest.raises(psycopg.errors.InsufficientPrivilege):
                    conn.execute(statement)


def test_worker_role_runs_a_job_end_to_end(dsn, roles):
    worker_role = next(role for role in roles if role.startswith("worker_"))
    with psycopg.connect(dsn, user=worker_role, autocommit=True) as conn:
        conn.execute("SELECT hopper.add_jobs(%s)", [Jsonb([{"identifier": "w"}])])
        (job_id,) = conn.execute("SELECT id FROM hopper.get_jobs('w1', ARRAY['w'])").fetchone()
        state = conn.execute("SELECT state FROM hopper.complete_job('w1', %s)", [job_id]).fetchone()
    assert state == ("completed",)


def test_producer_and_worker_roles_run_a_dependency_chain(dsn, roles):
    """Dependencies need no privilege beyond the grants: the internal steps run
    as the schema owner."""
    producer_role = next(role for role in roles if role.startswith("producer_"))
    worker_role = next(role for role in roles if role.startswith("worker_"))
    with psycopg.connect(dsn, user=producer_role, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT id, state FROM hopper.add_jobs(%s)",
            [Jsonb([{"identifier": "a"}, {"identifier": "b", "depends_on": [-1]}])],
        ).fetchall()
    assert [state for _, state in rows] == ["pending", "waiting"]
    with psycopg.connect(dsn, user=worker_role, autocommit=True) as conn:
        conn.execute("SELECT hopper.get_jobs('w1', ARRAY['a'])")
        conn.execute("SELECT hopper.complete_job('w1', %s)", [rows[0][0]])
        (state,) = conn.execute("SELECT state FROM hopper.job_status(%s)", [rows[1][0]]).fetchone()
    assert state == "pending"


def test_grant_to_unknown_role_is_a_clear_error(conn):
    with pytest.raises(psycopg.errors.UndefinedObject, match='role_name "ghost" is not a role'):
        call(conn, "grant_worker", "ghost")


def test_a_worker_role_granted_before_schedules_existed_still_runs_jobs(dsn, roles, caplog):
    """Upgrading adds enqueue_due_schedules; a role granted earlier lacks it until
    grant_worker runs again. Its worker warns and runs jobs all the same."""
    worker_role = next(role for role in roles if role.startswith("worker_"))
    with psycopg.connect(dsn, autocommit=True) as owner:
        owner.execute(f"REVOKE EXECUTE ON FUNCTION hopper.enqueue_due_schedules FROM {worker_role}")
        add_job(owner, "echo", {})
    caplog.set_level(logging.WARNING, logger="hopper")
    ran = hopper.run_once(make_conninfo(dsn, user=worker_role), worker_tasks.tasks)
    assert ran == 1
    assert "may not call enqueue_due_schedules" in caplog.text


def test_a_worker_role_without_next_schedule_firing_enqueues_at_its_interval(dsn, roles, caplog):
    """A role granted before next_schedule_firing existed: its worker warns, keeps
    enqueueing due firings every schedule_interval, and runs them."""
    worker_role = next(role for role in roles if role.startswith("worker_"))
    with psycopg.connect(dsn, autocommit=True) as owner:
        owner.execute(f"REVOKE EXECUTE ON FUNCTION hopper.next_schedule_firing FROM {worker_role}")
        call(owner, "add_schedule", "s", "* * * * *", "echo")
        owner.execute("UPDATE hopper._schedules SET created_at = now() - interval '61 seconds'")
        caplog.set_level(logging.WARNING, logger="hopper")
        worker = hopper.Worker(
            make_conninfo(dsn, user=worker_role), worker_tasks.tasks, schedule_interval=0.2
        )
        with worker_in_thread(worker):
            wait_until(
                lambda: owner.execute(
                    "SELECT 1 FROM hopper.jobs WHERE state = 'completed'"
                ).fetchone(),
                10, "the firing's job to run",
            )  # fmt: skip
    assert "may not call next_schedule_firing" in caplog.text


def test_a_worker_role_without_release_unknown_jobs_warns_and_frees_them_when_it_stops(
    dsn, roles, caplog
):
    """A role granted before release_unknown_jobs existed: a job whose claim's reply
    was lost stays running while the worker lives, and is released when it stops."""
    worker_role = next(role for role in roles if role.startswith("worker_"))
    with psycopg.connect(dsn, autocommit=True, row_factory=dict_row) as owner:
        owner.execute(f"REVOKE EXECUTE ON FUNCTION hopper.release_unknown_jobs FROM {worker_role}")
        owner.execute("SELECT hopper.set_queue('held', paused => true)")
        target = add_job(owner, "echo", {}, queue_name="held")["id"]
        caplog.set_level(logging.WARNING, logger="hopper")
        with Proxy(make_conninfo(dsn, user=worker_role)) as proxy:
            worker = hopper.Worker(proxy.dsn, worker_tasks.tasks, concurrency=1, poll_interval=0.2)
            with worker_in_thread(worker):
                lose_a_claims_reply(owner, proxy, worker, target, "held")
                wait_until(
                    lambda: "may not call release_unknown_jobs" in caplog.text, 10, "the warning"
                )
                assert job(owner, target)["state"] == "running"
        released = job(owner, target)
    assert (released["state"], released["attempts"], released["locked_by"]) == ("pending", 0, None)


def test_a_worker_whose_heartbeat_fails_for_good_stops_and_says_why(dsn, roles, caplog):
    """A helper loop that dies would leave the worker running jobs without heartbeats,
    so that others rescue them while they run. Here the role loses heartbeat: the
    worker stops and run() raises the error."""
    worker_role = next(role for role in roles if role.startswith("worker_"))
    worker = hopper.Worker(
        make_conninfo(dsn, user=worker_role), worker_tasks.tasks,
        heartbeat_interval=0.2, stale_after=5, grace_period=1,
    )  # fmt: skip
    caplog.set_level(logging.ERROR, logger="hopper")
    with psycopg.connect(dsn, autocommit=True) as owner:
        owner.execute(f"REVOKE EXECUTE ON FUNCTION hopper.heartbeat FROM {worker_role}")
    with pytest.raises(psycopg.errors.InsufficientPrivilege, match="heartbeat"):
        asyncio.run(asyncio.wait_for(worker.run(), 20))
    assert "the worker's heartbeat failed; stopping" in caplog.text
    with psycopg.connect(dsn, autocommit=True) as owner:
        retired = owner.execute(
            "SELECT retired_at IS NOT NULL FROM hopper._workers WHERE id = %s", [worker.worker_id]
        ).fetchone()
    assert retired == (True,)  # it unregistered on its way out


def test_a_worker_role_without_prune_expired_warns_and_runs_jobs(dsn, roles, caplog):
    """A role granted before prune_expired existed: its worker warns once that
    finished jobs stay, and runs jobs all the same."""
    worker_role = next(role for role in roles if role.startswith("worker_"))
    with psycopg.connect(dsn, autocommit=True, row_factory=dict_row) as owner:
        owner.execute(f"REVOKE EXECUTE ON FUNCTION hopper.prune_expired FROM {worker_role}")
        caplog.set_level(logging.WARNING, logger="hopper")
        worker = hopper.Worker(
            make_conninfo(dsn, user=worker_role), worker_tasks.tasks, prune_interval=0.1
        )
        with worker_in_thread(worker):
            wait_until(lambda: "may not call prune_expired" in caplog.text, 10, "the warning")
            target = add_job(owner, "echo", {})["id"]
            wait_until(lambda: job(owner, target)["state"] == "completed", 10, "the job")
            time.sleep(0.3)
    assert caplog.text.count("may not call prune_expired") == 1
