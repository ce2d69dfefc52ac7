"""asyncio twins of the producers and the admin calls, taking psycopg AsyncConnections."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import psycopg
from psycopg.rows import tuple_row

from hopper._admin import cancel_jobs_call, job_status_call, retry_jobs_call
from hopper._options import JobSpec
from hopper._producer import add_job_call, add_jobs_call, checked_connection
from hopper._records import Job
from hopper._tasks import TaskRegistry
from hopper._worker import Worker


async def add_job(
    conn: psycopg.AsyncConnection,
    identifier: str,
    payload: Any = None,
    *,
    schema: str = "hopper",
    **options: Any,
) -> Job:
    checked_connection(conn, "add_job", asynchronous=True)
    return await _one_job(conn, *add_job_call(identifier, payload, options, schema))


async def _one_job(conn: psycopg.AsyncConnection, query: str, values: list[Any]) -> Job:
    async with conn.cursor(row_factory=tuple_row) as cursor:
        await cursor.execute(query, values)
        row = await cursor.fetchone()
    assert row is not None
    return Job.from_added_values(row)


async def add_jobs(
    conn: psycopg.AsyncConnection,
    specs: Sequence[JobSpec],
    *,
    job_key_preserve_run_at: bool = False,
    schema: str = "hopper",
) -> list[Job]:
    checked_connection(conn, "add_jobs", asynchronous=True)
    query, values = add_jobs_call(specs, job_key_preserve_run_at, schema)
    async with conn.cursor(row_factory=tuple_row) as cursor:
        await cursor.execute(query, values)
        return [Job.from_added_values(row) for row in await cursor.fetchall()]


async def quick_add_job(
    dsn_or_conn: str | psycopg.AsyncConnection,
    identifier: str,
    payload: Any = None,
    *,
    schema: str = "hopper",
    **options: Any,
) -> Job:
    call = add_job_call(identifier, payload, options, schema)
    if not isinstance(dsn_or_conn, str):
        async with checked_connection(dsn_or_conn, "quick_add_job", True).transaction():
            return await _one_job(dsn_or_conn, *call)
    async with await psycopg.AsyncConnection.connect(dsn_or_conn, autocommit=True) as conn:
        return await _one_job(conn, *call)


async def job_status(
    conn: psycopg.AsyncConnection, job_id: int, *, schema: str = "hopper"
) -> Job | None:
    checked_connection(conn, "job_status", asynchronous=True)
    found = await _jobs(conn, *job_status_call(job_id, schema))
    return found[0] if found else None


async def cancel_jobs(
    conn: psycopg.AsyncConnection,
    job_ids: Sequence[int],
    reason: str | None = None,
    *,
    schema: str = "hopper",
) -> list[Job]:
    checked_connection(conn, "cancel_jobs", asynchronous=True)
    return await _jobs(conn, *cancel_jobs_call(job_ids, reason, schema))


async def retry_jobs(
    conn: psycopg.AsyncConnection, job_ids: Sequence[int], *, schema: str = "hopper"
) -> list[Job]:
    checked_connection(conn, "retry_jobs", asynchronous=True)
    return await _jobs(conn, *retry_jobs_call(job_ids, schema))


async def _jobs(conn: psycopg.AsyncConnection, query: Any, values: list[Any]) -> list[Job]:
    async with conn.cursor(row_factory=tuple_row) as cursor:
        await cursor.execute(query, values)
        return [Job.from_values(row) for row in await cursor.fetchall()]


async def run_once(
    dsn_or_conn: str | psycopg.AsyncConnection, tasks: TaskRegistry, **options: Any
) -> int:
    """Run every job due now on the running event loop; returns how many ran."""
    return await Worker(dsn_or_conn, tasks, listen=False, **options).run_once()
