"""Completing inside the handler's own transaction: writes and completion commit together."""

from __future__ import annotations

import asyncio
import time
from datetime import datetime

import psycopg
import pytest
import worker_tasks
from sqlcalls import add_job, job
from workerprocs import wait_for_listener, wait_until, worker_in_thread

import hopper


@pytest.fixture
def ledger(dsn, conn, monkeypatch):
    monkeypatch.setenv("HOPPER_TEST_DSN", dsn)
    conn.execute("CREATE TABLE ledger (job_id bigint NOT NULL, amount int NOT NULL)")

    def rows() -> list[tuple[int, int]]:
        with psycopg.connect(dsn) as own:
            return own.execute("SELECT job_id, amount FROM ledger ORDER BY job_id").fetchall()

    return rows


def test_write_and_completion_commit_together(dsn, conn, ledger):
    async_job = add_job(conn, "ledger", {"amount": 5})["id"]
    sync_job = add_job(conn, "ledger_sync", {"amount": 7})["id"]
    assert hopper.run_once(dsn, worker_tasks.tasks) == 2
    assert ledger() == [(async_job, 5), (sync_job, 7)]
    assert (job(conn, async_job)["state"], job(conn, async_job)["result"]) == (
        "completed", {"booked": 5},
    )  # fmt: skip
    assert job(conn, sync_job)["state"] == "completed"


def test_a_commit_that_fails_completes_nothing_and_the_job_is_still_reported(dsn, conn):
    """The job counted as completed by its transaction once the completion ran,
    before the COMMIT: a COMMIT refused by a deferred constraint left a handler
    that caught the error and returned reported as done, so its job stayed running
    under a live worker (until the worker released jobs it did not know of)."""
    conn.execute(
        "CREATE TABLE deferred (id int PRIMARY KEY,"
        " parent int REFERENCES deferred (id) DEFERRABLE INITIALLY DEFERRED)"
    )
    tasks = hopper.TaskRegistry()

    @tasks.task("async_commit")
    async def async_commit(payload: dict, job: hopper.JobContext) -> str:
        try:
            async with job.transaction("in the transaction") as own:
                await own.execute("INSERT INTO deferred VALUES (%s, 0)", [payload["n"]])
        except psycopg.errors.ForeignKeyViolation:
            return "after the refused commit"
        return "unreachable"

    @tasks.task("sync_commit")
    def sync_commit(payload: dict, job: hopper.JobContext) -> str:
        try:
            with job.transaction("in the transaction") as own:
                own.execute("INSERT INTO deferred VALUES (%s, 0)", [payload["n"]])
        except psycopg.errors.ForeignKeyViolation:
            return "after the refused commit"
        return "unreachable"

    targets = [add_job(conn, task, {"n": n})["id"] for n, task in enumerate(tasks.names(), 1)]
    assert hopper.run_once(dsn, tasks) == 2
    for target in targets:
        done = job(conn, target)
        assert (done["state"], done["result"]) == ("completed", "after the refused commit")
    assert conn.execute("SELECT count(*) AS n FROM deferred").fetchone()["n"] == 0


def test_failing_handler_rolls_its_writes_back(dsn, conn, ledger):
    target = add_job(conn, "ledger", {"amount": 5, "explode": True})["id"]
    hopper.run_once(dsn, worker_tasks.tasks)
    assert ledger() == []
    assert job(conn, target)["last_error"] == "RuntimeError: handler failed after writing"


@pytest.mark.parametrize("kind", ["async", "sync"])
def test_a_nested_transaction_block_commits_nothing_on_its_own(dsn, conn, ledger, kind):
    """psycopg's conn.transaction() inside the job transaction is a savepoint. A sync
    handler's connection used to start idle, so that block began and committed a
    transaction of its own: its write stayed although the handler then failed."""
    tasks = hopper.TaskRegistry()

    @tasks.task("nested_async")
    async def nested_async(payload: dict, job: hopper.JobContext) -> None:
        async with job.transaction() as own:
            async with own.transaction():
                await own.execute("INSERT INTO ledger VALUES (%s, 1)", [job.job.id])
            raise RuntimeError("after the inner block")

    @tasks.task("nested_sync")
    def nested_sync(payload: dict, job: hopper.JobContext) -> None:
        with job.transaction() as own:
            with own.transaction():
                own.execute("INSERT INTO ledger VALUES (%s, 1)", [job.job.id])
            raise RuntimeError("after the inner block")

    target = add_job(conn, f"nested_{kind}", {}, max_attempts=1)["id"]
    assert hopper.run_once(dsn, tasks) == 1
    assert ledger() == []
    assert job(conn, target)["state"] == "failed"


def test_job_taken_away_before_commit_rolls_back_the_writes(dsn, conn, ledger):
    # each run loses the job just before committing; run_once runs it again at once
    target = add_job(conn, "ledger", {"amount": 5, "lose_job": True}, max_attempts=2)["id"]
    assert hopper.run_once(dsn, worker_tasks.tasks) == 2
    assert ledger() == []  # neither run that lost the job left its effect
    final = job(conn, target)
    assert (final["state"], final["attempts"]) == ("failed", 2)
    assert final["last_error"].endswith("with no attempt left")


def test_a_handler_can_catch_the_lost_job_by_its_documented_name(dsn, conn):
    """The README tells handlers that hopper.JobLost is raised; the package did not
    export it (only hopper._tasks had it), so "except hopper.JobLost" raised
    AttributeError instead."""
    caught: list[str] = []
    tasks = hopper.TaskRegistry()

    @tasks.task("lose")
    async def lose(payload: dict, job: hopper.JobContext) -> None:
        try:
            async with job.transaction():
                with psycopg.connect(dsn, autocommit=True) as other:
                    other.execute("SELECT hopper.force_unlock_workers(%s)", [[job.worker_id]])
        except hopper.JobLost as error:
            caught.append(str(error))

    target = add_job(conn, "lose", {}, max_attempts=1)["id"]
    hopper.run_once(dsn, tasks)
    assert caught == [f"job {target} is no longer held by this worker"]


def test_transaction_needs_a_dsn_worker(dsn, conn, ledger):
    target = add_job(conn, "ledger", {"amount": 5})["id"]
    with psycopg.connect(dsn, autocommit=True) as own:
        hopper.run_once(own, worker_tasks.tasks)
    assert "needs a worker started with a DSN" in job(conn, target)["last_error"]


def test_a_job_transaction_keeps_the_session_time_zone(dsn, conn):
    """The worker's own connections run in UTC (faster timestamp parsing); the
    handler's transaction sees the time zone the database gives its sessions."""
    database = conn.execute("SELECT current_database() AS name").fetchone()["name"]
    conn.execute(f"ALTER DATABASE \"{database}\" SET TimeZone = 'America/New_York'")
    conn.execute("CREATE TABLE seen_zone (zone text NOT NULL)")
    added = add_job(conn, "time_zones", run_at="2020-06-01T12:00:00+02:00")
    assert hopper.run_once(dsn, worker_tasks.tasks) == 1
    assert conn.execute("SELECT zone FROM seen_zone").fetchall() == [{"zone": "America/New_York"}]
    finished = job(conn, added["id"])
    assert finished["state"] == "completed"
    assert datetime.fromisoformat(finished["result"]["run_at"]) == added["run_at"]


def test_handlers_in_long_job_transactions_do_not_starve_the_worker(dsn, conn):
    """Job transactions must not take the connections the worker claims, reports and
    heartbeats on: with four handlers in 3 s transactions, a quick job still runs at
    once."""
    worker = hopper.Worker(dsn, worker_tasks.tasks, concurrency=8, poll_interval=30)
    with worker_in_thread(worker):
        wait_for_listener(conn)
        holders = [add_job(conn, "hold_transaction", {"seconds": 3})["id"] for _ in range(4)]
        wait_until(
            lambda: all(job(conn, h)["state"] == "running" for h in holders), 10, "the holders"
        )
        time.sleep(0.3)  # into their transactions
        quick = add_job(conn, "echo", {})["id"]
        took = wait_until(lambda: job(conn, quick)["state"] == "completed", 10, "the quick job")
        wait_until(
            lambda: all(job(conn, h)["state"] == "completed" for h in holders), 10, "the holders"
        )
    assert took < 1.5, took


JOB_BACKENDS = (
    "SELECT count(*) AS n FROM pg_stat_activity"
    " WHERE application_name = 'hopper-job' AND datname = current_database()"
)


@pytest.mark.parametrize("task", ["hold_transaction", "hold_transaction_sync"])
@pytest.mark.parametrize(("concurrency", "job_connections", "most"), [(8, 2, 2), (12, None, 10)])
def test_job_transactions_share_a_bounded_pool(dsn, conn, task, concurrency, job_connections, most):
    """More handlers want a transaction at once than job_connections allows (by
    default the concurrency, at most 10): no more connections are ever open, the
    other handlers wait their turn, and every job completes in its own transaction.
    Sync handlers opened a connection each, so the bound held for async ones only."""
    conn.execute("CREATE TABLE job_backends (job_id bigint NOT NULL, pid int NOT NULL)")
    worker = hopper.Worker(
        dsn, worker_tasks.tasks, concurrency=concurrency, job_connections=job_connections
    )
    seen = 0
    with worker_in_thread(worker):
        holders = [add_job(conn, task, {"seconds": 0.5})["id"] for _ in range(concurrency)]

        def all_done() -> bool:
            nonlocal seen
            seen = max(seen, conn.execute(JOB_BACKENDS).fetchone()["n"])
            return all(job(conn, h)["state"] == "completed" for h in holders)

        wait_until(all_done, 20, "every job")
    # the pool opens connections one by one while handlers wait: it may not
    # reach its bound on a slow machine, and must never pass it
    assert 1 <= seen <= most


def test_sync_job_transactions_reuse_their_connections(dsn, conn):
    """Each sync handler's transaction opened a connection of its own: a server
    backend started and ended for every job (200 such jobs a second here, against
    1,150 with a pool)."""
    conn.execute("CREATE TABLE job_backends (job_id bigint NOT NULL, pid int NOT NULL)")
    for _ in range(20):
        add_job(conn, "hold_transaction_sync", {"seconds": 0})
    worker = hopper.Worker(dsn, worker_tasks.tasks, concurrency=4, job_connections=2)
    assert asyncio.run(worker.run_once()) == 20
    backends = conn.execute("SELECT count(*) AS n, count(DISTINCT pid) AS pids FROM job_backends")
    row = backends.fetchone()
    assert row["n"] == 20 and 1 <= row["pids"] <= 2, row


def test_a_job_connection_that_died_while_idle_costs_no_attempt(dsn, conn, ledger):
    """The pools keep job connections between jobs. One that died meanwhile (a
    server restart, a firewall dropping idle connections) failed the next job's
    attempt at its BEGIN; now the transaction takes another connection."""
    worker = hopper.Worker(dsn, worker_tasks.tasks, concurrency=2, job_connections=2)
    with worker_in_thread(worker):
        first = [add_job(conn, task, {"amount": 1})["id"] for task in ("ledger", "ledger_sync")]
        wait_until(lambda: all(job(conn, j)["state"] == "completed" for j in first), 10, "two jobs")
        assert conn.execute(JOB_BACKENDS).fetchone()["n"] >= 2  # one pool of each kind
        conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
            " WHERE application_name = 'hopper-job' AND datname = current_database()"
        )
        wait_until(lambda: conn.execute(JOB_BACKENDS).fetchone()["n"] == 0, 10, "the kills")
        again = [add_job(conn, task, {"amount": 2})["id"] for task in ("ledger", "ledger_sync")]
        ended = ("completed", "scheduled")  # scheduled: failed, to be retried
        wait_until(lambda: all(job(conn, j)["state"] in ended for j in again), 10, "two more")
    for target in again:
        assert (job(conn, target)["state"], job(conn, target)["errors"]) == ("completed", [])
    assert sorted(ledger()) == sorted([(j, 1) for j in first] + [(j, 2) for j in again])


def test_a_timed_out_sync_handler_gives_its_job_connection_back(dsn, conn, ledger):
    """A sync handler's thread runs on past its timeout. Its job transaction held a
    pooled connection for as long as its query ran, so with job_connections=1 every
    other job transaction of the worker waited 20 s here (more timeouts than
    connections would have stopped them all). Its query is now cancelled."""
    worker = hopper.Worker(dsn, worker_tasks.tasks, concurrency=4, job_connections=1)
    sleeping = (
        "SELECT count(*) AS n FROM pg_stat_activity"
        " WHERE application_name = 'hopper-job' AND query LIKE '%%pg_sleep%%'"
        " AND state = 'active'"
    )
    with worker_in_thread(worker):
        stuck = add_job(conn, "stuck_in_transaction", {"seconds": 20}, max_attempts=1)["id"]
        wait_until(lambda: conn.execute(sleeping).fetchone()["n"] == 1, 10, "its query")
        after = add_job(conn, "ledger_sync", {"amount": 3})["id"]
        took = wait_until(lambda: job(conn, after)["state"] == "completed", 10, "the next job")
        assert conn.execute(sleeping).fetchone()["n"] == 0
    assert took < 3, took
    assert job(conn, stuck)["last_error"] == "timeout after 00:00:00.5"
    assert ledger() == [(after, 3)]


def test_job_connections_must_be_positive(dsn):
    with pytest.raises(ValueError, match=r"job_connections must be at least 1 \(got 0\)"):
        hopper.Worker(dsn, worker_tasks.tasks, job_connections=0)
