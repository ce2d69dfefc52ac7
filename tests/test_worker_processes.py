"""Real worker processes: exactly-once over 5,000 jobs, graceful and immediate shutdown,
LISTEN connection killed, database restart."""

from __future__ import annotations

import random
import signal
import threading
import time

import psycopg
import pytest
import worker_tasks
from psycopg.types.json import Jsonb
from workerprocs import WorkerProcess, scalar, wait_until


@pytest.fixture
def workers(dsn, tmp_path):
    worker_tasks.create_executions_table(dsn)
    started: list[WorkerProcess] = []

    def start(*args: str) -> WorkerProcess:
        process = WorkerProcess(dsn, tmp_path, f"worker{len(started)}", *args)
        started.append(process)
        return process

    yield start
    for process in started:
        process.kill()


def completed_count(dsn: str) -> int:
    return scalar(dsn, "SELECT count(*) FROM hopper.jobs WHERE state = 'completed'")


def test_four_processes_complete_5000_jobs_exactly_once(dsn, workers):
    # all four wait before the jobs arrive: started one by one after the jobs,
    # the first three could finish them all before the fourth is up
    processes = [workers("-c", "4") for _ in range(4)]
    with psycopg.connect(dsn, autocommit=True) as conn:
        for _ in range(5):
            conn.execute(
                "SELECT count(*) FROM hopper.add_jobs(%s)",
                [Jsonb([{"identifier": "record"}] * 1000)],
            )
    took = wait_until(lambda: completed_count(dsn) == 5000, timeout=120, what="5000 completions")
    for process in processes:
        process.signal()
    assert [process.wait() for process in processes] == [0, 0, 0, 0]
    executions = worker_tasks.executions(dsn)
    assert len(executions) == 5000
    assert len({job_id for job_id, _, _ in executions}) == 5000
    assert len({worker for _, worker, _ in executions}) == 4  # all four took part
    assert scalar(dsn, "SELECT count(*) FROM hopper.jobs WHERE attempts <> 1") == 0
    print(f"\n5000 jobs by 4 processes x 4 slots in {took:.2f}s")


def test_sigterm_waits_grace_period_then_releases_without_losing_an_attempt(dsn, workers):
    first = workers("--grace-period", "1")
    job_id = scalar(dsn, "SELECT id FROM hopper.add_job('slow', '{\"seconds\": 60}')")
    wait_until(lambda: len(worker_tasks.executions(dsn)) == 1, timeout=10, what="slow job start")
    sent = time.monotonic()
    first.signal(signal.SIGTERM)
    assert first.wait(timeout=10) == 0
    assert time.monotonic() - sent < 1 + 1
    with psycopg.connect(dsn, autocommit=True) as conn:
        state, attempts, locked_by = conn.execute(
            "SELECT state, attempts, locked_by FROM hopper.jobs WHERE id = %s", [job_id]
        ).fetchone()
    assert (state, attempts, locked_by) == ("pending", 0, None)

    # another worker runs it at once, as its first attempt; a second signal stops
    # that one without waiting for the grace period, and still releases the job
    second = workers("--grace-period", "30")
    wait_until(lambda: len(worker_tasks.executions(dsn)) == 2, timeout=10, what="rerun")
    runs = worker_tasks.executions(dsn)
    assert runs[0][1] != runs[1][1]
    assert scalar(dsn, "SELECT attempts FROM hopper.jobs WHERE id = %s", [job_id]) == 1
    sent = time.monotonic()
    second.signal(signal.SIGTERM)
    time.sleep(0.2)
    second.signal(signal.SIGTERM)
    assert second.wait(timeout=10) == 0
    assert time.monotonic() - sent < 3
    assert scalar(dsn, "SELECT state FROM hopper.jobs WHERE id = %s", [job_id]) == "pending"


def listener_pid(dsn: str) -> int | None:
    return scalar(
        dsn,
        "SELECT pid FROM pg_stat_activity WHERE application_name = 'hopper-listener'"
        " AND datname = current_database()",
    )


def test_killed_listen_connection_comes_back_and_jobs_still_run(dsn, workers):
    workers("--poll-interval", "1")
    wait_until(lambda: listener_pid(dsn), timeout=10, what="listener")
    old = listener_pid(dsn)
    assert scalar(dsn, "SELECT pg_terminate_backend(%s)", [old]) is True
    job_id = scalar(dsn, "SELECT id FROM hopper.add_job('echo')")
    took = wait_until(
        lambda: scalar(dsn, "SELECT state FROM hopper.jobs WHERE id = %s", [job_id]) == "completed",
        timeout=5,
        what="job after listener was killed",
    )
    assert took < 1 + 0.5  # within the poll interval
    wait_until(lambda: listener_pid(dsn) not in (None, old), timeout=10, what="new listener")


def test_worker_survives_a_database_restart(dsn, workers, pg_server):
    process = workers("--poll-interval", "0.5")
    first = scalar(dsn, "SELECT id FROM hopper.add_job('echo')")
    wait_until(lambda: completed_count(dsn) == 1, timeout=10, what="first job")
    pg_server.restart()
    second = scalar(dsn, "SELECT id FROM hopper.add_job('echo')")
    wait_until(lambda: completed_count(dsn) == 2, timeout=30, what="job after restart")
    assert process.process.poll() is None
    with psycopg.connect(dsn) as conn:
        ids = {row for (row,) in conn.execute("SELECT id FROM hopper.jobs").fetchall()}
    assert ids == {first, second}


def test_racing_producers_never_leave_a_job_waiting_for_the_poll(dsn, workers):
    """Workers turn busy and idle while four producers add jobs, some in transactions
    held open past the add; with a 30 s poll, every job must still start within
    about a second (NOTIFY while a worker waits, quick re-polls once it runs dry)."""
    for _ in range(2):
        workers("-c", "2", "--poll-interval", "30")

    def produce(seed: int) -> None:
        rng = random.Random(seed)
        with psycopg.connect(dsn, autocommit=True) as conn:
            for _ in range(60):
                with conn.transaction():
                    conn.execute("SELECT hopper.add_job('echo')")
                    time.sleep(rng.choice([0, 0, 0.002, 0.02]))
                time.sleep(rng.choice([0, 0.001, 0.01, 0.05]))

    producers = [threading.Thread(target=produce, args=(seed,)) for seed in range(4)]
    for producer in producers:
        producer.start()
    for producer in producers:
        producer.join()
    wait_until(lambda: completed_count(dsn) == 240, timeout=30, what="240 completions")
    slowest = scalar(
        dsn, "SELECT max(extract(epoch FROM started_at - created_at)) FROM hopper.jobs"
    )
    assert slowest < 1.5, slowest
