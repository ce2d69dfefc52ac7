"""The worker's calls of hopper's SQL functions, over a pool or a given connection.

Every method is one call of a hopper function; nothing here decides queue logic.
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Callable, Sequence
from typing import Any, cast

import psycopg
from psycopg import sql
from psycopg.rows import dict_row, tuple_row
from psycopg.types.json import set_json_loads
from psycopg_pool import AsyncConnectionPool, ConnectionPool

from hopper._records import JOB_COLUMNS, JOB_SELECT_LIST, Job
from hopper._tasks import Completed, Failed, JobContext, JobLost

_json_decoder = json.JSONDecoder()


def _loads(data: bytes | memoryview) -> Any:
    # json.loads(bytes) first sniffs the encoding; PostgreSQL sends UTF-8.
    # Most jobs have no errors yet and many an empty payload: skip the parser.
    text = str(data, "utf-8")
    if text == "[]":
        return []
    if text == "{}":
        return {}
    return _json_decoder.decode(text)


def _job_rows(cursor: Any) -> Any:
    """Builds Jobs straight from rows of hopper.jobs, without a dict per row."""
    names = tuple(column.name for column in cursor.description or ())
    if names != JOB_COLUMNS:
        raise RuntimeError(f"unexpected columns from hopper.jobs: {names}")
    return Job.from_values


class Database:
    """Runs statements on a pool (DSN), an AsyncConnection or a sync Connection."""

    def __init__(
        self,
        target: str | psycopg.Connection | psycopg.AsyncConnection,
        schema: str = "hopper",
        pool_size: int = 4,
        job_pool_size: int = 4,
        prepare: bool = True,
    ) -> None:
        self.schema = schema
        # psycopg prepares a statement run 5 times on a connection; a pooler in
        # transaction mode (PgBouncer before 1.21) sends the next execution to
        # another server connection, which has no such statement
        self._connection_options = {
            "autocommit": True,
            **({} if prepare else {"prepare_threshold": None}),
        }
        self.dsn: str | None = target if isinstance(target, str) else None
        self._pool: AsyncConnectionPool | None = None
        self._job_pool: AsyncConnectionPool | None = None
        self._sync_job_pool: ConnectionPool | None = None
        self._sync_job_pool_lock = threading.Lock()  # sync handlers' threads open it
        self._job_pool_size = job_pool_size
        self._conn = None if isinstance(target, str) else target
        self._lock = asyncio.Lock()
        self._pool_size = pool_size
        if not isinstance(target, str) and not target.autocommit:
            raise ValueError("a connection given to the worker must be in autocommit mode")

    async def open(self) -> None:
        if self.dsn is not None and self._pool is None:
            self._pool = AsyncConnectionPool(
                self.dsn,
                min_size=1,
                max_size=self._pool_size,
                kwargs={**self._connection_options, "application_name": "hopper-worker"},
                configure=self._configure,
                open=False,
            )
            await self._pool.open(wait=True, timeout=30)

    async def _configure(self, conn: psycopg.AsyncConnection) -> None:
        """The worker's own statements run in UTC: psycopg parses UTC timestamps in
        half the time (a claimed job has five). Job transactions have their own
        connections, in the time zone the database gives its sessions."""
        # psycopg hands a loader bytes (its annotation says str | bytes)
        set_json_loads(cast(Callable[[str | bytes], Any], _loads), conn)
        await conn.execute("SET TimeZone = 'UTC'")

    async def job_pool(self) -> AsyncConnectionPool:
        """The connections of handlers' job transactions, opened on first use. They
        are not the worker's own: handlers holding transactions open must never keep
        it from claiming, reporting and heartbeating (or it would look dead)."""
        assert self.dsn is not None
        if self._job_pool is None:
            self._job_pool = AsyncConnectionPool(
                self.dsn,
                min_size=0,
                max_size=self._job_pool_size,
                kwargs={**self._connection_options, "application_name": "hopper-job"},
                open=False,
            )
        await self._job_pool.open()  # a no-op once open
        return self._job_pool

    def sync_job_pool(self) -> ConnectionPool:
        """job_pool's twin for sync handlers, which run in threads: as many
        connections, opened as needed."""
        assert self.dsn is not None
        with self._sync_job_pool_lock:
            if self._sync_job_pool is None:
                self._sync_job_pool = ConnectionPool(
                    self.dsn,
                    min_size=0,
                    max_size=self._job_pool_size,
                    kwargs={**self._connection_options, "application_name": "hopper-job"},
                    open=True,
                )
            return self._sync_job_pool

    def job_transaction(self, context: JobContext, result: Any) -> JobTransaction:
        if self.dsn is None:
            raise RuntimeError("job.transaction() needs a worker started with a DSN")
        return JobTransaction(self, context, result)

    async def close(self) -> None:
        for pool in (self._pool, self._job_pool):
            if pool is not None:
                await pool.close()
        self._pool = self._job_pool = None
        with self._sync_job_pool_lock:
            sync_pool, self._sync_job_pool = self._sync_job_pool, None
        if sync_pool is not None:
            # a connection a handler still holds closes when it comes back
            await asyncio.to_thread(sync_pool.close)

    def call(self, function: str, arguments: str, columns: str = "*") -> sql.Composed:
        return sql.SQL("SELECT " + columns + " FROM {}.{}(" + arguments + ")").format(
            sql.Identifier(self.schema), sql.Identifier(function)
        )

    async def rows(
        self, query: sql.Composed, params: Sequence[Any], row_factory: Any = dict_row
    ) -> list[Any]:
        if self._pool is not None:
            async with self._pool.connection() as conn:
                return await self._async_rows(conn, query, params, row_factory)
        async with self._lock:
            if isinstance(self._conn, psycopg.AsyncConnection):
                return await self._async_rows(self._conn, query, params, row_factory)
            assert isinstance(self._conn, psycopg.Connection)
            return await asyncio.to_thread(self._sync_rows, self._conn, query, params, row_factory)

    @staticmethod
    async def _async_rows(
        conn: psycopg.AsyncConnection, query: sql.Composed, params: Sequence[Any], row_factory: Any
    ) -> list[Any]:
        try:
            return await _async_fetch(conn, query, params, row_factory)
        except psycopg.errors.FeatureNotSupported as error:
            if STALE_STATEMENT not in str(error):
                raise
        await conn.execute("DEALLOCATE ALL")
        return await _async_fetch(conn, query, params, row_factory)

    @staticmethod
    def _sync_rows(
        conn: psycopg.Connection, query: sql.Composed, params: Sequence[Any], row_factory: Any
    ) -> list[Any]:
        # run_once on the caller's connection. A field a migration adds to the record
        # changes nothing here (the statements name their columns; tested); a changed
        # result type, which _async_rows survives, would need a new connection.
        with conn.cursor(row_factory=row_factory) as cur:
            return cur.execute(query, params).fetchall()

    # --- hopper functions -----------------------------------------------------

    async def claim(
        self,
        worker_id: str,
        task_names: list[str],
        batch_size: int,
        forbidden_flags: list[str] | None = None,
    ) -> list[Job]:
        query = self.call("get_jobs", "%s, %s, %s, %s", JOB_SELECT_LIST)
        params = [worker_id, task_names, batch_size, forbidden_flags]
        return await self.rows(query, params, _job_rows)

    async def complete(self, worker_id: str, outcomes: Sequence[Completed]) -> list[int]:
        """Completes the jobs; returns the ids it completed (the worker needs no rows)."""
        query = self.call("complete_claimed_job_ids", "%s, %s, %s::jsonb[]")
        results = [o.result_json for o in outcomes]
        rows = await self.rows(
            query,
            [worker_id, [o.job_id for o in outcomes], None if not any(results) else results],
            tuple_row,
        )
        return rows[0][0]

    async def fail(self, worker_id: str, outcomes: Sequence[Failed], permanent: bool) -> None:
        query = self.call("fail_claimed_jobs", "%s, %s, %s, %s::jsonb[], %s", "count(*)")
        replacements = [
            json.dumps(o.replacement_payload) if o.replacement_payload is not None else None
            for o in outcomes
        ]
        await self.rows(
            query,
            [
                worker_id,
                [o.job_id for o in outcomes],
                # PostgreSQL's text cannot hold U+0000; the message is for people
                [o.message.replace("\x00", "\\x00") for o in outcomes],
                replacements,
                permanent,
            ],
        )

    async def register(self, worker_id: str, metadata: dict[str, Any]) -> None:
        await self.rows(
            self.call("register_worker", "%s, %s::jsonb"), [worker_id, json.dumps(metadata)]
        )

    async def heartbeat(self, worker_id: str) -> list[int]:
        rows = await self.rows(self.call("heartbeat", "%s"), [worker_id])
        return list(rows[0]["heartbeat"] or [])

    async def rescue(self, stale_after: float) -> list[Job]:
        query = self.call("rescue_stale_jobs", "make_interval(secs => %s)", JOB_SELECT_LIST)
        return [Job.from_row(row) for row in await self.rows(query, [stale_after])]

    async def prune_expired(self, batch_size: int) -> int:
        """Deletes up to batch_size finished jobs past their retention; the count."""
        query = self.call("prune_expired", "%s")
        return int((await self.rows(query, [batch_size], tuple_row))[0][0])

    async def enqueue_due_schedules(self) -> int:
        """How many jobs the schedules' due firings added."""
        rows = await self.rows(self.call("enqueue_due_schedules", "", "count(*) AS added"), [])
        return int(rows[0]["added"])

    async def seconds_to_next_firing(self) -> float | None:
        """Seconds until a schedule fires next, on the database's clock; None when
        none will."""
        query = self.call(
            "next_schedule_firing", "",
            "extract(epoch FROM next_schedule_firing - clock_timestamp())::float8 AS seconds",
        )  # fmt: skip
        rows = await self.rows(query, [])
        return rows[0]["seconds"]

    async def release_unknown(self, worker_id: str, kept: list[int]) -> list[int]:
        """Releases the jobs worker_id holds outside kept; returns their ids."""
        query = self.call("release_unknown_jobs", "%s, %s::bigint[]", "id")
        return [row[0] for row in await self.rows(query, [worker_id, kept], tuple_row)]

    async def unregister(self, worker_id: str) -> None:
        await self.rows(self.call("unregister_worker", "%s", "id"), [worker_id])

    async def set_progress(self, worker_id: str, progress: dict[int, int]) -> None:
        for job_id, percent in progress.items():
            await self.rows(self.call("set_progress", "%s, %s, %s"), [worker_id, job_id, percent])


# psycopg prepares a statement run 5 times on a connection. When a migration changes
# the result type of one (statements name the job record's columns, so adding one
# does not), PostgreSQL refuses the prepared statement with this; prepared anew, it
# runs, so a running worker survives the upgrade. The refused statement did nothing.
STALE_STATEMENT = "cached plan must not change result type"


async def _async_fetch(
    conn: psycopg.AsyncConnection, query: sql.Composed, params: Sequence[Any], row_factory: Any
) -> list[Any]:
    async with conn.cursor(row_factory=row_factory) as cur:
        await cur.execute(query, params)
        return await cur.fetchall()


class JobTransaction:
    """Usable as ``async with`` in an async handler or ``with`` in a sync one, each on
    a pooled connection of its kind."""

    def __init__(self, db: Database, context: JobContext, result: Any) -> None:
        self.db = db
        self.context = context
        self.result = json.dumps(result, allow_nan=False)
        self._lease: Any = None  # the pool's connection() context

    def _completion(self) -> tuple[sql.Composed, list[Any]]:
        query = self.db.call("complete_job", "%s, %s, %s::jsonb", "id")
        return query, [self.context.worker_id, self.context.job.id, self.result]

    def _refuse_if_abandoned(self) -> None:
        """A handler the worker gave up on (its job timed out, was cancelled, or is
        being given back) may run on; a transaction it opens then would only end in
        JobLost, so it ends there at once."""
        if self.context._cancelled is not None and self.context._cancelled.is_set():
            raise JobLost(f"job {self.context.job.id} was given up by this worker")

    def _check(self, row: Any) -> None:
        if row is None or row[0] is None:
            raise JobLost(f"job {self.context.job.id} is no longer held by this worker")

    async def __aenter__(self) -> psycopg.AsyncConnection:
        self._refuse_if_abandoned()
        pool = await self.db.job_pool()
        for spare in range(pool.max_size, -1, -1):
            self._lease = pool.connection()
            conn = await self._lease.__aenter__()
            try:
                await conn.execute("BEGIN")
            except psycopg.OperationalError:
                await self._lease.__aexit__(None, None, None)  # the pool drops it if dead
                if not conn.broken or not spare:
                    raise
                continue  # see __enter__
            self._conn = conn
            return conn
        raise AssertionError("unreachable")

    async def __aexit__(self, kind: Any, error: Any, traceback: Any) -> None:
        conn = self._conn
        try:
            if kind is None:
                query, params = self._completion()
                self._check(await (await conn.execute(query, params)).fetchone())
                await conn.execute("COMMIT")
                # only now: a COMMIT that fails (a deferred constraint) completed
                # nothing, and a handler that goes on must still be reported
                self.context.completed_in_transaction = True
            else:
                await conn.execute("ROLLBACK")
        except BaseException:
            if not conn.broken:  # a dead one's error would hide the first
                await conn.execute("ROLLBACK")
            raise
        finally:
            await self._lease.__aexit__(None, None, None)

    def __enter__(self) -> psycopg.Connection:
        """A pooled connection can have died while idle (a server restart, a firewall
        that drops idle connections): its BEGIN fails and did nothing, so another
        is taken, rather than the job failing an attempt. As many tries as the pool
        holds connections, and one more, which it then opens afresh."""
        self._refuse_if_abandoned()
        pool = self.db.sync_job_pool()
        for spare in range(pool.max_size, -1, -1):
            self._lease = pool.connection()
            conn = self._lease.__enter__()
            try:
                conn.execute("BEGIN")
            except psycopg.OperationalError:
                self._lease.__exit__(None, None, None)  # the pool drops it if dead
                if not conn.broken or not spare:
                    raise
                continue
            self._conn = conn
            try:
                with self.context._connection_lock:  # see JobContext._abandon
                    self._refuse_if_abandoned()
                    self.context._open_connection = conn
            except JobLost:
                conn.execute("ROLLBACK")
                self._lease.__exit__(None, None, None)
                raise
            return conn
        raise AssertionError("unreachable")

    def __exit__(self, kind: Any, error: Any, traceback: Any) -> None:
        conn = self._conn
        try:
            if kind is None:
                query, params = self._completion()
                self._check(conn.execute(query, params).fetchone())
                conn.execute("COMMIT")
                self.context.completed_in_transaction = True
            else:
                conn.execute("ROLLBACK")
        except BaseException:
            if not conn.broken:
                conn.execute("ROLLBACK")
            raise
        finally:
            with self.context._connection_lock:
                self.context._open_connection = None
            self._lease.__exit__(None, None, None)
