"""The Python producers: transactional add_job, add_jobs, quick_add_job, async twins."""

from __future__ import annotations

import asyncio
import dataclasses
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta

import psycopg
import pytest
import worker_tasks

import hopper
from hopper import aio


def test_job_added_in_rolled_back_transaction_never_exists(dsn):
    with psycopg.connect(dsn) as conn:
        with pytest.raises(RuntimeError), conn.transaction():
            hopper.add_job(conn, "send_email", {"user": 1})
            raise RuntimeError("the caller's work failed")
        with conn.transaction():
            committed = hopper.add_job(conn, "send_email", {"user": 2})
    ids = [j.id for j in _jobs(dsn)]
    assert ids == [committed.id]


def test_add_job_returns_a_full_record(dsn):
    with psycopg.connect(dsn, autocommit=True) as conn:
        job = hopper.add_job(
            conn, "resize", {"image": 7}, queue_name="images", priority=-2, max_attempts=3,
            job_key="img:7", tags=["media"], timeout="30s", backoff="linear", backoff_delay=5,
        )  # fmt: skip
    assert isinstance(job, hopper.Job)
    assert (job.task_identifier, job.payload, job.queue_name) == ("resize", {"image": 7}, "images")
    assert (job.priority, job.max_attempts, job.key, job.tags) == (-2, 3, "img:7", ["media"])
    assert job.timeout == timedelta(seconds=30)
    assert job.state is hopper.JobState.PENDING
    assert job.outcome is hopper.Outcome.INSERTED and not job.deduped


def test_deduped_add_reports_it(dsn):
    first = hopper.quick_add_job(dsn, "t", job_key="once", job_key_mode="dedupe")
    second = hopper.quick_add_job(dsn, "t", job_key="once", job_key_mode="dedupe")
    assert second.deduped and second.id == first.id


@pytest.mark.parametrize(
    ("delay", "seconds"),
    [(90, 90), (1.5, 1.5), (timedelta(minutes=2), 120), ("5s", 5), ("5m", 300),
     ("1h", 3600), ("2d", 172800), ("90", 90), ("1.5", 1.5)],
)  # fmt: skip
def test_delay_forms(dsn, delay, seconds):
    job = hopper.quick_add_job(dsn, "t", delay=delay)
    assert job.state is hopper.JobState.SCHEDULED or seconds < 0.01
    assert (job.run_at - job.created_at).total_seconds() == pytest.approx(seconds, abs=0.01)


@pytest.mark.parametrize("delay", ["5 minutes", "5y", "-5s", -1, True, "", [5]])
def test_bad_delay_is_rejected_before_any_sql(delay):
    with pytest.raises(ValueError, match="delay"):
        hopper.quick_add_job("postgresql://nobody@127.0.0.1:1/none", "t", delay=delay)


def test_unknown_option_is_rejected():
    with pytest.raises(TypeError, match="queue"):
        hopper.quick_add_job("postgresql://nobody@127.0.0.1:1/none", "t", queue="q")


def test_database_errors_surface_with_their_sqlstate(dsn):
    with pytest.raises(psycopg.errors.InvalidParameterValue, match="job_key_mode"):
        hopper.quick_add_job(dsn, "t", job_key_mode="sometimes")


def test_add_jobs_in_order_with_delay_and_batch_ref(dsn):
    specs = [
        hopper.JobSpec("a", {"n": 1}),
        hopper.JobSpec("b", [1, 2], job_key="batch", delay="1h"),
        hopper.JobSpec("c", queue_name="q", timeout=timedelta(seconds=10)),
    ]
    with psycopg.connect(dsn) as conn, conn.transaction():
        jobs = hopper.add_jobs(conn, specs)
    assert [j.task_identifier for j in jobs] == ["a", "b", "c"]
    assert [j.state for j in jobs] == ["pending", "scheduled", "pending"]
    assert jobs[2].timeout == timedelta(seconds=10)
    assert hopper.batch_ref(0) == -1 and hopper.batch_ref(3) == -4


def test_add_jobs_delay_counts_from_the_database_clock_as_add_job_does(dsn):
    """Both add the delay to the transaction's now(), never to the client's clock."""
    with psycopg.connect(dsn) as conn, conn.transaction():
        conn.execute("SELECT 1")  # the transaction, and its now(), begin here
        time.sleep(0.3)
        one = hopper.add_job(conn, "a", delay=60)
        many = hopper.add_jobs(
            conn,
            [hopper.JobSpec("b", delay="1m"), hopper.JobSpec("c"), hopper.JobSpec("d", delay=5)],
        )
    assert [j.state for j in many] == ["scheduled", "pending", "scheduled"]
    assert many[0].run_at == one.run_at == one.created_at + timedelta(seconds=60)
    assert many[2].run_at == one.created_at + timedelta(seconds=5)


def test_async_twins(dsn):
    async def produce() -> tuple[hopper.Job, list[hopper.Job], hopper.Job]:
        async with await psycopg.AsyncConnection.connect(dsn) as conn, conn.transaction():
            one = await aio.add_job(conn, "a", {"x": 1}, delay=60)
            many = await aio.add_jobs(conn, [hopper.JobSpec("b"), hopper.JobSpec("c")])
        quick = await aio.quick_add_job(dsn, "d")
        return one, many, quick

    one, many, quick = asyncio.run(produce())
    assert one.state is hopper.JobState.SCHEDULED
    assert [j.task_identifier for j in many] == ["b", "c"]
    assert [j.task_identifier for j in _jobs(dsn)] == ["a", "b", "c", "d"]
    assert quick.outcome is hopper.Outcome.INSERTED


def _jobs(dsn: str) -> list[hopper.Job]:
    with psycopg.connect(dsn) as conn, conn.cursor(row_factory=psycopg.rows.dict_row) as cursor:
        return [
            hopper.Job.from_row(r) for r in cursor.execute("SELECT * FROM hopper.jobs ORDER BY id")
        ]


def test_returned_jobs_are_the_stored_rows_whatever_the_callers_row_factory(dsn):
    with psycopg.connect(dsn, row_factory=psycopg.rows.dict_row) as conn:
        first = hopper.add_job(conn, "a", {"x": 1}, priority=3, tags=["t"], job_key="k")
        replaced = hopper.add_job(conn, "a", {"x": 2}, job_key="k")
        many = hopper.add_jobs(conn, [hopper.JobSpec("b"), hopper.JobSpec("c", {"y": 1})])
        conn.commit()
    stored = {job.id: job for job in _jobs(dsn)}
    assert first.outcome is hopper.Outcome.INSERTED
    assert replaced.outcome is hopper.Outcome.UPDATED and replaced.id == first.id
    assert dataclasses.replace(replaced, outcome=None) == stored[first.id]
    assert [job.outcome for job in many] == [hopper.Outcome.INSERTED] * 2
    assert [dataclasses.replace(job, outcome=None) for job in many] == [
        stored[job.id] for job in many
    ]


def test_the_async_twins_are_reached_from_a_bare_import_of_hopper(dsn):
    """hopper.aio needed its own import: after "import hopper" alone,
    hopper.aio.add_job raised AttributeError."""
    code = (
        "import asyncio, sys, psycopg, hopper\n"
        "async def main():\n"
        "    async with await psycopg.AsyncConnection.connect(sys.argv[1]) as conn:\n"
        "        print((await hopper.aio.add_job(conn, 'bare', {'n': 1})).payload)\n"
        "asyncio.run(main())\n"
    )
    added = subprocess.run(
        [sys.executable, "-c", code, dsn], capture_output=True, text=True, timeout=60
    )
    assert (added.returncode, added.stdout.strip()) == (0, "{'n': 1}"), added.stderr


def test_a_pydantic_model_is_stored_as_the_json_its_handler_validates(dsn):
    """A handler's payload is a model; the producer may hand over the same model.
    It raised TypeError (not JSON serialisable), in add_job and in JobSpec."""
    email = worker_tasks.EmailPayload(to="a@b.c", subject="hi")
    job = hopper.quick_add_job(dsn, "send_email", email)
    with psycopg.connect(dsn) as conn:
        [spec_job] = hopper.add_jobs(conn, [hopper.JobSpec("send_email", email)])
    assert job.payload == spec_job.payload == {"to": "a@b.c", "subject": "hi"}
    assert hopper.run_once(dsn, worker_tasks.tasks) == 2
    assert [(j.state, j.result) for j in _jobs(dsn)] == [("completed", {"sent_to": "a@b.c"})] * 2


@pytest.mark.parametrize("number", [float("nan"), float("inf"), float("-inf")])
def test_a_number_json_lacks_is_refused_naming_the_payload(dsn, number):
    """Python's json writes NaN and Infinity, which JSON lacks, and PostgreSQL
    refused the text with an error naming neither the function nor the argument."""
    with pytest.raises(ValueError, match=r"^payload cannot be stored as JSON"):
        hopper.quick_add_job(dsn, "t", {"ratio": number})
    with psycopg.connect(dsn) as conn:
        specs = [hopper.JobSpec("t"), hopper.JobSpec("t", {"ratio": number})]
        with pytest.raises(ValueError, match=r"^specs\[1\] cannot be stored as JSON"):
            hopper.add_jobs(conn, specs)
    with pytest.raises(TypeError, match=r"^payload cannot be stored as JSON: .*set"):
        hopper.quick_add_job(dsn, "t", {"ids": {1, 2}})
    assert _jobs(dsn) == []


def test_a_naive_run_at_is_refused_and_an_aware_one_kept_whatever_the_session_zone(dsn):
    """PostgreSQL reads a naive datetime in the session's TimeZone: under a server
    set to Asia/Tokyo a naive UTC time ran nine hours early."""
    naive = datetime(2030, 1, 1, 12, 0)
    options = "-c TimeZone=Asia/Tokyo"
    with psycopg.connect(dsn, autocommit=True, options=options) as conn:
        with pytest.raises(ValueError, match=r"^run_at must be a timezone-aware datetime"):
            hopper.add_job(conn, "t", run_at=naive)
        with pytest.raises(ValueError, match=r"^run_at must be a timezone-aware datetime"):
            hopper.add_jobs(conn, [hopper.JobSpec("t", run_at=naive)])
        assert _jobs(dsn) == []
        noon_utc = naive.replace(tzinfo=UTC)
        one = hopper.add_job(conn, "t", run_at=noon_utc)
        [many] = hopper.add_jobs(conn, [hopper.JobSpec("t", run_at=noon_utc)])
    assert one.run_at == many.run_at == noon_utc


def test_the_wrong_kind_of_connection_is_named(dsn):
    """A DSN given to add_job raised "'str' object has no attribute 'cursor'", and a
    sync Connection given to an async twin "'Cursor' object does not support the
    asynchronous context manager protocol"."""
    with pytest.raises(TypeError, match=r"^hopper.add_job takes a psycopg Connection, not a DSN"):
        hopper.add_job(dsn, "t")
    with pytest.raises(TypeError, match=r"^hopper.add_jobs takes a psycopg Connection \(got str"):
        hopper.add_jobs(dsn, [hopper.JobSpec("t")])
    with pytest.raises(TypeError, match=r"^hopper.job_status takes a psycopg Connection"):
        hopper.job_status(dsn, 1)

    async def mixed() -> list[str]:
        messages = []
        with psycopg.connect(dsn) as sync_conn:
            for call in (aio.add_job(sync_conn, "t"), aio.cancel_jobs(sync_conn, [1])):
                with pytest.raises(TypeError) as refused:
                    await call
                messages.append(str(refused.value))
        async with await psycopg.AsyncConnection.connect(dsn) as async_conn:
            with pytest.raises(TypeError) as refused:
                hopper.quick_add_job(async_conn, "t")
            messages.append(str(refused.value))
        return messages

    assert asyncio.run(mixed()) == [
        "hopper.aio.add_job takes a psycopg AsyncConnection, not a Connection: use hopper.add_job",
        "hopper.aio.cancel_jobs takes a psycopg AsyncConnection, not a Connection:"
        " use hopper.cancel_jobs",
        "hopper.quick_add_job takes a psycopg Connection, not an AsyncConnection:"
        " use hopper.aio.quick_add_job",
    ]
    assert _jobs(dsn) == []
