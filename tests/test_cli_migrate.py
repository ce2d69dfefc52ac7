"""`hopper migrate` (what `make migrate` runs): applies, is idempotent, reports clearly."""

from __future__ import annotations

import os
import subprocess
import sys

import psycopg


def hopper(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "hopper", *args],
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        timeout=60,
    )


def test_migrate_installs_then_reports_up_to_date(empty_dsn):
    first = hopper("--database-url", empty_dsn, "migrate")
    assert first.returncode == 0, first.stderr
    assert "applied migrations/0001_jobs.sql" in first.stdout
    second = hopper("migrate", env={"DATABASE_URL": empty_dsn})
    assert (second.returncode, second.stdout.strip()) == (0, "schema hopper is up to date")
    with psycopg.connect(empty_dsn) as conn:
        assert conn.execute("SELECT count(*) FROM hopper._migrations").fetchone()[0] > 2


def test_migrate_into_schema_from_environment(empty_dsn):
    result = hopper("--database-url", empty_dsn, "migrate", env={"HOPPER_SCHEMA": "jobs_b"})
    assert result.returncode == 0, result.stderr
    with psycopg.connect(empty_dsn) as conn:
        row = conn.execute("SELECT outcome FROM jobs_b.add_job('t')").fetchone()
    assert row == ("inserted",)


def test_migrate_errors_are_clear(empty_dsn):
    bad_schema = hopper("--database-url", empty_dsn, "migrate", "--schema", "x; drop")
    assert bad_schema.returncode == 1
    assert "is not allowed" in bad_schema.stderr
    no_database = hopper("migrate", env={"DATABASE_URL": ""})
    assert no_database.returncode == 2
    assert "DATABASE_URL" in no_database.stderr
    unreachable = hopper("--database-url", "postgresql://nobody@127.0.0.1:1/none", "migrate")
    assert unreachable.returncode == 1
    assert "cannot connect" in unreachable.stderr
