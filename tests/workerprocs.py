"""Start `hopper worker` subprocesses (or a Worker in a thread) for tests, and wait on
database conditions."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import psycopg
from psycopg.rows import tuple_row

import hopper

TESTS_DIR = Path(__file__).parent


class WorkerProcess:
    def __init__(self, dsn: str, log_dir: Path, name: str, *args: str) -> None:
        self.log_path = log_dir / f"{name}.log"
        env = {
            **os.environ,
            "PYTHONPATH": str(TESTS_DIR),
            "HOPPER_TEST_DSN": dsn,
            "HOPPER_LOG_LEVEL": "INFO",
        }
        with open(self.log_path, "w") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "hopper", "--database-url", dsn, "worker",
                 "--tasks", "worker_tasks:tasks", *args],
                env=env, stdout=log, stderr=subprocess.STDOUT,
            )  # fmt: skip
        wait_until(lambda: "started" in self.log(), timeout=20, what=f"{name} to start")

    def log(self) -> str:
        return self.log_path.read_text()

    def signal(self, signum: int = signal.SIGTERM) -> None:
        self.process.send_signal(signum)

    def wait(self, timeout: float = 30) -> int:
        return self.process.wait(timeout)

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()


def wait_until(condition: Callable[[], object], timeout: float, what: str) -> float:
    """Polls condition every 20 ms; returns the seconds it took."""
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if condition():
            return time.monotonic() - start
        time.sleep(0.02)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def wait_for_listener(conn: psycopg.Connection, timeout: float = 10) -> None:
    """Returns once a worker's listener in conn's database has run both its LISTENs
    (the cancel channel's is the second) and waits for notifications."""
    wait_until(
        lambda: conn.execute(
            "SELECT 1 FROM pg_stat_activity WHERE application_name = 'hopper-listener'"
            " AND datname = current_database() AND state = 'idle'"
            " AND query LIKE 'LISTEN %%cancel%%'"
        ).fetchone(),
        timeout,
        "the worker's listener",
    )


def waits_for_lock(conn: psycopg.Connection, session: psycopg.Connection) -> bool:
    """Whether session's backend waits for a lock, as conn sees it."""
    with conn.cursor(row_factory=tuple_row) as cursor:
        row = cursor.execute(
            "SELECT wait_event_type FROM pg_stat_activity WHERE pid = %s",
            [session.info.backend_pid],
        ).fetchone()
    return row is not None and row[0] == "Lock"


def a_call_waits_for_a_lock(conn: psycopg.Connection, function: str) -> bool:
    """Whether a session of conn's database waits for a lock in a statement that
    calls function (a worker's, or a command's, whose connection the test lacks)."""
    with conn.cursor(row_factory=tuple_row) as cursor:
        row = cursor.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
            " AND datname = current_database() AND query LIKE %s",
            [f"%{function}%"],
        ).fetchone()
    return row is not None and row[0] > 0


def wait_until_blocked(conn: psycopg.Connection, waiter: psycopg.Connection) -> None:
    """Returns once waiter's backend waits for a lock."""
    wait_until(lambda: waits_for_lock(conn, waiter), 5, "the session to wait for a lock")


def scalar(dsn: str, query: str, params: list | None = None):
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute(query, params or []).fetchone()
    return row[0] if row else None


@contextmanager
def worker_in_thread(worker: hopper.Worker) -> Iterator[None]:
    """Runs ``worker.run()`` on its own event loop in a thread while the block runs,
    then stops it and checks that it stopped."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=lambda: loop.run_until_complete(worker.run()))
    thread.start()
    try:
        yield
    finally:
        loop.call_soon_threadsafe(worker.stop)
        thread.join(timeout=15)
    assert not thread.is_alive()
