"""16 producers add the same 10 keys while 4 workers claim and complete."""

from __future__ import annotations

import random
import threading
from collections import Counter

import psycopg
from psycopg.types.json import Json
from races import run_producers_and_workers

KEYS = [f"key-{i}" for i in range(10)]
MODES = ["replace", "preserve_run_at", "unsafe_dedupe", "dedupe"]


def test_concurrent_keyed_adds_and_claims_lose_nothing(dsn, conn):
    stop = threading.Event()
    errors: list[Exception] = []
    outcomes: Counter[str] = Counter()
    # (key, marker) of every request whose effect must be visible in some job
    requests: list[tuple[str, int, str, int | None]] = []
    lock = threading.Lock()

    def producer(n: int) -> None:
        rng = random.Random(n)
        try:
            with psycopg.connect(dsn, autocommit=True) as own:
                for i in range(60):
                    key = rng.choice(KEYS)
                    mode = rng.choice(MODES)
                    marker = n * 1000 + i
                    row = own.execute(
                        "SELECT id, outcome FROM hopper.add_job('t', %s, job_key => %s,"
                        " job_key_mode => %s)",
                        [Json([marker]), key, mode],
                    ).fetchone()
                    assert row is not None and row[0] is not None
                    with lock:
                        outcomes[row[1]] += 1
                        requests.append((key, marker, row[1], row[0]))
        except Exception as error:
            errors.append(error)

    completed: Counter[int] = Counter()

    def worker(n: int) -> None:
        try:
            with psycopg.connect(dsn, autocommit=True) as own:
                while not stop.is_set():
                    rows = own.execute(
                        "SELECT id FROM hopper.get_jobs(%s, batch_size => 3)", [f"w{n}"]
                    ).fetchall()
                    ids = [r[0] for r in rows]
                    if ids:
                        done = own.execute(
                            "SELECT id FROM hopper.complete_claimed_jobs(%s, %s)", [f"w{n}", ids]
                        ).fetchall()
                        with lock:
                            completed.update(r[0] for r in done)
        except Exception as error:
            errors.append(error)

    producers = [threading.Thread(target=producer, args=(n,)) for n in range(16)]
    workers = [threading.Thread(target=worker, args=(n,)) for n in range(4)]
    run_producers_and_workers(producers, workers, stop)

    assert errors == []
    assert len(requests) == 16 * 60
    assert sum(outcomes.values()) == 16 * 60
    assert all(count == 1 for count in completed.values())  # no job completed twice

    active = conn.execute(
        "SELECT key, count(*) AS n FROM hopper.jobs"
        " WHERE key IS NOT NULL AND state NOT IN ('completed', 'failed', 'cancelled')"
        " GROUP BY key"
    ).fetchall()
    assert all(row["n"] == 1 for row in active)

    # No request lost: every inserted/updated marker is in the payload of the
    # job its call returned (replace merges arrays), and every deduped call
    # returned a job that held the key.
    payloads = {row["id"]: row for row in conn.execute("SELECT id, payload, key FROM hopper._jobs")}
    for key, marker, outcome, job_id in requests:
        stored = payloads[job_id]
        if outcome in ("inserted", "updated"):
            assert marker in stored["payload"], (key, marker, outcome)
