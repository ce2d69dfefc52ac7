"""Schedules (SPEC.md 4.7): cron parsing, firings enqueued once, backfill, validation."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from functools import partial

import psycopg
import pytest
import worker_tasks
from plans import plan_with, shared_buffers_touched, statement_plans
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb
from races import at_once
from sqlcalls import call, call_one
from workerprocs import wait_for_listener, wait_until, worker_in_thread

import hopper
from hopper._migrate import migrate

T0 = datetime(2026, 12, 1, 0, 0, tzinfo=UTC)  # a Tuesday


def at(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


def created_at(conn: psycopg.Connection, name: str, when: datetime) -> None:
    """Dates a schedule's creation back, so that firings after it can be asked for."""
    conn.execute("UPDATE hopper._schedules SET created_at = %s WHERE name = %s", [when, name])


def firings(conn: psycopg.Connection, cron: str, upto: datetime, **options) -> list[datetime]:
    """The run_at of every job one call enqueues for a schedule made at T0, with a
    backfill long enough to cover (T0, upto]."""
    call(conn, "add_schedule", "s", cron, "task", backfill=upto - T0, **options)
    created_at(conn, "s", T0)
    return [row["run_at"] for row in call(conn, "enqueue_due_schedules", upto)]


@pytest.mark.parametrize(
    ("cron", "upto", "expected"),
    [
        ("*/15 9-10 * * *", "2026-12-01T23:59",
         [f"2026-12-01T{h:02}:{m:02}" for h in (9, 10) for m in (0, 15, 30, 45)]),
        ("5-20/5 3 * * *", "2026-12-01T12:00",
         ["2026-12-01T03:05", "2026-12-01T03:10", "2026-12-01T03:15", "2026-12-01T03:20"]),
        # both day fields restricted: either one matches (Dec 1 and 15, or a Friday)
        ("0 6 1,15 * fri", "2026-12-31T23:59",
         ["2026-12-01T06:00", "2026-12-04T06:00", "2026-12-11T06:00", "2026-12-15T06:00",
          "2026-12-18T06:00", "2026-12-25T06:00"]),
        # one restricted: both must match (a Friday in January)
        ("30 8 * JAN Fri", "2027-01-31T23:59",
         ["2027-01-01T08:30", "2027-01-08T08:30", "2027-01-15T08:30", "2027-01-22T08:30",
          "2027-01-29T08:30"]),
        ("0 12 * * 7", "2026-12-14T00:00", ["2026-12-06T12:00", "2026-12-13T12:00"]),
        ("@hourly", "2026-12-01T03:30",
         ["2026-12-01T01:00", "2026-12-01T02:00", "2026-12-01T03:00"]),
        ("@daily", "2026-12-03T12:00", ["2026-12-02T00:00", "2026-12-03T00:00"]),
        ("@weekly", "2026-12-14T00:00", ["2026-12-06T00:00", "2026-12-13T00:00"]),
        ("@monthly", "2027-02-15T00:00", ["2027-01-01T00:00", "2027-02-01T00:00"]),
        ("@yearly", "2028-06-01T00:00", ["2027-01-01T00:00", "2028-01-01T00:00"]),
    ],
)  # fmt: skip
def test_cron_expressions_fire_at_their_times(conn, cron, upto, expected):
    assert firings(conn, cron, at(upto)) == [at(e) for e in expected]


def test_fields_match_the_schedules_time_zone(conn):
    # 09:00 in Paris is 08:00 UTC in winter and 07:00 UTC in summer
    winter = firings(conn, "0 9 * * *", at("2026-12-02T12:00"), timezone="Europe/Paris")
    assert winter == [at("2026-12-01T08:00"), at("2026-12-02T08:00")]


@pytest.mark.parametrize(
    ("start", "expected_utc_hours"),
    [("2027-03-27", [1.5, None, 0.5]), ("2027-10-30", [0.5, None, 1.5])],
    ids=["clocks go forward", "clocks go back"],
)
def test_a_daylight_saving_change_fires_the_day_once(conn, start, expected_utc_hours):
    """02:30 in Paris does not exist on the first day and happens twice on the second."""
    call(conn, "add_schedule", "s", "30 2 * * *", "t", backfill="3 days", timezone="Europe/Paris")
    begin = at(f"{start}T00:00")
    created_at(conn, "s", begin)
    rows = call(conn, "enqueue_due_schedules", begin + timedelta(days=3))
    per_day = [[r["run_at"] for r in rows if (r["run_at"] - begin).days == d] for d in range(3)]
    assert [len(day) for day in per_day] == [1, 1, 1]
    for day, (fired,), hours in zip(range(3), per_day, expected_utc_hours, strict=True):
        if hours is not None:
            assert fired == begin + timedelta(days=day, hours=hours)


def test_latest_firing_on_time_earlier_ones_only_within_backfill(conn):
    call(conn, "add_schedule", "s", "*/5 * * * *", "report", {"k": 1}, backfill="10 minutes")
    created_at(conn, "s", T0)
    rows = call(conn, "enqueue_due_schedules", T0 + timedelta(minutes=30))
    # 10:20 is exactly 10 minutes before now: inclusive
    assert [(r["run_at"], r["payload"]) for r in rows] == [
        (T0 + timedelta(minutes=m), {"k": 1, "_cron": {
            "ts": (T0 + timedelta(minutes=m)).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "backfilled": m != 30,
        }})
        for m in (20, 25, 30)
    ]  # fmt: skip
    assert call(conn, "enqueue_due_schedules", T0 + timedelta(minutes=34)) == []
    later = call(conn, "enqueue_due_schedules", T0 + timedelta(minutes=35))
    assert [r["run_at"] for r in later] == [T0 + timedelta(minutes=35)]


def test_without_backfill_only_the_latest_missed_firing_runs(conn):
    call(conn, "add_schedule", "s", "@hourly", "t")
    created_at(conn, "s", T0)
    rows = call(conn, "enqueue_due_schedules", T0 + timedelta(days=3, minutes=5))
    assert [(r["run_at"], r["payload"]["_cron"]["backfilled"]) for r in rows] == [
        (T0 + timedelta(days=3), False)
    ]


def test_a_new_schedule_owes_nothing_from_before_it_was_made(conn):
    made = call_one(conn, "add_schedule", "s", "* * * * *", "t")
    assert made["last_fired_at"] is None
    assert call(conn, "enqueue_due_schedules", made["created_at"]) == []
    assert call(conn, "enqueue_due_schedules", made["created_at"] - timedelta(hours=1)) == []


def test_replacing_a_schedule_keeps_its_memory(conn):
    call(conn, "add_schedule", "s", "@hourly", "t")
    created_at(conn, "s", T0)
    call(conn, "enqueue_due_schedules", T0 + timedelta(hours=2))
    replaced = call_one(conn, "add_schedule", "s", "*/30 * * * *", "other", priority=3)
    assert replaced["last_fired_at"] == T0 + timedelta(hours=2)
    assert (replaced["cron"], replaced["task_identifier"]) == ("*/30 * * * *", "other")
    rows = call(conn, "enqueue_due_schedules", T0 + timedelta(hours=2, minutes=30))
    assert [(r["task_identifier"], r["run_at"], r["priority"]) for r in rows] == [
        ("other", T0 + timedelta(hours=2, minutes=30), 3)
    ]


def test_job_options_reach_the_jobs(conn):
    call(conn, "add_schedule", "s", "@daily", "t", queue_name="q", max_attempts=2,
         job_key="daily", flags=["f"], tags=["x"], timeout="5 minutes")  # fmt: skip
    created_at(conn, "s", T0)
    (job,) = call(conn, "enqueue_due_schedules", T0 + timedelta(days=1))
    assert (job["queue_name"], job["max_attempts"], job["key"], job["flags"], job["tags"]) == (
        "q", 2, "daily", ["f"], ["x"],
    )  # fmt: skip
    assert job["timeout"] == timedelta(minutes=5)


def test_concurrent_callers_enqueue_each_firing_once(conn, connect):
    for i in range(5):
        call(conn, "add_schedule", f"s{i}", "*/10 * * * *", f"t{i}", backfill="1 hour")
        created_at(conn, f"s{i}", T0)
    callers = [connect() for _ in range(8)]
    at_once(*(partial(call, c, "enqueue_due_schedules", T0 + timedelta(hours=1)) for c in callers))
    rows = conn.execute(
        "SELECT task_identifier, count(*) AS n, count(DISTINCT run_at) AS d"
        " FROM hopper.jobs GROUP BY 1 ORDER BY 1"
    ).fetchall()
    assert rows == [{"task_identifier": f"t{i}", "n": 6, "d": 6} for i in range(5)]


def test_remove_schedule_says_whether_there_was_one_and_keeps_its_jobs(conn):
    call(conn, "add_schedule", "s", "@hourly", "t")
    created_at(conn, "s", T0)
    call(conn, "enqueue_due_schedules", T0 + timedelta(hours=1))
    assert call_one(conn, "remove_schedule", "s")["remove_schedule"] is True
    assert call_one(conn, "remove_schedule", "s")["remove_schedule"] is False
    assert conn.execute("SELECT count(*) AS n FROM hopper.schedules").fetchone() == {"n": 0}
    assert conn.execute("SELECT count(*) AS n FROM hopper.jobs").fetchone() == {"n": 1}


@pytest.mark.parametrize(
    ("args", "options", "sqlstate", "message"),
    [
        (["s", "61 * * * *", "t"], {}, "22023", 'field minute is not valid (got "61 * * * *")'),
        (["s", "* 24 * * *", "t"], {}, "22023", "cron field hour is not valid"),
        (["s", "* * 0 * *", "t"], {}, "22023", "cron field day-of-month is not valid"),
        (["s", "* * * foo *", "t"], {}, "22023", "cron field month is not valid"),
        (["s", "* * * * 8", "t"], {}, "22023", "cron field day-of-week is not valid"),
        (["s", "*/0 * * * *", "t"], {}, "22023", "cron field minute is not valid"),
        (["s", "5-1 * * * *", "t"], {}, "22023", "cron field minute is not valid"),
        (["s", "* * * *", "t"], {}, "22023", "cron must have five fields"),
        (["s", "@often", "t"], {}, "22023", "cron must have five fields"),
        (["s", None, "t"], {}, "22004", "cron must not be null"),
        ([" ", "@daily", "t"], {}, "22023", "name must not be blank"),
        (["s", "@daily", " "], {}, "22023", "identifier must not be blank"),
        (["s", "@daily", "t"], {"job_key_mode": "x"}, "22023", "job_key_mode must be one of"),
        (["s", "@daily", "t", [1]], {}, "22023", "payload must be a JSON object"),
        (["s", "@daily", "t"], {"backfill": "-1 hour"}, "22023", "backfill must not be negative"),
        (["s", "@daily", "t"], {"timezone": "Mars/Olympus"}, "22023",
         'timezone "Mars/Olympus" is not known'),
    ],
)  # fmt: skip
def test_bad_schedules_are_refused_and_change_nothing(conn, args, options, sqlstate, message):
    if len(args) == 4:
        args = [*args[:3], Jsonb(args[3])]
    with pytest.raises(psycopg.Error) as refused:
        call(conn, "add_schedule", *args, **options)
    assert refused.value.sqlstate == sqlstate
    assert message in str(refused.value) and str(refused.value).startswith("add_schedule: ")
    assert conn.execute("SELECT count(*) AS n FROM hopper.schedules").fetchone() == {"n": 0}


def test_a_running_worker_enqueues_and_runs_due_firings(dsn, conn):
    call(conn, "add_schedule", "s", "* * * * *", "echo", {"from": "cron"})
    conn.execute("UPDATE hopper._schedules SET created_at = now() - interval '90 seconds'")
    worker = hopper.Worker(dsn, worker_tasks.tasks, concurrency=2, schedule_interval=0.2)
    with worker_in_thread(worker):
        wait_until(
            lambda: conn.execute(
                "SELECT 1 FROM hopper.jobs WHERE task_identifier = 'echo' AND state = 'completed'"
            ).fetchone(),
            timeout=10,
            what="the firing's job to run",
        )
    # one firing, or two if a minute began while the test ran
    fired = conn.execute("SELECT payload, run_at FROM hopper.jobs ORDER BY run_at").fetchall()
    assert 1 <= len(fired) <= 2, fired
    for row in fired:
        assert row["payload"]["from"] == "cron" and row["payload"]["_cron"]["backfilled"] is False
        assert row["run_at"].second == 0 and row["run_at"].microsecond == 0
    last = conn.execute("SELECT last_fired_at FROM hopper.schedules").fetchone()["last_fired_at"]
    assert last == fired[-1]["run_at"]


def test_a_worker_wakes_for_the_next_firing_not_only_every_interval(dsn, conn):
    """With schedule_interval 60 s, the worker still looks at the schedules when the
    next firing comes: here next_fire_at, set by hand to 1.5 s ahead (no firing is
    really due then), is worked out again soon after."""
    call(conn, "add_schedule", "s", "* * * * *", "echo")
    soon = conn.execute(
        "UPDATE hopper._schedules SET next_fire_at = now() + interval '1.5 seconds'"
        " RETURNING next_fire_at"
    ).fetchone()["next_fire_at"]
    worker = hopper.Worker(dsn, worker_tasks.tasks, concurrency=1, schedule_interval=60)
    with worker_in_thread(worker):
        wait_until(lambda: next_fire_at(conn) != soon, 5, "the worker to call at the firing")
    worked_out = next_fire_at(conn)
    assert worked_out is not None and worked_out > soon - timedelta(seconds=1.5)
    assert (worked_out.second, worked_out.microsecond) == (0, 0)


def test_a_sleeping_worker_hears_of_a_schedule_added_meanwhile(dsn, conn, connect):
    """The worker, with no schedule and schedule_interval 60 s, sleeps; a schedule
    added then (whose next_fire_at is set by hand to 1 s ahead, in the same
    transaction) is looked at when that second comes."""
    worker = hopper.Worker(dsn, worker_tasks.tasks, concurrency=1, schedule_interval=60)
    with worker_in_thread(worker):
        wait_for_listener(conn)
        adder = connect()
        with adder.transaction():
            call(adder, "add_schedule", "s", "* * * * *", "echo")
            soon = adder.execute(
                "UPDATE hopper._schedules SET next_fire_at = now() + interval '1 second'"
                " RETURNING next_fire_at"
            ).fetchone()["next_fire_at"]
        wait_until(lambda: next_fire_at(conn) != soon, 5, "the worker to call at the firing")
    assert (next_fire_at(conn).second, next_fire_at(conn).microsecond) == (0, 0)


def test_next_schedule_firing_is_the_earliest_ahead(conn):
    assert call_one(conn, "next_schedule_firing")["next_schedule_firing"] is None
    call(conn, "add_schedule", "daily", "0 3 * * *", "t")
    call(conn, "add_schedule", "never", "0 0 30 2 *", "t")
    daily = next_fire_at(conn, "daily")
    assert call_one(conn, "next_schedule_firing")["next_schedule_firing"] == daily
    # a firing due but not enqueued (its jobs could not be added) is not ahead
    conn.execute("UPDATE hopper._schedules SET next_fire_at = now() - interval '1 minute'")
    assert call_one(conn, "next_schedule_firing")["next_schedule_firing"] is None


def test_a_schedule_that_cannot_enqueue_warns_and_leaves_the_others_alone(conn):
    call(conn, "add_schedule", "a_big", "@hourly", "t", {"blob": "x" * 500})
    call(conn, "add_schedule", "b_small", "@hourly", "t", {})
    conn.execute("UPDATE hopper._schedules SET created_at = %s", [T0])
    call(conn, "set_setting", "max_payload_bytes", "200")
    warnings: list[str] = []
    conn.add_notice_handler(lambda diag: warnings.append(diag.message_primary or ""))
    rows = call(conn, "enqueue_due_schedules", T0 + timedelta(hours=1))
    assert [r["payload"]["_cron"]["ts"] for r in rows] == ["2026-12-01T01:00:00Z"]
    assert any('schedule "a_big" enqueued nothing' in w and "max_payload_bytes" in w
               for w in warnings), warnings  # fmt: skip
    memory = conn.execute("SELECT name, last_fired_at FROM hopper.schedules ORDER BY 1").fetchall()
    assert memory == [
        {"name": "a_big", "last_fired_at": None},
        {"name": "b_small", "last_fired_at": T0 + timedelta(hours=1)},
    ]


def test_run_once_enqueues_due_firings_then_runs_them(dsn, conn):
    call(conn, "add_schedule", "s", "* * * * *", "echo", {"from": "cron"})
    conn.execute("UPDATE hopper._schedules SET created_at = now() - interval '61 seconds'")
    assert hopper.run_once(dsn, worker_tasks.tasks) >= 1
    states = conn.execute("SELECT DISTINCT state FROM hopper.jobs").fetchall()
    assert states == [{"state": "completed"}]


def next_fire_at(conn: psycopg.Connection, name: str = "s") -> datetime | None:
    row = conn.execute("SELECT next_fire_at FROM hopper.schedules WHERE name = %s", [name])
    return row.fetchone()["next_fire_at"]


def test_next_fire_at_follows_creation_firings_and_replacement(conn):
    call(conn, "add_schedule", "s", "30 2 * * *", "t", timezone="Europe/Paris")
    created_at(conn, "s", T0)
    assert next_fire_at(conn) == at("2026-12-01T01:30")  # 02:30 in Paris
    call(conn, "enqueue_due_schedules", T0 + timedelta(days=2))
    assert next_fire_at(conn) == at("2026-12-03T01:30")
    call(conn, "add_schedule", "s", "0 12 * * sat", "t")  # replaced: UTC, Saturdays
    assert next_fire_at(conn) == at("2026-12-05T12:00")
    call(conn, "add_schedule", "s", "0 0 29 2 *", "t")
    assert next_fire_at(conn) == at("2028-02-29T00:00")
    call(conn, "add_schedule", "s", "0 0 30 2 *", "t")  # no February 30th
    assert next_fire_at(conn) is None
    assert call(conn, "enqueue_due_schedules", T0 + timedelta(days=3650)) == []


def test_enqueue_reads_only_the_due_schedules(conn):
    conn.execute(
        "INSERT INTO hopper._schedules (name, cron, task_identifier, created_at)"
        " SELECT 'later' || i, '0 3 * * *', 't', %s FROM generate_series(1, 2000) AS i",
        [T0],
    )
    call(conn, "add_schedule", "due", "@hourly", "t")
    created_at(conn, "due", T0)
    conn.execute("ANALYZE hopper._schedules")

    plans = statement_plans(
        conn, "SELECT * FROM hopper.enqueue_due_schedules(%s)", [T0 + timedelta(hours=2)],
        "hopper.enqueue_due_schedules(",
    )  # fmt: skip
    scan = plan_with(plans, "LockRows")
    print(f"\nthe schedules one call reads, 2,001 kept:\n{scan}")
    assert "schedules_next_fire_at" in scan, scan
    assert shared_buffers_touched(scan) <= 20, scan
    jobs = conn.execute("SELECT run_at FROM hopper.jobs").fetchall()
    assert jobs == [{"run_at": T0 + timedelta(hours=2)}]
    later = conn.execute(
        "SELECT count(*) AS n, min(next_fire_at) AS next, max(last_fired_at) AS last"
        " FROM hopper.schedules WHERE name LIKE 'later%'"
    ).fetchone()
    assert later == {"n": 2000, "next": T0 + timedelta(hours=3), "last": None}


def test_schedules_made_before_next_fire_at_existed_are_caught_up(empty_dsn):
    migrate(empty_dsn, up_to="0014_dependencies.sql", with_functions=False)
    with psycopg.connect(empty_dsn, autocommit=True) as old:
        old.execute(
            "INSERT INTO hopper._schedules (name, cron, task_identifier, created_at)"
            " VALUES ('due', '@hourly', 't', %s), ('later', '0 3 * * *', 't', %s)",
            [T0, T0],
        )
    migrate(empty_dsn)
    with psycopg.connect(empty_dsn, autocommit=True, row_factory=dict_row) as upgraded:
        assert next_fire_at(upgraded, "due") == T0  # a bound, until examined
        rows = call(upgraded, "enqueue_due_schedules", T0 + timedelta(hours=1, minutes=5))
        assert [(r["run_at"], r["payload"]["_cron"]["backfilled"]) for r in rows] == [
            (T0 + timedelta(hours=1), False)
        ]
        assert next_fire_at(upgraded, "due") == T0 + timedelta(hours=2)
        assert next_fire_at(upgraded, "later") == T0 + timedelta(hours=3)
