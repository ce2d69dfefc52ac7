"""Reading and steering jobs from Python: thin calls of job_status, cancel_jobs and
retry_jobs on the caller's connection, so in the caller's transaction."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import psycopg
from psycopg import sql
from psycopg.rows import tuple_row

from hopper._options import as_list
from hopper._producer import checked_connection
from hopper._records import JOB_SELECT_LIST, Job


def admin_call(function: str, arguments: str, schema: str) -> sql.Composed:
    """The SELECT of function's jobs, in id order (job_status' NULL left out)."""
    return sql.SQL(
        "SELECT " + JOB_SELECT_LIST + " FROM {}.{}(" + arguments + ") AS j"
        " WHERE j.id IS NOT NULL ORDER BY j.id"
    ).format(sql.Identifier(schema), sql.Identifier(function))


def _ids(job_ids: Sequence[int]) -> list[int] | None:
    """job_ids as an array parameter; None is left to the function to refuse."""
    return None if job_ids is None else as_list(job_ids, "job_ids", "job ids")


def job_status_call(job_id: int, schema: str) -> tuple[sql.Composed, list[Any]]:
    return admin_call("job_status", "%s", schema), [job_id]


def cancel_jobs_call(
    job_ids: Sequence[int], reason: str | None, schema: str
) -> tuple[sql.Composed, list[Any]]:
    return admin_call("cancel_jobs", "%s, %s", schema), [_ids(job_ids), reason]


def retry_jobs_call(job_ids: Sequence[int], schema: str) -> tuple[sql.Composed, list[Any]]:
    return admin_call("retry_jobs", "%s", schema), [_ids(job_ids)]


def _jobs(conn: psycopg.Connection, query: sql.Composed, values: list[Any]) -> list[Job]:
    with conn.cursor(row_factory=tuple_row) as cursor:
        return [Job.from_values(row) for row in cursor.execute(query, values).fetchall()]


def job_status(conn: psycopg.Connection, job_id: int, *, schema: str = "hopper") -> Job | None:
    """The job as it is now, or None when there is none (never added, or pruned)."""
    checked_connection(conn, "job_status")
    found = _jobs(conn, *job_status_call(job_id, schema))
    return found[0] if found else None


def cancel_jobs(
    conn: psycopg.Connection,
    job_ids: Sequence[int],
    reason: str | None = None,
    *,
    schema: str = "hopper",
) -> list[Job]:
    """Cancels the active jobs among job_ids (a running one is asked to stop: its
    worker cancels the handler, and it ends cancelled unless it completed first);
    returns the jobs it changed, by id."""
    checked_connection(conn, "cancel_jobs")
    return _jobs(conn, *cancel_jobs_call(job_ids, reason, schema))


def retry_jobs(
    conn: psycopg.Connection, job_ids: Sequence[int], *, schema: str = "hopper"
) -> list[Job]:
    """Makes the failed and cancelled jobs among job_ids pending now, attempts 0;
    returns the jobs it changed, by id."""
    checked_connection(conn, "retry_jobs")
    return _jobs(conn, *retry_jobs_call(job_ids, schema))
