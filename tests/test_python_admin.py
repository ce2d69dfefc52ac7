"""hopper.job_status, cancel_jobs and retry_jobs from Python, and their async twins."""

from __future__ import annotations

import asyncio

import psycopg
import pytest
import worker_tasks
from sqlcalls import add_job, call

import hopper
from hopper import aio


def test_job_status_follows_a_job_to_its_result(dsn, conn):
    added = add_job(conn, "add", {"a": 2, "b": 3})["id"]
    with psycopg.connect(dsn, autocommit=True) as own:
        before = hopper.job_status(own, added)
        hopper.run_once(dsn, worker_tasks.tasks)
        after = hopper.job_status(own, added)
        assert hopper.job_status(own, 424242) is None
    assert before is not None and after is not None
    assert (before.state, before.result) == (hopper.JobState.PENDING, None)
    assert (after.state, after.result, after.attempts) == (hopper.JobState.COMPLETED, 5, 1)


def test_cancel_jobs_changes_the_active_and_skips_the_rest(dsn, conn):
    finished = add_job(conn, "add", {"a": 1, "b": 1})["id"]
    hopper.run_once(dsn, worker_tasks.tasks)
    pending = add_job(conn, "t")["id"]
    running = add_job(conn, "r")["id"]
    call(conn, "get_jobs", "w1", ["r"])
    with psycopg.connect(dsn, autocommit=True) as own:
        changed = hopper.cancel_jobs(own, [running, 424242, finished, pending], "not needed")
        unchanged = hopper.job_status(own, finished)
    assert [j.id for j in changed] == [pending, running]
    assert (changed[0].state, changed[0].last_error) == ("cancelled", "not needed")
    assert (changed[1].state, changed[1].cancel_requested) == ("running", True)
    assert unchanged is not None and unchanged.state == "completed"


def test_retry_jobs_runs_cancelled_jobs_again(dsn, conn):
    first, second = add_job(conn, "add", {"a": 1, "b": 1})["id"], add_job(conn, "t")["id"]
    with psycopg.connect(dsn, autocommit=True) as own:
        hopper.cancel_jobs(own, [first])
        retried = hopper.retry_jobs(own, [first, second])
    assert [(j.id, j.state, j.attempts) for j in retried] == [(first, "pending", 0)]
    assert hopper.run_once(dsn, worker_tasks.tasks) == 1


def test_they_run_in_the_callers_transaction(dsn, conn):
    added = add_job(conn, "t")["id"]
    with psycopg.connect(dsn) as own:
        with pytest.raises(RuntimeError), own.transaction():
            assert [j.id for j in hopper.cancel_jobs(own, [added])] == [added]
            raise RuntimeError("changed my mind")
        status = hopper.job_status(own, added)
    assert status is not None and status.state == "pending"


def test_bad_input_raises_with_its_sqlstate(dsn):
    with psycopg.connect(dsn, autocommit=True) as own:
        with pytest.raises(psycopg.errors.NullValueNotAllowed, match="job_ids"):
            hopper.cancel_jobs(own, None)  # type: ignore[arg-type]
        with pytest.raises(TypeError, match="job_ids must be a list of job ids"):
            hopper.retry_jobs(own, 42)  # type: ignore[arg-type]


def test_async_twins(dsn, conn):
    added = add_job(conn, "t")["id"]

    async def steer() -> tuple[list[hopper.Job], list[hopper.Job], hopper.Job | None]:
        async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as own:
            cancelled = await aio.cancel_jobs(own, [added], "async")
            retried = await aio.retry_jobs(own, [added])
            return cancelled, retried, await aio.job_status(own, added)

    cancelled, retried, status = asyncio.run(steer())
    assert [(j.state, j.last_error) for j in cancelled] == [("cancelled", "async")]
    assert [j.state for j in retried] == ["pending"]
    assert status is not None and status.state == "pending" and status.attempts == 0
