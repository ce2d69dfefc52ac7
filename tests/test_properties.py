"""Property test: add_job either stores exactly what it was given or raises a documented
SQLSTATE and changes nothing."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

import psycopg
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from psycopg.types.json import Json

# PostgreSQL text holds neither NUL nor lone surrogates
TEXT = st.text(st.characters(exclude_characters="\x00", exclude_categories=("Cs",)), max_size=140)
JSON_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**60), 2**60)
    | st.floats(allow_nan=False, allow_infinity=False)
    | TEXT,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(TEXT, children, max_size=4),
    max_leaves=12,
)
PAYLOADS = (
    st.none() | st.dictionaries(TEXT, JSON_VALUES, max_size=5) | st.lists(JSON_VALUES) | JSON_VALUES
)
DOCUMENTED = {"22023", "22004", "54000"}


def by_value(value: object) -> object:
    """jsonb keeps numbers as numeric: 2.5e16 comes back as 25000000000000000.
    Strings, keys and structure must come back exactly."""
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return value
    if isinstance(value, int | float):
        return Decimal(repr(value)).normalize()
    if isinstance(value, list):
        return [by_value(v) for v in value]
    assert isinstance(value, dict)
    return {k: by_value(v) for k, v in value.items()}


@settings(
    max_examples=200,
    deadline=None,
    derandomize=True,  # the same examples on every run, so CI is repeatable
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    identifier=st.none() | TEXT,
    payload=PAYLOADS,
    queue_name=st.none() | TEXT,
    job_key=st.none() | st.text(max_size=3).map(lambda k: k.replace("\x00", "")),
    priority=st.none() | st.integers(-40000, 40000),
    max_attempts=st.none() | st.integers(-3, 40000),
    tags=st.none() | st.lists(st.none() | TEXT, max_size=3),
)
def test_add_job_stores_exactly_what_it_got_or_changes_nothing(
    conn, identifier, payload, queue_name, job_key, priority, max_attempts, tags
):
    before = conn.execute("SELECT count(*) AS n, max(revision) AS r FROM hopper._jobs").fetchone()
    try:
        row = conn.execute(
            "SELECT * FROM hopper.add_job(%s, %s, queue_name => %s, job_key => %s,"
            " priority => %s, max_attempts => %s, tags => %s, job_key_mode => 'dedupe')",
            [identifier, Json(payload) if payload is not None else None, queue_name, job_key,
             priority, max_attempts, tags],
        ).fetchone()  # fmt: skip
    except psycopg.Error as error:
        assert error.sqlstate in DOCUMENTED, (error.sqlstate, error)
        after = conn.execute(
            "SELECT count(*) AS n, max(revision) AS r FROM hopper._jobs"
        ).fetchone()
        assert after == before
        return
    if row["outcome"] == "inserted":  # a deduped call returns the job that held the key
        assert row["task_identifier"] == identifier
        assert by_value(row["payload"]) == by_value({} if payload is None else payload)
        assert row["queue_name"] == queue_name
        assert row["priority"] == (priority or 0)
        assert row["max_attempts"] == (max_attempts or 25)
        assert row["tags"] == tags
    stored = conn.execute("SELECT payload FROM hopper.jobs WHERE id = %s", [row["id"]]).fetchone()
    assert stored["payload"] == row["payload"]


@settings(
    max_examples=60,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    lead=st.lists(st.tuples(st.integers(0, 3), st.integers(0, 3)), max_size=25),
    others=st.lists(
        st.tuples(st.integers(1, 5), st.integers(0, 3), st.integers(0, 3)), max_size=30
    ),
    tasks=st.none() | st.lists(st.integers(0, 6), min_size=1, max_size=5),
    batch_sizes=st.lists(st.integers(1, 20), min_size=1, max_size=6),
)
def test_every_claim_takes_the_first_jobs_of_its_tasks_in_claim_order(
    conn, lead, others, tasks, batch_sizes
):
    # jobs as (task, priority, minutes ago), tasks by number: task 0 has many
    # jobs that come early (a claim must give it more than a fair share of the
    # batch), task 6 none
    conn.execute("TRUNCATE hopper._jobs")
    jobs = [(0, priority - 2, minutes) for priority, minutes in lead] + others
    for task, priority, minutes_ago in jobs:
        conn.execute(
            "SELECT hopper.add_job(%s, priority => %s, run_at => now() - %s * interval '1 minute')",
            [f"t{task}", priority, minutes_ago],
        )
    names = None if tasks is None else [f"t{t}" for t in tasks]
    for batch_size in batch_sizes:
        expected = [
            r["id"]
            for r in conn.execute(
                "SELECT id FROM hopper._jobs WHERE state = 'pending'"
                " AND (%s::text[] IS NULL OR task_identifier = any(%s::text[]))"
                " ORDER BY priority, run_at, id LIMIT %s",
                [names, names, batch_size],
            )
        ]
        claimed = conn.execute(
            "SELECT id FROM hopper.get_jobs('w', %s, %s)", [names, batch_size]
        ).fetchall()
        assert [r["id"] for r in claimed] == expected


CRON_FIELDS = (
    st.sampled_from(["*", "*/15", "0", "30", "5,45", "59"]),
    st.sampled_from(["*", "2", "3", "*/6", "9-17", "23"]),
    st.sampled_from(["*", "1", "15", "29", "31", "1,15"]),
    st.sampled_from(["*", "2", "*/3", "jan,jul", "12"]),
    st.sampled_from(["*", "1", "0", "mon-fri", "sat"]),
)


@settings(
    max_examples=60,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    fields=st.tuples(*CRON_FIELDS),
    timezone=st.sampled_from(["UTC", "Europe/Paris", "America/New_York", "Australia/Lord_Howe"]),
    after=st.datetimes(datetime(2026, 1, 1), datetime(2029, 12, 31), timezones=st.just(UTC)),
)
def test_next_fire_at_is_the_first_firing_enqueue_finds(conn, fields, timezone, after):
    """A schedule's next_fire_at, worked out forward by the trigger, is the firing
    that enqueue_due_schedules (which walks back from its now) enqueues first: none
    before it, exactly it at it."""
    cron = " ".join(fields)
    conn.execute("DELETE FROM hopper._schedules")
    conn.execute("DELETE FROM hopper._jobs")
    conn.execute("SELECT hopper.add_schedule('s', %s, 't', timezone => %s)", [cron, timezone])
    conn.execute("UPDATE hopper._schedules SET created_at = %s", [after])
    (first,) = conn.execute("SELECT next_fire_at FROM hopper._schedules").fetchone().values()
    earlier = conn.execute(
        "SELECT hopper._cron_latest(hopper._cron_parse('t', %s), %s, %s, %s) AS at",
        [cron, timezone, after, (first or after + timedelta(days=400)) - timedelta(seconds=1)],
    ).fetchone()["at"]
    assert earlier is None, (cron, timezone, after, first, earlier)
    if first is None:  # never fires: nothing in the 400 days looked at either
        return
    assert first > after
    jobs = conn.execute("SELECT run_at FROM hopper.enqueue_due_schedules(%s)", [first]).fetchall()
    assert jobs == [{"run_at": first}], (cron, timezone, after)
    (following,) = conn.execute("SELECT next_fire_at FROM hopper._schedules").fetchone().values()
    assert following is None or following > first
