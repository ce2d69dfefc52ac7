"""Workers and producers keep working while the schema is upgraded under them.

psycopg prepares a statement it has run 5 times on a connection, and PostgreSQL
refuses a prepared statement whose result type has changed since. Each test
makes by hand the kind of change a migration would (migrate also recreates every
function, which is what makes PostgreSQL look at the statements again)."""

from __future__ import annotations

import logging
import time

import psycopg
import worker_tasks
from sqlcalls import add_job
from workerprocs import wait_until, worker_in_thread

import hopper


def recreate_functions(conn: psycopg.Connection, *names: str) -> None:
    """CREATE OR REPLACE of these functions as they are, as migrate does."""
    for (definition,) in conn.execute(
        "SELECT pg_get_functiondef(p.oid) FROM pg_proc AS p"
        " WHERE p.pronamespace = 'hopper'::regnamespace AND p.proname = any(%s)",
        [list(names)],
    ).fetchall():
        conn.execute(definition)


def add_a_column_to_the_job_record(conn: psycopg.Connection) -> None:
    """The view gains a column, and the function that builds records from rows
    fills it: what a migration adding a field to the job record does."""
    with conn.transaction():
        (view,) = conn.execute("SELECT pg_get_viewdef('hopper.jobs'::regclass)").fetchone()
        conn.execute(
            "CREATE OR REPLACE VIEW hopper.jobs AS"
            f" SELECT v.*, NULL::text AS extra FROM ({view.rstrip().rstrip(';')}) AS v"
        )
        (present,) = conn.execute(
            "SELECT pg_get_functiondef('hopper._present(hopper._jobs)'::regprocedure)"
        ).fetchone()
        last_field = "j.dead_letter_job_id\n    )::"
        assert last_field in present
        conn.execute(present.replace(last_field, "j.dead_letter_job_id, NULL::text\n    )::"))
        recreate_functions(conn, "get_jobs", "get_job", "rescue_stale_jobs", "release_jobs")


def completed(conn: psycopg.Connection) -> int:
    return conn.execute("SELECT count(*) FROM hopper._jobs WHERE state = 'completed'").fetchone()[0]


def test_a_column_added_to_the_job_record_leaves_a_running_worker_working(dsn):
    worker = hopper.Worker(dsn, worker_tasks.tasks, concurrency=2, poll_interval=0.2)
    with psycopg.connect(dsn, autocommit=True) as conn, worker_in_thread(worker):
        for n in range(30):  # enough claims for each pooled connection to prepare its own
            add_job(conn, "echo", {"n": n})
            wait_until(lambda n=n: completed(conn) == n + 1, 10, "the job to run")
        add_a_column_to_the_job_record(conn)
        for _ in range(5):
            add_job(conn, "echo", {})
        wait_until(lambda: completed(conn) == 35, 10, "the jobs added after the upgrade")


def test_a_statement_whose_result_type_changed_is_prepared_again(dsn, caplog):
    """heartbeat comes to return integer[] instead of bigint[]: the worker's
    prepared heartbeat is refused once, prepared again, and the worker goes on."""
    worker = hopper.Worker(
        dsn, worker_tasks.tasks, heartbeat_interval=0.02, stale_after=5, poll_interval=0.2
    )
    caplog.set_level(logging.WARNING, logger="hopper")
    with psycopg.connect(dsn, autocommit=True) as conn, worker_in_thread(worker):
        beats = "SELECT last_heartbeat_at FROM hopper._workers WHERE id = %s"
        wait_until(lambda: conn.execute(beats, [worker.worker_id]).fetchone(), 10, "a beat")
        time.sleep(1)  # 50 heartbeats: every pooled connection has prepared it
        with conn.transaction():
            conn.execute("DROP FUNCTION hopper.heartbeat(text)")
            conn.execute("""
                CREATE FUNCTION hopper.heartbeat(worker_id text) RETURNS integer[]
                LANGUAGE sql SECURITY DEFINER SET search_path = pg_catalog, pg_temp
                AS $$
                    UPDATE hopper._workers SET last_heartbeat_at = now()
                    WHERE id = worker_id RETURNING '{}'::integer[]
                $$
            """)  # fmt: skip
        (before,) = conn.execute(beats, [worker.worker_id]).fetchone()
        wait_until(
            lambda: conn.execute(beats, [worker.worker_id]).fetchone()[0] > before,
            5, "a heartbeat after the change",
        )  # fmt: skip
        add_job(conn, "echo", {})
        wait_until(lambda: completed(conn) == 1, 10, "a job after the change")
    assert "heartbeat failed" not in caplog.text


def test_a_producers_prepared_add_job_survives_a_field_added_to_its_record(dsn):
    """An application's long-lived connection: its add_job is prepared, and the
    migration runs elsewhere (psycopg forgets what it prepared on seeing ALTER on
    the connection itself)."""
    with psycopg.connect(dsn, autocommit=True) as app, psycopg.connect(dsn) as migration:
        for n in range(8):
            hopper.add_job(app, "echo", {"n": n})
        with migration.transaction():
            migration.execute("ALTER TYPE hopper.added_job ADD ATTRIBUTE extra text")
            recreate_functions(migration, "add_job")
        job = hopper.add_job(app, "echo", {"n": 8})
    assert (job.payload, job.outcome) == ({"n": 8}, hopper.Outcome.INSERTED)


def test_run_once_on_a_long_lived_connection_survives_a_field_added_to_the_record(dsn):
    """A test suite's connection runs run_once again and again: its claim is
    prepared, and a migration elsewhere adds a field to the job record."""
    with (
        psycopg.connect(dsn, autocommit=True) as app,
        psycopg.connect(dsn, autocommit=True) as migration,
    ):
        for n in range(8):
            add_job(migration, "echo", {"n": n})
            assert hopper.run_once(app, worker_tasks.tasks) == 1
        add_a_column_to_the_job_record(migration)
        add_job(migration, "echo", {"n": 8})
        assert hopper.run_once(app, worker_tasks.tasks) == 1
        assert completed(migration) == 9
