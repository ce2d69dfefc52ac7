"""One real Worker runs a stream of handlers that misbehave in every way at hand
(NaN and U+0000 results, their own TimeoutErrors, timeouts, failing transactions,
batch failures) while running jobs are cancelled at random. Afterwards no job may
be left unfinished and each kind must have ended as its handler decided."""

from __future__ import annotations

import asyncio
import json
import random
import time

import psycopg
from workerprocs import wait_until, worker_in_thread

import hopper

tasks = hopper.TaskRegistry()


@tasks.task("chaos", timeout="0.5s")
async def chaos(payload: dict, job: hopper.JobContext) -> object:
    kind = payload["kind"]
    if kind == "nan":
        return {"ratio": float("nan")}
    if kind == "nul":
        return "before\x00after"
    if kind == "raise":
        raise ValueError("bad\x00byte")
    if kind == "own_timeout":
        raise TimeoutError("upstream")
    if kind == "permanent":
        raise hopper.PermanentFailure("no")
    if kind == "overrun":
        await asyncio.sleep(5)
    if kind == "transaction":
        async with job.transaction(result={"t": 1}) as conn:
            await conn.execute("SELECT pg_sleep(0.02)")
        return None
    if kind == "failing_transaction":
        async with job.transaction() as conn:
            await conn.execute("SELECT 1 / 0")
    if kind == "progress":
        job.set_progress(50)
    await asyncio.sleep(random.uniform(0, 0.2))
    return {"kind": kind}


@tasks.task("chaos_sync")
def chaos_sync(payload: dict | list, job: hopper.JobContext) -> object:
    if isinstance(payload, list):  # a batch job: its second element fails
        return [ValueError("odd") if i % 2 else i for i in range(len(payload))]
    with job.transaction(result=[1, 2]) as conn:
        conn.execute("SELECT 1")
    return None


# the state and error each kind ends with when nothing cancels it
ENDS = {
    "nan": ("failed", "result is not JSON serialisable: Out of range float values"),
    "nul": ("failed", "result is not storable: jsonb cannot hold the character U+0000"),
    "raise": ("failed", "ValueError: bad\\x00byte"),
    "own_timeout": ("failed", "TimeoutError: upstream"),
    "permanent": ("failed", "PermanentFailure: no"),
    "overrun": ("failed", "timeout after 00:00:00.5"),
    "transaction": ("completed", None),
    "failing_transaction": ("failed", "DivisionByZero: division by zero"),
    "progress": ("completed", None),
    "sleep": ("completed", None),
    "sync_transaction": ("completed", None),
    "batch": ("failed", "1 of 2 elements failed; first: ValueError: odd"),
}


def add(conn: psycopg.Connection, kind: str) -> None:
    task = "chaos_sync" if kind in ("sync_transaction", "batch") else "chaos"
    payload = [{"n": 0}, {"n": 1}] if kind == "batch" else {"kind": kind}
    conn.execute(
        "SELECT hopper.add_job(%s, %s, max_attempts => 1)", [task, json.dumps(payload)]
    )  # fmt: skip


def unfinished(conn: psycopg.Connection) -> list[dict]:
    return conn.execute(
        "SELECT id, task_identifier, payload->>'kind' AS kind, state, attempts, locked_by,"
        " cancel_requested, run_at, last_error FROM hopper._jobs WHERE finished_at IS NULL"
    ).fetchall()  # fmt: skip


def test_misbehaving_handlers_and_cancellations_leave_no_job_unfinished(dsn, conn):
    rng = random.Random(7)
    worker = hopper.Worker(dsn, tasks, concurrency=16, poll_interval=0.5)
    with worker_in_thread(worker):
        until = time.monotonic() + 4
        while time.monotonic() < until:
            add(conn, rng.choice(list(ENDS)))
            if rng.random() < 0.05:
                conn.execute(
                    "SELECT count(*) FROM hopper.cancel_jobs(ARRAY(SELECT id FROM hopper._jobs"
                    " WHERE state = 'running' ORDER BY random() LIMIT 1))"
                )  # fmt: skip
            time.sleep(rng.uniform(0, 0.01))
        try:
            wait_until(lambda: not unfinished(conn), 20, "every job to finish")
        except AssertionError as error:
            raise AssertionError(
                f"{error}: {unfinished(conn)}, running {worker._running}"
            ) from None
        assert worker._running == {}
    ended = conn.execute(
        "SELECT coalesce(payload->>'kind', 'batch') AS kind, state, last_error"
        " FROM hopper._jobs WHERE state <> 'cancelled'"
    ).fetchall()  # fmt: skip
    assert {row["kind"] for row in ended} == set(ENDS)
    for row in ended:
        state, error = ENDS[row["kind"]]
        assert row["state"] == state, row
        assert (row["last_error"] or "").startswith(error or ""), row
