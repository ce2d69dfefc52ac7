"""`make demo`: a real worker on a throwaway PostgreSQL (or on $DATABASE_URL).

Enqueues a handful of jobs that show hopper's behaviour, runs a worker until
they settle, prints their final states and stops.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from typing import Any

import psycopg
from psycopg.rows import dict_row

import hopper
from hopper._embedded import EmbeddedPostgres

tasks = hopper.TaskRegistry()


@tasks.task("send_welcome")
async def send_welcome(payload: dict, job: hopper.JobContext) -> dict:
    return {"sent_to": payload["to"]}


@tasks.task("flaky_api_call")
def flaky_api_call(payload: dict, job: hopper.JobContext) -> str:
    if job.job.attempts == 1:
        raise ConnectionError("upstream timed out")
    return f"ok on attempt {job.job.attempts}"


@tasks.task("nightly_report")
async def nightly_report(payload: dict, job: hopper.JobContext) -> str:
    return "report generated"


@tasks.task("digest")
async def digest(payload: list, job: hopper.JobContext) -> str:
    return f"one digest for {len(payload)} events"


@tasks.task("thumbnails")
def thumbnails(payload: list, job: hopper.JobContext) -> list:
    # a batch job: per-element outcomes; only failed elements are retried
    return [
        OSError(f"cannot read {name}") if name == "corrupt.png" and job.job.attempts == 1
        else f"thumb-{name}"
        for name in payload
    ]  # fmt: skip


@tasks.task("publish_album")
async def publish_album(payload: dict, job: hopper.JobContext) -> str:
    return "album published"


@tasks.task("ledger_entry")
async def ledger_entry(payload: dict, job: hopper.JobContext) -> str:
    await asyncio.sleep(0.05)
    return f"booked entry {payload['n']}"


def enqueue(dsn: str) -> list[tuple[str, hopper.Job]]:
    retry_fast: dict[str, Any] = {"backoff": "fixed", "backoff_delay": 1}
    added: list[tuple[str, hopper.Job]] = []
    with psycopg.connect(dsn) as conn, conn.transaction():
        added.append(("succeeds", hopper.add_job(conn, "send_welcome", {"to": "ada@example.com"})))
        added.append(
            ("fails, then retries", hopper.add_job(conn, "flaky_api_call", {}, **retry_fast))
        )
        added.append(("delayed 2s", hopper.add_job(conn, "nightly_report", {}, delay="2s")))
        hopper.add_job(conn, "digest", [{"event": 1}], job_key="digest:user42")
        added.append(
            (
                "keyed replace",
                hopper.add_job(conn, "digest", [{"event": 2}], job_key="digest:user42"),
            )
        )
        batch = ["a.png", "corrupt.png", "c.png"]
        thumbs = hopper.add_job(conn, "thumbnails", batch, **retry_fast)
        added.append(("batch job", thumbs))
        # waits until the batch job has completed, retry included
        album = hopper.add_job(conn, "publish_album", {}, depends_on=[thumbs.id])
        added.append(("depends on batch", album))
        for n in range(3):
            job = hopper.add_job(conn, "ledger_entry", {"n": n}, queue_name="ledger")
            added.append((f"named queue #{n}", job))
    return added


def settled(dsn: str, ids: list[int]) -> list[dict]:
    with psycopg.connect(dsn, row_factory=dict_row) as conn:
        return conn.execute(
            "SELECT id, task_identifier, queue_name, state, attempts, result, last_error,"
            " payload FROM hopper.jobs WHERE id = any(%s) ORDER BY id",
            [ids],
        ).fetchall()


async def run_worker_until_settled(dsn: str, ids: list[int], timeout: float = 30) -> None:
    worker = hopper.Worker(dsn, tasks, concurrency=4, poll_interval=0.2)
    running = asyncio.create_task(worker.run())
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        rows = await asyncio.to_thread(settled, dsn, ids)
        if all(r["state"] in ("completed", "failed", "cancelled") for r in rows):
            break
        await asyncio.sleep(0.2)
    worker.stop()
    await running


def show(added: list[tuple[str, hopper.Job]], rows: list[dict]) -> None:
    by_id = {row["id"]: row for row in rows}
    columns = ("example", "id", "task", "queue", "state", "tries", "outcome")
    print("\n{:<20} {:>3}  {:<15} {:<7} {:<10} {:>5}  {}".format(*columns))
    for label, job in added:
        row = by_id[job.id]
        outcome = row["result"] if row["state"] == "completed" else row["last_error"]
        print(
            f"{label:<20} {row['id']:>3}  {row['task_identifier']:<15} "
            f"{row['queue_name'] or '-':<7} {row['state']:<10} {row['attempts']:>5}  {outcome}"
        )
    keyed = next(job for label, job in added if label == "keyed replace")
    print(
        f"\nthe second add of job key digest:user42 was '{keyed.outcome}': "
        f"payloads merged into {by_id[keyed.id]['payload']}"
    )


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    server = None
    dsn = os.environ.get("DATABASE_URL")
    if not dsn:
        print("starting a throwaway PostgreSQL ...")
        server = EmbeddedPostgres().start()
        dsn = server.dsn
    try:
        applied = hopper.migrate(dsn)
        print(f"migrated ({len(applied)} files applied)")
        added = enqueue(dsn)
        print(f"enqueued {len(added)} jobs; running a worker until they settle ...")
        started = time.monotonic()
        asyncio.run(run_worker_until_settled(dsn, [job.id for _, job in added]))
        show(added, settled(dsn, [job.id for _, job in added]))
        print(f"\nsettled in {time.monotonic() - started:.1f}s")
    finally:
        if server is not None:
            server.stop()


if __name__ == "__main__":
    main()
