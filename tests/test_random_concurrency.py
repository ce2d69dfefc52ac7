"""A seeded random mix of producers, workers, admin calls and killed backends, run
at once for a few seconds; afterwards the queue's invariants must hold. It found
a replace that stranded another call's dependents (see test_dependencies)."""

from __future__ import annotations

import json
import os
import random
import threading
import time
from collections import Counter
from collections.abc import Callable

import psycopg
from psycopg.conninfo import make_conninfo

# longer runs hunt better: HOPPER_RANDOM_SECONDS=60 pytest tests/test_random_concurrency.py
SECONDS = float(os.environ.get("HOPPER_RANDOM_SECONDS", "6"))
# and other seeds hunt elsewhere: HOPPER_RANDOM_SEED=7
SEED = int(os.environ.get("HOPPER_RANDOM_SEED", "0"))
APP = "hopper-random-test"
ACTIVE = "('waiting', 'scheduled', 'pending', 'running')"
# what the calls may refuse under this load: deadlocks, cycles, unknown or
# retired ids, a key that kept changing, and the killed backends themselves
EXPECTED = (
    psycopg.errors.DeadlockDetected,
    psycopg.errors.InvalidParameterValue,
    psycopg.errors.ForeignKeyViolation,
    psycopg.errors.ObjectNotInPrerequisiteState,
    psycopg.errors.SerializationFailure,
    psycopg.errors.AdminShutdown,
)


class Mix:
    def __init__(self, dsn: str) -> None:
        self.dsn = make_conninfo(dsn, application_name=APP)
        self.admin_dsn = dsn
        self.until = time.monotonic() + SECONDS
        self.unexpected: list[str] = []
        self.refused: Counter[str] = Counter()

    def running(self) -> bool:
        return time.monotonic() < self.until

    def loop(self, seed: int, step: Callable[[psycopg.Connection, random.Random], None]) -> None:
        """Runs step until the time is up, on a connection opened again whenever
        the killer ends it."""
        rng = random.Random(seed)
        while self.running():
            with psycopg.connect(self.dsn, autocommit=True) as conn:
                while self.running() and not conn.closed:
                    try:
                        step(conn, rng)
                    except EXPECTED as error:
                        self.refused[type(error).__name__] += 1
                    except psycopg.Error as error:
                        if conn.closed:  # killed between two statements
                            self.refused["connection lost"] += 1
                        else:
                            self.unexpected.append(f"{type(error).__name__}: {error}")
                    except AssertionError as error:  # a step's own check
                        self.unexpected.append(str(error))


# several tasks, so that claims take shares of a batch across tasks, walk again
# for what other claimers held, and claim any task (None)
TASKS = ["t", "u", "v"]
CLAIMED_TASKS = [["t"], ["t", "u"], ["u", "v", "t"], None]


def some_ids(conn: psycopg.Connection, n: int) -> list[int]:
    return [r[0] for r in conn.execute(
        "SELECT id FROM hopper._jobs ORDER BY random() LIMIT %s", [n]
    )]  # fmt: skip


def produce(conn: psycopg.Connection, rng: random.Random) -> None:
    options: dict = {}
    if rng.random() < 0.4:
        options["queue_name"] = rng.choice(["qa", "qb"])
    if rng.random() < 0.3:
        options["job_key"] = f"k{rng.randrange(20)}"
        options["job_key_mode"] = rng.choice(
            ["replace", "preserve_run_at", "dedupe", "unsafe_dedupe"]
        )
    if rng.random() < 0.15:
        options["run_at"] = f"now() + {rng.choice(['-1', '0.05', '0.3'])} * interval '1 second'"
    if rng.random() < 0.2:
        options["flags"] = [rng.choice(["f1", "f2"])]
    if rng.random() < 0.2:
        options["priority"] = rng.randint(-2, 2)
    if rng.random() < 0.2:
        options["tags"] = [rng.choice(["t1", "t2", "t3"])]
    if rng.random() < 0.1:
        options["depends_on_tags"] = [rng.choice(["t1", "t2", "t3"])]
    if rng.random() < 0.15:
        options["depends_on"] = some_ids(conn, 2) or None
    if rng.random() < 0.1:
        options["timeout"] = "0.1 seconds"  # rescued as timed out if held longer
    run_at = options.pop("run_at", None)
    named = "".join(f", {name} => %s" for name in options)
    if run_at is not None:
        named += f", run_at => {run_at}"
    task = rng.choice(TASKS)
    conn.execute(f"SELECT hopper.add_job('{task}', '{{}}'{named})", list(options.values()))


def produce_batch(conn: psycopg.Connection, rng: random.Random) -> None:
    specs = []
    for i in range(rng.randint(1, 6)):
        spec: dict = {"identifier": rng.choice(TASKS), "max_attempts": rng.choice([1, 2, 25])}
        if i and rng.random() < 0.5:
            spec["depends_on"] = [-rng.randint(1, i)]  # an earlier spec of the batch
        if rng.random() < 0.3:
            spec["tags"] = [rng.choice(["t1", "t2", "t3"])]
        if rng.random() < 0.2:
            spec["job_key"] = f"k{rng.randrange(20)}"
        if rng.random() < 0.1:
            spec["dead_letter"] = "dead"
        specs.append(spec)
    conn.execute(
        "SELECT count(*) FROM hopper.add_jobs(%s::jsonb, %s)",
        [json.dumps(specs), rng.random() < 0.3],
    )


def work(conn: psycopg.Connection, rng: random.Random) -> None:
    """Claims, then completes, fails or releases; now and then it goes silent and
    comes back under a new id, as a worker that was thought dead."""
    worker = f"w{rng.randrange(10**9)}"
    conn.execute("SELECT hopper.register_worker(%s)", [worker])
    for _ in range(rng.randint(1, 20)):
        forbidden = rng.choice([None, ["f1"], ["f1", "f2"]])
        claimed = conn.execute(
            "SELECT id, flags FROM hopper.get_jobs(%s, %s, %s, forbidden_flags => %s)",
            [worker, rng.choice(CLAIMED_TASKS), rng.randint(1, 5), forbidden],
        ).fetchall()
        if set(forbidden or []) & {f for _, flags in claimed for f in flags or []}:
            raise AssertionError(f"claimed a job with a forbidden flag: {claimed} {forbidden}")
        ids = [job_id for job_id, _ in claimed]
        if not ids:
            time.sleep(0.005)
            continue
        if rng.random() < 0.3:
            cancelled = conn.execute("SELECT hopper.heartbeat(%s)", [worker]).fetchone()[0]
            conn.execute("SELECT hopper.set_progress(%s, %s, 50)", [worker, ids[0]])
            if cancelled:  # as a worker does: its handlers end, failing the jobs
                conn.execute(
                    "SELECT count(*) FROM hopper.fail_claimed_jobs(%s, %s, %s)",
                    [worker, cancelled, ["cancelled by request"] * len(cancelled)],
                )
                ids = [i for i in ids if i not in cancelled]
        choice = rng.random()
        if choice < 0.55:
            conn.execute("SELECT hopper.complete_claimed_job_ids(%s, %s, NULL)", [worker, ids])
        elif choice < 0.8:
            conn.execute(
                "SELECT count(*) FROM hopper.fail_claimed_jobs(%s, %s, %s)",
                [worker, ids, ["boom"] * len(ids)],
            )
        elif choice < 0.9:
            conn.execute("SELECT count(*) FROM hopper.release_jobs(%s, %s)", [worker, ids])
        else:
            return  # silent: its jobs wait for a rescue


ADMIN_CALLS = [
    "SELECT count(*) FROM hopper.cancel_jobs(%s)",
    "SELECT count(*) FROM hopper.retry_jobs(%s)",
    "SELECT count(*) FROM hopper.complete_jobs(%s)",
    "SELECT count(*) FROM hopper.permanently_fail_jobs(%s)",
    "SELECT count(*) FROM hopper.reschedule_jobs(%s, run_at => now())",
]


WORKER_CALLS = [
    "SELECT count(*) FROM hopper.force_unlock_workers(ARRAY[%s])",
    "SELECT hopper.unregister_worker(%s)",
]


def administer(conn: psycopg.Connection, rng: random.Random) -> None:
    choice = rng.random()
    if choice < 0.15:
        conn.execute("SELECT count(*) FROM hopper.rescue_stale_jobs('0.2 seconds')")
    elif choice < 0.25:
        worker = conn.execute("SELECT id FROM hopper._workers ORDER BY random() LIMIT 1").fetchone()
        if worker is not None:
            conn.execute(rng.choice(WORKER_CALLS), [worker[0]])
    elif choice < 0.3:
        conn.execute("SELECT count(*) FROM hopper.remove_job(%s)", [f"k{rng.randrange(20)}"])
    elif choice < 0.35:
        conn.execute("SELECT hopper.set_queue('qa', paused => %s)", [rng.random() < 0.5])
    elif choice < 0.38:
        conn.execute("SELECT hopper.prune('0 seconds')")
    else:
        conn.execute(rng.choice(ADMIN_CALLS), [some_ids(conn, 3)])
    time.sleep(0.01)


def kill(mix: Mix) -> None:
    rng = random.Random(99)
    with psycopg.connect(mix.admin_dsn, autocommit=True) as conn:
        while mix.running():
            time.sleep(rng.uniform(0.05, 0.3))
            conn.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                " WHERE application_name = %s AND state = 'active' AND datname = current_database()"
                " ORDER BY random() LIMIT 1",
                [APP],
            )


def test_a_random_concurrent_mix_keeps_the_invariants(dsn, conn):
    conn.execute("SELECT hopper.set_queue('qa', 1), hopper.set_queue('qb', 2)")
    mix = Mix(dsn)
    roles = [produce] * 3 + [produce_batch] * 2 + [work] * 4 + [administer] * 2
    threads = [
        threading.Thread(target=mix.loop, args=(SEED * 100 + seed, role))
        for seed, role in enumerate(roles)
    ]
    threads.append(threading.Thread(target=kill, args=(mix,)))
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert mix.unexpected == []
    conn.execute("SELECT count(*) FROM hopper.rescue_stale_jobs('0 seconds')")

    def rows(query: str) -> list[dict]:
        return conn.execute(query).fetchall()

    assert rows(f"SELECT state FROM hopper._jobs WHERE state NOT IN {ACTIVE}") != []
    # every waiting job still waits on an unfinished prerequisite or tag holder
    assert rows(f"""
        SELECT w.id FROM hopper._jobs AS w
        WHERE w.state = 'waiting'
            AND NOT EXISTS (
                SELECT FROM hopper._jobs AS p
                WHERE p.id = any(w.depends_on) AND p.state IN {ACTIVE}
            )
            AND NOT EXISTS (
                SELECT FROM hopper._jobs AS h
                WHERE h.tags @> w.depends_on_tags AND h.id <> w.id AND h.state IN {ACTIVE}
            )
    """) == []  # fmt: skip
    # no job runs for a worker that is gone, and no queue slot is held for nothing
    assert rows("""
        SELECT j.id FROM hopper._jobs AS j
        WHERE j.state = 'running' AND NOT EXISTS (
            SELECT FROM hopper._workers AS w WHERE w.id = j.locked_by AND w.retired_at IS NULL
        )
    """) == []  # fmt: skip
    assert rows("""
        SELECT q.name FROM hopper._queues AS q
        WHERE q.running <> (
            SELECT count(*) FROM hopper._jobs AS j
            WHERE j.queue_name = q.name AND j.state = 'running'
        )
    """) == []  # fmt: skip
    assert rows(f"""
        SELECT key FROM hopper._jobs WHERE key IS NOT NULL AND state IN {ACTIVE}
        GROUP BY key HAVING count(*) > 1
    """) == []  # fmt: skip
    # a job that failed for good with a dead-letter task has sent its dead letter
    assert rows("""
        SELECT id FROM hopper._jobs
        WHERE state = 'failed' AND dead_letter IS NOT NULL AND dead_letter_job_id IS NULL
    """) == []  # fmt: skip
