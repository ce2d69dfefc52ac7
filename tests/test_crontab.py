"""Crontab files (graphile-worker's format): parsing, syncing into schedules, the CLI flag."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta

import psycopg
import pytest
from sqlcalls import call
from test_cli import hopper as run_cli
from workerprocs import wait_until

from hopper import CrontabError, CrontabItem, parse_crontab, sync_crontab

CRONTAB = """
# minute hour day month weekday task ?options payload
*/5 * * * * send_digest
0 4 * * mon cleanup ?fill=1w2d&max=3&queue=maintenance {"deep": true}
@daily report ?id=daily_report&priority=-1&jobKey=report&jobKeyMode=preserve_run_at
30 2 * * * report ?id=nightly_report {"kind": "nightly"}
"""


def test_lines_become_schedule_items():
    assert parse_crontab(CRONTAB) == [
        CrontabItem("crontab:send_digest", "*/5 * * * *", "send_digest"),
        CrontabItem("crontab:cleanup", "0 4 * * mon", "cleanup", {"deep": True},
                    {"max_attempts": 3, "queue_name": "maintenance"}, "1 weeks 2 days"),
        CrontabItem("crontab:daily_report", "@daily", "report", {},
                    {"priority": -1, "job_key": "report", "job_key_mode": "preserve_run_at"}),
        CrontabItem("crontab:nightly_report", "30 2 * * *", "report", {"kind": "nightly"}),
    ]  # fmt: skip


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("* * * * *", "line 1: expected the cron fields and then a task identifier"),
        ("\n* * * * * t ?color=red", 'line 2: unknown option "color"'),
        ("* * * * * t ?fill=2days", 'line 1: fill must look like "2h" or "1w3d" (got "2days")'),
        ("* * * * * t [1]", "line 1: the payload must be a JSON object"),
        ("* * * * * t {oops", "line 1:"),
        ("* * * * * t ?max=many", 'line 1: option "max" must be an integer (got "many")'),
        ("* * * * * t\n@hourly t", "more than one line for crontab:t (set ?id=)"),
    ],
)
def test_unreadable_lines_are_named(text, message):
    with pytest.raises(CrontabError, match="crontab") as refused:
        parse_crontab(text)
    assert message in str(refused.value)


def test_sync_adds_replaces_and_removes_only_crontab_schedules(conn):
    call(conn, "add_schedule", "by_hand", "@hourly", "t")
    sync_crontab(conn, parse_crontab(CRONTAB))
    rows = conn.execute(
        "SELECT name, cron, task_identifier, payload, job_options, backfill"
        " FROM hopper.schedules ORDER BY name"
    ).fetchall()
    assert [r["name"] for r in rows] == [
        "by_hand", "crontab:cleanup", "crontab:daily_report", "crontab:nightly_report",
        "crontab:send_digest",
    ]  # fmt: skip
    cleanup = rows[1]
    assert cleanup["job_options"] == {"max_attempts": 3, "queue_name": "maintenance"}
    assert cleanup["backfill"] == timedelta(days=9) and cleanup["payload"] == {"deep": True}

    fired = datetime(2026, 12, 1, 4, 0, tzinfo=UTC)
    conn.execute("UPDATE hopper._schedules SET last_fired_at = %s", [fired])
    sync_crontab(conn, parse_crontab("0 5 * * * cleanup {}\n*/5 * * * * send_digest"))
    rows = conn.execute(
        "SELECT name, cron, job_options, last_fired_at FROM hopper.schedules ORDER BY name"
    ).fetchall()
    assert rows == [
        {"name": "by_hand", "cron": "@hourly", "job_options": {}, "last_fired_at": fired},
        {"name": "crontab:cleanup", "cron": "0 5 * * *", "job_options": {},
         "last_fired_at": fired},
        {"name": "crontab:send_digest", "cron": "*/5 * * * *", "job_options": {},
         "last_fired_at": fired},
    ]  # fmt: skip


def test_syncs_of_two_versions_of_a_crontab_at_once_do_not_deadlock(dsn, conn):
    """Workers of a rolling deploy start with the old and the new file at once.
    Each sync locks its schedules as it replaces them and then removes the ones
    its file lacks: a locks s1 and waits for s2, b locks s3 and waits for s2, a
    gets s2 and must remove s3. The deadlock detector aborted one of them (its
    worker did not start); now the syncs take turns, and the last one's file wins."""
    sync_crontab(conn, parse_crontab("@daily s1\n@daily s2\n@daily s3"))
    holder = psycopg.connect(dsn)
    holder.execute("SELECT FROM hopper._schedules WHERE name = 'crontab:s2' FOR UPDATE")
    errors: list[Exception] = []

    def sync(text: str) -> None:
        try:
            with psycopg.connect(dsn) as own:
                sync_crontab(own, parse_crontab(text))
        except psycopg.Error as error:
            errors.append(error)

    def waiting() -> int:
        return conn.execute(
            "SELECT count(*) AS n FROM pg_stat_activity"
            " WHERE wait_event_type = 'Lock' AND datname = current_database()"
        ).fetchone()["n"]

    first = threading.Thread(target=sync, args=("@daily s1\n@daily s2",))
    first.start()
    wait_until(lambda: waiting() == 1, 10, "the first sync to wait for s2")
    second = threading.Thread(target=sync, args=("@daily s3\n@daily s2",))
    second.start()
    wait_until(lambda: waiting() == 2, 10, "the second sync to wait")
    holder.close()
    first.join(15)
    second.join(15)
    assert errors == []
    names = conn.execute("SELECT name FROM hopper.schedules ORDER BY name").fetchall()
    assert [r["name"] for r in names] == ["crontab:s2", "crontab:s3"]


def test_a_crontab_the_database_refuses_changes_nothing_and_names_the_line(conn):
    """The database's error named neither the file's line nor the schedule."""
    sync_crontab(conn, parse_crontab("@hourly keep"))
    with pytest.raises(CrontabError) as refused:
        sync_crontab(conn, parse_crontab("@daily other\n\n0 25 * * * bad"))
    assert str(refused.value) == (
        'crontab line 3: add_schedule: cron field hour is not valid (got "0 25 * * *")'
    )
    assert isinstance(refused.value.__cause__, psycopg.Error)
    assert refused.value.__cause__.sqlstate == "22023"
    with pytest.raises(CrontabError, match=r"^crontab item crontab:x: add_schedule: max_attempts"):
        sync_crontab(conn, [CrontabItem("crontab:x", "@daily", "t", options={"max_attempts": 0})])
    names = [r["name"] for r in conn.execute("SELECT name FROM hopper.schedules").fetchall()]
    assert names == ["crontab:keep"]


def test_worker_flag_syncs_the_file(dsn, conn, tmp_path):
    crontab = tmp_path / "crontab"
    crontab.write_text('*/10 * * * * echo ?id=tick {"n": 1}\n')
    ran = run_cli("worker", "--tasks", "worker_tasks:tasks", "--once", "--crontab",
                  str(crontab), dsn=dsn)  # fmt: skip
    assert ran.returncode == 0, ran.stderr
    (row,) = conn.execute("SELECT name, task_identifier, payload FROM hopper.schedules")
    assert row == {"name": "crontab:tick", "task_identifier": "echo", "payload": {"n": 1}}
    crontab.write_text("*/10 * * * * echo ?every=1\n")
    refused = run_cli("worker", "--tasks", "worker_tasks:tasks", "--once", "--crontab",
                      str(crontab), dsn=dsn)  # fmt: skip
    assert refused.returncode == 1
    assert 'crontab line 1: unknown option "every"' in refused.stderr
    assert "Traceback" not in refused.stderr
    crontab.write_text("*/10 * * * * echo ?max=0\n")
    refused = run_cli("worker", "--tasks", "worker_tasks:tasks", "--once", "--crontab",
                      str(crontab), dsn=dsn)  # fmt: skip
    assert refused.returncode == 1
    assert f"{crontab}: crontab line 1: add_schedule: max_attempts must be" in refused.stderr
    assert "Traceback" not in refused.stderr
