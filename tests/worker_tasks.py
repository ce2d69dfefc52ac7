"""Task handlers used by the worker tests, in-process and in worker subprocesses
(``hopper worker --tasks worker_tasks:tasks`` with tests/ on PYTHONPATH)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import time

import psycopg
from psycopg_pool import AsyncConnectionPool
from pydantic import BaseModel

import hopper

tasks = hopper.TaskRegistry()
_pool: AsyncConnectionPool | None = None


async def record_execution(job: hopper.JobContext, note: str = "") -> None:
    """Writes one row per execution into the executions side table."""
    global _pool
    if _pool is None:
        _pool = AsyncConnectionPool(
            os.environ["HOPPER_TEST_DSN"], min_size=1, max_size=4, open=False,
            kwargs={"autocommit": True},
        )  # fmt: skip
        await _pool.open()
    async with _pool.connection() as conn:
        await conn.execute(
            "INSERT INTO executions (job_id, worker_id, note) VALUES (%s, %s, %s)",
            [job.job.id, job.worker_id, note],
        )


class EmailPayload(BaseModel):
    to: str
    subject: str


@tasks.task("echo")
async def echo(payload: dict, job: hopper.JobContext) -> dict:
    return {"echo": payload, "attempt": job.job.attempts}


@tasks.task("add")
def add(payload: dict) -> int:
    return payload["a"] + payload["b"]


@tasks.task("explode")
def explode(payload: dict) -> None:
    raise ValueError(payload.get("why", "boom"))


@tasks.task("send_email")
async def send_email(payload: EmailPayload, job: hopper.JobContext) -> dict:
    return {"sent_to": payload.to}


@tasks.task("send_emails")
def send_emails(payload: list[EmailPayload]) -> list[str]:
    return [f"{type(email).__name__} to {email.to}" for email in payload]


@tasks.task("email_by_name")
def email_by_name(payload: dict[str, EmailPayload]) -> dict[str, str]:
    return {name: email.subject for name, email in payload.items()}


@tasks.task("batch")
def batch(payload: list, job: hopper.JobContext) -> list:
    return [RuntimeError(f"bad {item}") if item.get("fail") else item["n"] * 2 for item in payload]


@tasks.task("progress")
def progress(payload: dict, job: hopper.JobContext) -> str:
    job.set_progress(payload.get("percent", 50))
    return "done"


@tasks.task("hang", timeout="0.3s")
async def hang(payload: dict, job: hopper.JobContext) -> None:
    await asyncio.sleep(30)


@tasks.task("hang_sync", timeout="0.3s")
def hang_sync(payload: dict, job: hopper.JobContext) -> None:
    time.sleep(2)


@tasks.task("record")
async def record(payload: dict, job: hopper.JobContext) -> None:
    await record_execution(job)


@tasks.task("blocks_the_loop")
async def blocks_the_loop(payload: dict) -> None:
    time.sleep(payload["seconds"])  # the mistake: a blocking call in an async handler


@tasks.task("slow")
async def slow(payload: dict, job: hopper.JobContext) -> str:
    await record_execution(job, "start")
    await asyncio.sleep(payload.get("seconds", 30))
    return job.worker_id


@tasks.task("stubborn")
async def stubborn(payload: dict, job: hopper.JobContext) -> None:
    """Swallows its first cancellation, as asyncio.wait_for can on Python 3.11 when
    what it awaits completes at that moment, and ends at the second."""
    with contextlib.suppress(asyncio.CancelledError):
        await asyncio.sleep(30)
    await asyncio.sleep(30)


@tasks.task("slow_sync")
def slow_sync(payload: dict, job: hopper.JobContext) -> str:
    time.sleep(payload.get("seconds", 30))
    return job.worker_id


@tasks.task("ledger")
async def ledger(payload: dict, job: hopper.JobContext) -> None:
    """Exactly-once effect: the write and the completion commit together."""
    async with job.transaction(result={"booked": payload["amount"]}) as conn:
        await conn.execute("INSERT INTO ledger (job_id, amount) VALUES (%s, %s)",
                           [job.job.id, payload["amount"]])  # fmt: skip
        if payload.get("lose_job"):
            # another session takes the job away before we commit
            with psycopg.connect(os.environ["HOPPER_TEST_DSN"], autocommit=True) as other:
                other.execute("SELECT hopper.force_unlock_workers(%s)", [[job.worker_id]])
        if payload.get("explode"):
            raise RuntimeError("handler failed after writing")


@tasks.task("time_zones")
async def time_zones(payload: dict, job: hopper.JobContext) -> None:
    """Records the time zone inside a job transaction and the claimed run_at."""
    async with job.transaction(result={"run_at": job.job.run_at.isoformat()}) as conn:
        await conn.execute("INSERT INTO seen_zone SELECT current_setting('TimeZone')")


@tasks.task("ledger_sync")
def ledger_sync(payload: dict, job: hopper.JobContext) -> None:
    with job.transaction() as conn:
        conn.execute("INSERT INTO ledger (job_id, amount) VALUES (%s, %s)",
                     [job.job.id, payload["amount"]])  # fmt: skip


def executions(dsn: str) -> list[tuple[int, str, str]]:
    with psycopg.connect(dsn) as conn:
        return conn.execute("SELECT job_id, worker_id, note FROM executions ORDER BY id").fetchall()


def create_executions_table(dsn: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(
            "CREATE TABLE executions (id bigserial PRIMARY KEY, job_id bigint NOT NULL,"
            " worker_id text NOT NULL, note text NOT NULL,"
            " at timestamptz DEFAULT clock_timestamp())"
        )


@tasks.task("lose_myself")
def lose_myself(payload: dict, job: hopper.JobContext) -> str:
    """Has its own lock removed (as an admin's force_unlock_workers would) while running."""
    with psycopg.connect(os.environ["HOPPER_TEST_DSN"], autocommit=True) as conn:
        conn.execute("SELECT hopper.force_unlock_workers(ARRAY[%s])", [job.worker_id])
    return "finished anyway"


@tasks.task("nan_result")
def nan_result(payload: dict) -> dict:
    return {"ratio": float("nan")}


@tasks.task("nul_result")
def nul_result(payload: dict) -> str:
    return "before\x00after"


@tasks.task("long_error")
def long_error(payload: dict) -> None:
    raise ValueError("x" * payload["length"])


@tasks.task("nul_error")
def nul_error(payload: dict) -> None:
    raise ValueError("bad\x00byte")


@tasks.task("own_timeout")
async def own_timeout(payload: dict) -> None:
    """A handler whose own wait times out (an HTTP call, say), with no task timeout."""
    raise TimeoutError("upstream took too long")


@tasks.task("own_timeout_within", timeout="5s")
def own_timeout_within(payload: dict) -> None:
    raise TimeoutError("upstream took too long")


class Opaque(BaseModel):
    model_config = {"arbitrary_types_allowed": True}
    handle: object


@tasks.task("opaque_result")
def opaque_result(payload: dict) -> Opaque:
    return Opaque(handle=object())


@tasks.task("hold_transaction")
async def hold_transaction(payload: dict, job: hopper.JobContext) -> None:
    """Holds its job transaction open for a while, as a slow handler's work would."""
    async with job.transaction() as conn:
        await conn.execute("SELECT pg_sleep(%s)", [payload["seconds"]])


@tasks.task("hold_transaction_sync")
def hold_transaction_sync(payload: dict, job: hopper.JobContext) -> None:
    """hold_transaction's sync twin; notes which backend its transaction ran on."""
    with job.transaction() as conn:
        conn.execute("SELECT pg_sleep(%s)", [payload["seconds"]])
        conn.execute("INSERT INTO job_backends SELECT %s, pg_backend_pid()", [job.job.id])


@tasks.task("stuck_in_transaction", timeout="0.5s")
def stuck_in_transaction(payload: dict, job: hopper.JobContext) -> None:
    """A sync handler whose transaction's query runs past its timeout (waiting for a
    lock, say): the thread cannot be stopped, but its query can."""
    with job.transaction() as conn:
        conn.execute("SELECT pg_sleep(%s)", [payload["seconds"]])


@tasks.task("lower_max_batch_size")
def lower_max_batch_size(payload: dict) -> str:
    """Lowers max_batch_size while its batch runs, as an administrator might."""
    with psycopg.connect(os.environ["HOPPER_TEST_DSN"], autocommit=True) as conn:
        conn.execute("SELECT hopper.set_setting('max_batch_size', %s)", [str(payload["to"])])
    return "lowered"


# a registry no handler was added to (the CLI and Worker refuse it)
empty = hopper.TaskRegistry()
