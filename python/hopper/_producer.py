"""Producing jobs from Python: thin calls of hopper.add_job / hopper.add_jobs.

They run on the caller's connection, so a job commits or rolls back with the
caller's transaction.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache
from typing import Any

import psycopg
from psycopg import sql
from psycopg.rows import tuple_row

from hopper._options import (
    INTERVAL_OPTIONS,
    JobSpec,
    aware,
    json_text,
    jsonable,
    parse_duration,
)
from hopper._records import ADDED_JOB_SELECT_LIST, Job

ADD_JOB_OPTIONS = frozenset(
    {
        "queue_name", "run_at", "max_attempts", "job_key", "priority", "flags", "job_key_mode",
        "tags", "depends_on", "depends_on_tags", "timeout", "backoff", "backoff_delay",
        "backoff_max", "dead_letter",
    }
)  # fmt: skip


def add_job_call(
    identifier: str, payload: Any, options: dict[str, Any], schema: str
) -> tuple[str, list[Any]]:
    """The SELECT that calls add_job with named arguments, and its parameters."""
    unknown = set(options) - ADD_JOB_OPTIONS - {"delay"}
    if unknown:
        raise TypeError(f"add_job got unknown options: {', '.join(sorted(unknown))}")
    delay = options.get("delay")
    if delay is not None and options.get("run_at") is not None:
        raise ValueError("give run_at or delay, not both")
    names: list[str] = []
    text = None if payload is None else json_text(jsonable(payload), "payload")
    values: list[Any] = [identifier, text]
    for name, value in options.items():
        if value is None or name == "delay":
            continue
        names.append(name)
        if name in INTERVAL_OPTIONS:
            value = parse_duration(value, name)
        values.append(aware(value) if name == "run_at" else value)
    if delay is not None:
        values.append(parse_duration(delay))
    return _add_job_query(schema, tuple(names), delay is not None), values


@lru_cache(maxsize=256)
def _add_job_query(schema: str, names: tuple[str, ...], delayed: bool) -> str:
    """The text of add_job_call's SELECT: composing it, and psycopg turning the
    composition into text, cost each call 13 us."""
    arguments: list[sql.Composable] = [sql.SQL("identifier => %s"), sql.SQL("payload => %s")]
    arguments += [sql.SQL("{} => %s").format(sql.Identifier(name)) for name in names]
    if delayed:
        # the database's clock decides when the job is due
        arguments.append(sql.SQL("run_at => now() + %s"))
    query = sql.SQL("SELECT " + ADDED_JOB_SELECT_LIST + " FROM {}.add_job({})").format(
        sql.Identifier(schema), sql.SQL(", ").join(arguments)
    )
    return query.as_string(None)


# the specs with each delayed one's run_at set by the database's clock, as add_job's
ADD_DELAYED_JOBS = f"""
SELECT {ADDED_JOB_SELECT_LIST} FROM {{}}.add_jobs(
    (
        SELECT jsonb_agg(
            CASE WHEN d.seconds IS NULL THEN d.spec
            ELSE d.spec || jsonb_build_object('run_at', now() + make_interval(secs => d.seconds))
            END ORDER BY d.n
        )
        FROM ROWS FROM (jsonb_array_elements(%s::jsonb), unnest(%s::float8[]))
            WITH ORDINALITY AS d (spec, seconds, n)
    ),
    %s
)
"""


def add_jobs_call(
    specs: Sequence[JobSpec], job_key_preserve_run_at: bool, schema: str
) -> tuple[sql.Composed, list[Any]]:
    elements = _specs_text(specs)
    delays = [spec.delay_seconds() for spec in specs]
    if any(seconds is not None for seconds in delays):
        query = sql.SQL(ADD_DELAYED_JOBS).format(sql.Identifier(schema))
        return query, [elements, delays, job_key_preserve_run_at]
    query = sql.SQL("SELECT " + ADDED_JOB_SELECT_LIST + " FROM {}.add_jobs(%s::jsonb, %s)").format(
        sql.Identifier(schema)
    )
    return query, [elements, job_key_preserve_run_at]


def _specs_text(specs: Sequence[JobSpec]) -> str:
    """The specs as add_jobs' JSON array; a spec that JSON cannot hold is named."""
    elements = [spec.as_json() for spec in specs]
    try:
        return json_text(elements, "specs")
    except (TypeError, ValueError):
        for index, element in enumerate(elements):
            json_text(element, f"specs[{index}]")
        raise


def checked_connection(conn: Any, function: str, asynchronous: bool = False) -> Any:
    """conn, unless it is not the kind of connection function runs on: a DSN, or
    the other kind (whose cursor fails with an AttributeError or a TypeError)."""
    wanted = psycopg.AsyncConnection if asynchronous else psycopg.Connection
    if isinstance(conn, wanted):
        return conn
    name = f"hopper.aio.{function}" if asynchronous else f"hopper.{function}"
    other = f"hopper.{function}" if asynchronous else f"hopper.aio.{function}"
    takes = f"{name} takes a psycopg {wanted.__name__}"
    if isinstance(conn, psycopg.AsyncConnection):
        raise TypeError(f"{takes}, not an AsyncConnection: use {other}")
    if isinstance(conn, psycopg.Connection):
        raise TypeError(f"{takes}, not a Connection: use {other}")
    if isinstance(conn, str) and function == "add_job":
        raise TypeError(f"{takes}, not a DSN: use {name.replace('add_job', 'quick_add_job')}")
    raise TypeError(f"{takes} (got {type(conn).__name__})")


def add_job(
    conn: psycopg.Connection,
    identifier: str,
    payload: Any = None,
    *,
    schema: str = "hopper",
    **options: Any,
) -> Job:
    """Add a job in the caller's transaction; options mirror SQL add_job, plus ``delay``."""
    checked_connection(conn, "add_job")
    return _one_job(conn, *add_job_call(identifier, payload, options, schema))


def _one_job(conn: psycopg.Connection, query: str, values: list[Any]) -> Job:
    # tuples in the select list's order: a dict per row cost the call 8 us
    with conn.cursor(row_factory=tuple_row) as cursor:
        row = cursor.execute(query, values).fetchone()
    assert row is not None
    return Job.from_added_values(row)


def add_jobs(
    conn: psycopg.Connection,
    specs: Sequence[JobSpec],
    *,
    job_key_preserve_run_at: bool = False,
    schema: str = "hopper",
) -> list[Job]:
    """Add many jobs in one statement; one Job per spec, in order."""
    checked_connection(conn, "add_jobs")
    query, values = add_jobs_call(specs, job_key_preserve_run_at, schema)
    with conn.cursor(row_factory=tuple_row) as cursor:
        return [Job.from_added_values(row) for row in cursor.execute(query, values).fetchall()]


def quick_add_job(
    dsn_or_conn: str | psycopg.Connection,
    identifier: str,
    payload: Any = None,
    *,
    schema: str = "hopper",
    **options: Any,
) -> Job:
    """Add one job and commit it at once (opens a connection when given a DSN)."""
    call = add_job_call(identifier, payload, options, schema)  # bad options fail here
    if not isinstance(dsn_or_conn, str):
        with checked_connection(dsn_or_conn, "quick_add_job").transaction():
            return _one_job(dsn_or_conn, *call)
    with psycopg.connect(dsn_or_conn, autocommit=True) as conn:
        return _one_job(conn, *call)
