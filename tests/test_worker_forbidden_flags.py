"""A worker's forbidden_flags (graphile-worker's forbiddenFlags): it claims no job
whose flags hold one of them, from a fixed list or from a callable asked before
each claim."""

from __future__ import annotations

import asyncio
import logging

import pytest
import worker_tasks
from sqlcalls import add_job, job
from test_cli import hopper as hopper_cli
from workerprocs import wait_until, worker_in_thread

import hopper


def states(conn, ids: list[int]) -> list[str]:
    return [job(conn, i)["state"] for i in ids]


def test_a_fixed_list_leaves_flagged_jobs_to_other_workers(dsn, conn):
    plain = add_job(conn, "add", {"a": 1, "b": 2})["id"]
    flagged = add_job(conn, "add", {"a": 3, "b": 4}, flags=["slow-api"])["id"]
    other = add_job(conn, "add", {"a": 5, "b": 6}, flags=["other"])["id"]
    assert hopper.run_once(dsn, worker_tasks.tasks, forbidden_flags=["slow-api", "x"]) == 2
    assert states(conn, [plain, flagged, other]) == ["completed", "pending", "completed"]
    assert hopper.run_once(dsn, worker_tasks.tasks) == 1
    assert job(conn, flagged)["result"] == 7


def test_the_callable_is_asked_before_each_claim(dsn, conn):
    forbidden = {"now": ["slow-api"]}
    asked = []

    def answer() -> list[str]:
        asked.append(list(forbidden["now"]))
        return forbidden["now"]

    worker = hopper.Worker(dsn, worker_tasks.tasks, forbidden_flags=answer, poll_interval=0.2)
    with worker_in_thread(worker):
        flagged = add_job(conn, "add", {"a": 1, "b": 1}, flags=["slow-api"])["id"]
        plain = add_job(conn, "add", {"a": 2, "b": 2})["id"]
        wait_until(lambda: job(conn, plain)["state"] == "completed", 10, "the plain job")
        wait_until(lambda: len(asked) >= 3, 10, "claims")
        assert job(conn, flagged)["state"] == "pending"
        forbidden["now"] = []
        wait_until(lambda: job(conn, flagged)["state"] == "completed", 10, "the flagged job")
    assert ["slow-api"] in asked and [] in asked


def test_an_async_callable_is_awaited(dsn, conn):
    async def answer() -> list[str]:
        await asyncio.sleep(0)
        return ["slow-api"]

    flagged = add_job(conn, "add", {"a": 1, "b": 1}, flags=["slow-api"])["id"]
    plain = add_job(conn, "add", {"a": 2, "b": 2})["id"]
    assert hopper.run_once(dsn, worker_tasks.tasks, forbidden_flags=answer) == 1
    assert states(conn, [flagged, plain]) == ["pending", "completed"]


def test_a_failing_callable_stops_claims_until_it_answers(dsn, conn, caplog):
    caplog.set_level(logging.WARNING, logger="hopper")
    answers = iter([RuntimeError("flag service down"), "slow-api", [""]])

    def answer() -> list[str]:
        next_answer = next(answers, [])
        if isinstance(next_answer, Exception):
            raise next_answer
        return next_answer

    added = add_job(conn, "add", {"a": 1, "b": 1})["id"]
    worker = hopper.Worker(dsn, worker_tasks.tasks, forbidden_flags=answer, poll_interval=0.2)
    with worker_in_thread(worker):
        wait_until(lambda: job(conn, added)["state"] == "completed", 10, "a claim")
    failures = [r.getMessage() for r in caplog.records if "forbidden_flags() failed" in r.message]
    assert len(failures) == 3, failures
    assert "flag service down" in failures[0]
    assert "must be a list of flags (got 'slow-api')" in failures[1]
    assert "must hold non-blank strings (got [''])" in failures[2]
    assert job(conn, added)["attempts"] == 1  # nothing was claimed before


def test_run_once_raises_what_the_callable_raises(dsn, conn):
    added = add_job(conn, "add", {"a": 1, "b": 1})["id"]

    def answer() -> list[str]:
        raise RuntimeError("flag service down")

    with pytest.raises(RuntimeError, match="flag service down"):
        hopper.run_once(dsn, worker_tasks.tasks, forbidden_flags=answer)
    assert states(conn, [added]) == ["pending"]


@pytest.mark.parametrize(
    ("flags", "error", "message"),
    [("slow-api", TypeError, "must be a list of flags"),
     (["ok", " "], ValueError, "must hold non-blank strings"),
     ([None], ValueError, "must hold non-blank strings")],
)  # fmt: skip
def test_a_bad_fixed_list_is_refused_at_once(dsn, flags, error, message):
    with pytest.raises(error, match=message):
        hopper.Worker(dsn, worker_tasks.tasks, forbidden_flags=flags)


def test_the_cli_option(dsn, conn):
    flagged = add_job(conn, "add", {"a": 1, "b": 1}, flags=["slow-api"])["id"]
    plain = add_job(conn, "add", {"a": 2, "b": 2})["id"]
    ran = hopper_cli(
        "worker", "--tasks", "worker_tasks:tasks", "--once", "--forbidden-flag", "slow-api",
        dsn=dsn,
    )  # fmt: skip
    assert ran.returncode == 0, ran.stderr
    assert "ran 1 jobs" in ran.stdout
    assert states(conn, [flagged, plain]) == ["pending", "completed"]
