"""The hopper CLI: add-job, status, worker --once, and its errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import timedelta

import psycopg
import pytest
from sqlcalls import add_job, job
from workerprocs import TESTS_DIR, a_call_waits_for_a_lock, wait_until


def hopper(*args: str, dsn: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(TESTS_DIR)}
    env.pop("DATABASE_URL", None)
    if dsn:
        env["DATABASE_URL"] = dsn
    return subprocess.run(
        [sys.executable, "-m", "hopper", *args], capture_output=True, text=True, env=env,
        timeout=60,
    )  # fmt: skip


def test_add_job_with_options_then_status(dsn):
    added = hopper(
        "add-job", "echo", '{"to": "a@b.c"}', "--queue", "mail", "--priority", "-3",
        "--max-attempts", "4", "--job-key", "k1", "--flag", "slow", "--tag", "t1", "--tag", "t2",
        "--delay", "1h", dsn=dsn,
    )  # fmt: skip
    assert added.returncode == 0, added.stderr
    reply = json.loads(added.stdout)
    assert reply["outcome"] == "inserted" and reply["state"] == "scheduled"
    with psycopg.connect(dsn) as conn:
        row = conn.execute(
            "SELECT payload, queue_name, priority, max_attempts, key, flags, tags"
            " FROM hopper.jobs WHERE id = %s",
            [reply["id"]],
        ).fetchone()
    assert row == ({"to": "a@b.c"}, "mail", -3, 4, "k1", ["slow"], ["t1", "t2"])
    one = hopper("status", str(reply["id"]), dsn=dsn)
    assert one.returncode == 0 and json.loads(one.stdout)["key"] == "k1"
    counts = hopper("status", dsn=dsn)
    assert counts.returncode == 0
    assert counts.stdout.split("\n")[1].split() == [
        "echo",
        "mail",
        "0",
        "1",
        "0",
        "0",
        "0",
        "0",
        "0",
    ]


def test_add_job_with_dependencies(dsn):
    first = json.loads(hopper("add-job", "echo", dsn=dsn).stdout)["id"]
    added = hopper(
        "add-job", "echo", "--depends-on", str(first), "--depends-on-tag", "import", dsn=dsn
    )
    assert added.returncode == 0, added.stderr
    reply = json.loads(added.stdout)
    assert reply["state"] == "waiting"
    with psycopg.connect(dsn) as conn:
        row = conn.execute(
            "SELECT depends_on, depends_on_tags FROM hopper.jobs WHERE id = %s", [reply["id"]]
        ).fetchone()
    assert row == ([first], ["import"])
    missing = hopper("add-job", "echo", "--depends-on", "424242", dsn=dsn)
    assert missing.returncode != 0
    assert "depends_on names job 424242, which does not exist" in missing.stderr


def test_worker_once_runs_due_jobs(dsn):
    hopper("add-job", "add", '{"a": 20, "b": 22}', dsn=dsn)
    ran = hopper("worker", "--tasks", "worker_tasks:tasks", "--once", dsn=dsn)
    assert ran.returncode == 0, ran.stderr
    assert "ran 1 jobs" in ran.stdout
    with psycopg.connect(dsn) as conn:
        assert conn.execute("SELECT result FROM hopper.jobs").fetchone() == (42,)


def test_clear_errors(dsn, empty_dsn):
    cases = [
        (("add-job", "t", "not json"), dsn, "PAYLOAD is not JSON"),
        (("add-job", "t", "--delay", "soon"), dsn, "delay must be"),
        (("add-job", "t", "--job-key-mode", "x"), dsn, "add_job: job_key_mode must be one of"),
        (("status", "999"), dsn, "no job 999"),
        (("add-job", "t"), empty_dsn, "hopper is not installed in schema hopper"),
        (("worker", "--tasks", "worker_tasks:tasks"), empty_dsn, "not installed"),
        (("worker", "--tasks", "nowhere:tasks"), dsn, "cannot load tasks"),
        (("worker", "--tasks", "worker_tasks"), dsn, "module:registry"),
        (("worker", "--tasks", "worker_tasks:empty"), dsn, "worker_tasks:empty holds no task"),
        (("status",), "postgresql://nobody@127.0.0.1:1/none", "cannot connect"),
        (("status",), "not a url at all", "hopper:"),
    ]
    for args, url, message in cases:
        result = hopper(*args, dsn=url)
        assert result.returncode == 1, (args, result.stdout, result.stderr)
        assert message in result.stderr, (args, result.stderr)
        assert "Traceback" not in result.stderr, result.stderr
    missing = hopper("status")
    assert missing.returncode == 2 and "DATABASE_URL" in missing.stderr


def test_cancel_and_retry(dsn):
    first = json.loads(hopper("add-job", "echo", dsn=dsn).stdout)["id"]
    cancelled = hopper("cancel", str(first), "999", "--reason", "typo", dsn=dsn)
    assert cancelled.returncode == 0, cancelled.stderr
    assert f"job {first}: cancelled" in cancelled.stdout
    assert "not cancelled (not found or not in a state that allows it): [999]" in cancelled.stdout
    retried = hopper("retry", str(first), dsn=dsn)
    assert f"job {first}: pending" in retried.stdout
    with psycopg.connect(dsn) as conn:
        assert conn.execute("SELECT state, last_error FROM hopper.jobs").fetchone() == (
            "pending", "typo",
        )  # fmt: skip


def test_cancel_that_meets_a_deadlock_is_made_again(dsn, conn):
    """The cancel locks the first job and waits for the second, which another
    session holds while it waits for the first: the cancel's backend finds the
    deadlock, and the command tries again once the other side is through."""
    first, second = (add_job(conn, "echo", {})["id"] for _ in range(2))
    env = {**os.environ, "PYTHONPATH": str(TESTS_DIR), "DATABASE_URL": dsn}
    with psycopg.connect(dsn, autocommit=True) as holder:
        holder.execute("BEGIN")
        holder.execute("SET LOCAL deadlock_timeout = '30s'")  # the cancel finds it first
        holder.execute("SELECT FROM hopper._jobs WHERE id = %s FOR UPDATE", [second])
        cancel = subprocess.Popen(
            [sys.executable, "-m", "hopper", "cancel", str(first), str(second)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
        )  # fmt: skip
        wait_until(
            lambda: a_call_waits_for_a_lock(conn, "cancel_jobs"),
            30,
            "the cancel to wait for the second job",
        )
        holder.execute("SELECT FROM hopper._jobs WHERE id = %s FOR UPDATE", [first])
        holder.execute("COMMIT")
        out, err = cancel.communicate(timeout=60)
    assert cancel.returncode == 0, err
    assert "deadlock detected; trying again" in err
    assert out.splitlines() == [f"job {first}: cancelled", f"job {second}: cancelled"]
    assert [job(conn, i)["state"] for i in (first, second)] == ["cancelled"] * 2


def test_an_error_the_server_reports_is_not_called_a_connection_failure(dsn):
    """54000 is an OperationalError in psycopg, as connection failures are: the
    message must still be the database's."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("SELECT hopper.set_setting('max_payload_bytes', '16')")
    run = hopper("add-job", "echo", json.dumps({"text": "x" * 100}), dsn=dsn)
    assert run.returncode == 1
    assert run.stderr.startswith("hopper: add_job: payload is ")
    assert "cannot connect" not in run.stderr


def test_a_worker_start_imports_neither_pydantic_nor_the_bench():
    # each is a tenth of a worker's start-up; a handler's model imports pydantic itself
    code = (
        "import sys, hopper.cli, hopper\n"
        "tasks = hopper.TaskRegistry()\n"
        "@tasks.task('plain')\n"
        "def plain(payload: dict) -> None: ...\n"
        "print(sorted(m for m in ('pydantic', 'hopper.bench') if m in sys.modules))"
    )
    started = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert started.stdout.strip() == "[]"


def test_version_names_the_package_and_its_newest_migration():
    from importlib.metadata import version

    shown = hopper("--version")
    assert shown.returncode == 0, shown.stderr
    newest = sorted((TESTS_DIR.parent / "sql" / "migrations").glob("*.sql"))[-1].stem
    assert shown.stdout == f"hopper {version('pghopper')} (SQL up to migration {newest})\n"
    import hopper as package

    assert package.__version__ == version("pghopper")


def test_add_job_takes_every_option_of_add_job_and_bare_seconds(dsn):
    """--delay 90 was refused although the help says "seconds", and timeout,
    backoff and dead_letter had no option at all."""
    added = hopper(
        "add-job", "t", "--delay", "90", "--timeout", "30", "--backoff", "linear",
        "--backoff-delay", "5s", "--backoff-max", "1m", "--dead-letter", "dlq", dsn=dsn,
    )  # fmt: skip
    assert added.returncode == 0, added.stderr
    job_id = json.loads(added.stdout)["id"]
    with psycopg.connect(dsn) as conn:
        row = conn.execute(
            "SELECT run_at - created_at, timeout, backoff, backoff_delay, backoff_max,"
            " dead_letter FROM hopper._jobs WHERE id = %s",
            [job_id],
        ).fetchone()
    assert row[0].total_seconds() == pytest.approx(90, abs=0.01)
    assert row[1:] == (
        timedelta(seconds=30),
        "linear",
        timedelta(seconds=5),
        timedelta(minutes=1),
        "dlq",
    )
