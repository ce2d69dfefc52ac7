"""Small helpers that call hopper's SQL functions with named arguments.

A dict argument is sent as jsonb; wrap a JSON array in ``Jsonb`` yourself
(a Python list is sent as a PostgreSQL array).
"""

from __future__ import annotations

from typing import Any

import psycopg
from psycopg import sql
from psycopg.types.json import Json, Jsonb


def _adapt(value: Any) -> Any:
    return Jsonb(value) if isinstance(value, dict) else value


def call(conn: psycopg.Connection, function: str, *args: Any, **kwargs: Any) -> list[dict]:
    """SELECT * FROM hopper.<function>(args..., name => value...): all rows."""
    arguments = [sql.Placeholder()] * len(args) + [
        sql.SQL("{} => %s").format(sql.Identifier(name)) for name in kwargs
    ]
    query = sql.SQL("SELECT * FROM hopper.{}({})").format(
        sql.Identifier(function), sql.SQL(", ").join(arguments)
    )
    values = [_adapt(v) for v in (*args, *kwargs.values())]
    return conn.execute(query, values).fetchall()


def call_one(conn: psycopg.Connection, function: str, *args: Any, **kwargs: Any) -> dict:
    rows = call(conn, function, *args, **kwargs)
    assert len(rows) == 1, rows
    return rows[0]


def add_job(
    conn: psycopg.Connection,
    identifier: str = "task",
    payload: Any = None,
    **options: Any,
) -> dict:
    """add_job's payload is json (as in graphile-worker), not jsonb."""
    if isinstance(payload, Jsonb):
        payload = payload.obj
    json_payload = Json(payload) if payload is not None else None
    return call_one(conn, "add_job", identifier, json_payload, **options)


def claim(conn: psycopg.Connection, worker_id: str = "w1", **options: Any) -> list[dict]:
    return call(conn, "get_jobs", worker_id, **options)


def job(conn: psycopg.Connection, job_id: int) -> dict:
    return call_one(conn, "job_status", job_id)


def jobs(conn: psycopg.Connection) -> list[dict]:
    return conn.execute("SELECT * FROM hopper.jobs ORDER BY id").fetchall()
