"""A polling worker behind PgBouncer in transaction mode (SPEC.md 4.9), where each
transaction may run on another server connection: no LISTEN, and no statement
prepared on one server connection can be executed on the next."""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import worker_tasks
from psycopg.conninfo import make_conninfo
from sqlcalls import add_job, job
from workerprocs import wait_until, worker_in_thread

import hopper
from hopper._embedded import EmbeddedPostgres

PGBOUNCER = shutil.which("pgbouncer") or shutil.which("pgbouncer", path="/usr/sbin")
pytestmark = pytest.mark.skipif(
    PGBOUNCER is None, reason="needs Debian's pgbouncer (apt-get install pgbouncer; .ci/run does)"
)


@pytest.fixture(scope="module")
def bouncer_port(pg_server: EmbeddedPostgres) -> Iterator[int]:
    """PgBouncer in transaction mode with two server connections per database."""
    assert PGBOUNCER is not None
    folder = Path(tempfile.mkdtemp(prefix="hopper-pgbouncer-"))
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    (folder / "users.txt").write_text(f'"{pg_server.user}" ""\n')
    (folder / "pgbouncer.ini").write_text(
        f"[databases]\n* = host=127.0.0.1 port={pg_server.port}\n"
        f"[pgbouncer]\nlisten_addr = 127.0.0.1\nlisten_port = {port}\n"
        f"auth_type = trust\nauth_file = {folder / 'users.txt'}\n"
        "pool_mode = transaction\ndefault_pool_size = 2\nmax_client_conn = 200\n"
        f"unix_socket_dir =\nlogfile = {folder / 'pgbouncer.log'}\n"
    )
    as_postgres: list[str] = []
    if os.geteuid() == 0:  # PgBouncer refuses to run as root
        postgres = pwd.getpwnam("postgres")
        for path in (folder, *folder.iterdir()):
            os.chown(path, postgres.pw_uid, postgres.pw_gid)
        as_postgres = ["runuser", "-u", "postgres", "--"]
    process = subprocess.Popen([*as_postgres, PGBOUNCER, str(folder / "pgbouncer.ini")])
    try:
        wait_until(lambda: _accepts(port), 10, "PgBouncer to listen")
        yield port
    finally:
        process.terminate()
        process.wait(10)
        shutil.rmtree(folder, ignore_errors=True)


def _accepts(port: int) -> bool:
    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) == 0


def test_a_polling_worker_behind_pgbouncer_runs_jobs_and_job_transactions(dsn, conn, bouncer_port):
    """Thirty jobs one after the other, so that each pooled connection runs its
    claim and report many times over, then ten that complete in a job transaction."""
    behind = make_conninfo(dsn, port=bouncer_port)
    worker = hopper.Worker(
        behind, worker_tasks.tasks, concurrency=4, listen=False, poll_interval=0.05,
        heartbeat_interval=0.1, stale_after=5,
    )  # fmt: skip
    with worker_in_thread(worker):
        for n in range(30):
            target = add_job(conn, "echo", {"n": n})["id"]
            wait_until(lambda t=target: job(conn, t)["state"] == "completed", 10, "the job")
        for _ in range(10):
            target = add_job(conn, "hold_transaction", {"seconds": 0})["id"]
            wait_until(lambda t=target: job(conn, t)["state"] == "completed", 10, "the job")
    assert worker._helper_error is None  # heartbeats and rescues went through it too
    states = conn.execute("SELECT state, count(*) AS n FROM hopper._jobs GROUP BY state")
    assert [(row["state"], row["n"]) for row in states] == [("completed", 40)]
