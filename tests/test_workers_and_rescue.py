"""register_worker / heartbeat / unregister_worker / rescue_stale_jobs and fencing races."""

from __future__ import annotations

import threading
import time
from datetime import timedelta
from functools import partial

import psycopg
import pytest
from races import at_once
from sqlcalls import add_job, call, call_one, claim, job


def age_heartbeat(conn, worker_id: str, seconds: float = 3600) -> None:
    conn.execute(
        "UPDATE hopper._workers SET last_heartbeat_at = now() - make_interval(secs => %s)"
        " WHERE id = %s",
        [seconds, worker_id],
    )


def test_stale_worker_is_retired_and_its_job_runs_again_at_once(conn):
    target = add_job(conn, "t", max_attempts=5)["id"]
    call(conn, "register_worker", "w1")
    claim(conn, "w1")
    age_heartbeat(conn, "w1")
    now = conn.execute("SELECT now() AS t").fetchone()["t"]
    rescued = call(conn, "rescue_stale_jobs", "30 seconds", now)
    assert [(r["id"], r["state"], r["last_error"]) for r in rescued] == [
        (target, "pending", "worker w1 lost")
    ]
    assert rescued[0]["run_at"] == now and rescued[0]["attempts"] == 1
    for function, args in [("heartbeat", []), ("register_worker", []), ("get_jobs", [])]:
        with pytest.raises(psycopg.errors.ObjectNotInPrerequisiteState, match="w1 was retired"):
            call(conn, function, "w1", *args)
    assert [j["id"] for j in claim(conn, "w2")] == [target]


def test_heartbeating_worker_keeps_its_jobs(conn):
    add_job(conn, "t")
    call(conn, "register_worker", "w1")
    claim(conn, "w1")
    assert call(conn, "rescue_stale_jobs", "30 seconds") == []
    assert call_one(conn, "heartbeat", "w1")["heartbeat"] == []


def test_late_worker_woken_after_rescue_changes_nothing(conn):
    target = add_job(conn, "t")["id"]
    call(conn, "register_worker", "sleepy")
    claim(conn, "sleepy")
    age_heartbeat(conn, "sleepy")
    call(conn, "rescue_stale_jobs")
    call(conn, "register_worker", "fresh")
    claim(conn, "fresh")
    assert call_one(conn, "complete_job", "sleepy", target, {"by": "sleepy"})["id"] is None
    assert call_one(conn, "fail_job", "sleepy", target, "late")["id"] is None
    assert call(conn, "release_jobs", "sleepy", [target]) == []
    current = job(conn, target)
    assert (current["state"], current["locked_by"]) == ("running", "fresh")
    assert call_one(conn, "complete_job", "fresh", target, {"by": "fresh"})["result"] == {
        "by": "fresh"
    }


def test_rescue_acting_on_a_stale_read_does_not_retire_a_worker_that_heartbeats(connect):
    setup, beating, rescuing = connect(), connect(), connect()
    target = add_job(setup, "t")["id"]
    call(setup, "register_worker", "w1")
    claim(setup, "w1")
    age_heartbeat(setup, "w1")
    result: list = []
    with beating.transaction():
        call(beating, "heartbeat", "w1")  # holds the worker row until commit
        rescuer = threading.Thread(
            target=lambda: result.append(call(rescuing, "rescue_stale_jobs", "1 second"))
        )
        rescuer.start()
        time.sleep(0.3)  # the rescue read the old heartbeat and waits for the row
        assert rescuer.is_alive()
    rescuer.join(timeout=10)
    assert result == [[]]
    assert job(setup, target)["locked_by"] == "w1"
    assert call_one(setup, "heartbeat", "w1")["heartbeat"] == []


def test_heartbeat_waiting_behind_a_rescue_is_refused(connect):
    setup, rescuing, beating = connect(), connect(), connect()
    target = add_job(setup, "t")["id"]
    call(setup, "register_worker", "w1")
    claim(setup, "w1")
    age_heartbeat(setup, "w1")
    errors: list = []

    def beat() -> None:
        try:
            call(beating, "heartbeat", "w1")
        except psycopg.Error as error:
            errors.append(error.sqlstate)

    with rescuing.transaction():
        call(rescuing, "rescue_stale_jobs", "1 second")
        beater = threading.Thread(target=beat)
        beater.start()
        time.sleep(0.3)
        assert beater.is_alive()
    beater.join(timeout=10)
    assert errors == ["55000"]
    assert job(setup, target)["state"] == "pending"


def test_concurrent_rescues_fail_each_job_once(conn, connect):
    ids = [add_job(conn, "t")["id"] for _ in range(20)]
    call(conn, "register_worker", "w1")
    claim(conn, "w1", batch_size=20)
    age_heartbeat(conn, "w1")
    rescuers = [connect() for _ in range(4)]
    counts = [
        len(rescued)
        for rescued in at_once(*(partial(call, r, "rescue_stale_jobs") for r in rescuers))
    ]
    assert sum(counts) == 20
    assert {job(conn, i)["attempts"] for i in ids} == {1}
    assert {len(job(conn, i)["errors"]) for i in ids} == {1}


def test_job_past_timeout_and_grace_is_rescued_even_if_worker_heartbeats(conn):
    call(conn, "set_setting", "timeout_grace", "5 seconds")
    target = add_job(conn, "t", timeout="10 seconds")["id"]
    call(conn, "register_worker", "w1")
    claimed_at = claim(conn, "w1")[0]["locked_at"]
    assert call(conn, "rescue_stale_jobs", "30 seconds", claimed_at + timedelta(seconds=14)) == []
    rescued = call(conn, "rescue_stale_jobs", "30 seconds", claimed_at + timedelta(seconds=16))
    assert [(r["id"], r["last_error"]) for r in rescued] == [(target, "timeout after 00:00:10")]
    assert call_one(conn, "heartbeat", "w1")["heartbeat"] == []  # not retired


def test_unregister_releases_jobs_and_retires_the_id(conn):
    target = add_job(conn, "t")["id"]
    call(conn, "register_worker", "w1")
    claim(conn, "w1")
    released = call(conn, "unregister_worker", "w1")
    assert [(r["id"], r["state"], r["attempts"]) for r in released] == [(target, "pending", 0)]
    with pytest.raises(psycopg.errors.ObjectNotInPrerequisiteState):
        call(conn, "get_jobs", "w1")


def test_unknown_worker_heartbeat_is_refused(conn):
    with pytest.raises(psycopg.errors.ObjectNotInPrerequisiteState, match="not registered"):
        call(conn, "heartbeat", "ghost")
