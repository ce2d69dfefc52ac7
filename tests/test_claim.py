"""get_jobs / get_job: order, filters, SKIP LOCKED, lock expiry, named queues."""

from __future__ import annotations

import threading
from datetime import timedelta
from functools import partial

import psycopg
import pytest
from psycopg.types.json import Jsonb
from races import at_once
from sqlcalls import add_job, call, call_one, claim, job


def db_now(conn):
    return conn.execute("SELECT now() AS t").fetchone()["t"]


def test_claim_order_is_priority_then_run_at_then_id(conn):
    now = db_now(conn)
    ids = {}
    ids["late_low"] = add_job(conn, "t", priority=0, run_at=now - timedelta(minutes=1))["id"]
    ids["early_low"] = add_job(conn, "t", priority=0, run_at=now - timedelta(minutes=5))["id"]
    ids["tie_a"] = add_job(conn, "t", priority=0, run_at=now - timedelta(minutes=3))["id"]
    ids["tie_b"] = add_job(conn, "t", priority=0, run_at=now - timedelta(minutes=3))["id"]
    ids["urgent"] = add_job(conn, "t", priority=-5)["id"]
    ids["lazy"] = add_job(conn, "t", priority=10, run_at=now - timedelta(hours=1))["id"]
    claimed = claim(conn, batch_size=10)
    assert [j["id"] for j in claimed] == [
        ids[name] for name in ("urgent", "early_low", "tie_a", "tie_b", "late_low", "lazy")
    ]
    assert all(j["state"] == "running" and j["locked_by"] == "w1" for j in claimed)
    assert all(j["attempts"] == 1 and j["started_at"] is not None for j in claimed)


def test_get_job_returns_one_job_or_null(conn):
    assert call_one(conn, "get_job", "w1")["id"] is None
    added = add_job(conn, "t")
    got = call_one(conn, "get_job", "w1")
    assert (got["id"], got["state"]) == (added["id"], "running")


def test_future_job_is_claimed_only_once_due(conn):
    added = add_job(conn, "t", run_at=db_now(conn) + timedelta(hours=1))
    assert claim(conn) == []
    later = db_now(conn) + timedelta(hours=2)
    assert [j["id"] for j in claim(conn, now=later)] == [added["id"]]


def test_task_filter_and_forbidden_flags(conn):
    a = add_job(conn, "a")["id"]
    b = add_job(conn, "b", flags=["slow"])["id"]
    c = add_job(conn, "b")["id"]
    assert [j["id"] for j in claim(conn, task_identifiers=["b"], forbidden_flags=["slow"])] == [c]
    assert [j["id"] for j in claim(conn, forbidden_flags=["slow", "x"], batch_size=5)] == [a]
    assert [j["id"] for j in claim(conn, batch_size=5)] == [b]


@pytest.mark.parametrize(
    "tasks", [None, ["t0", "t1", "t2", "t3"]], ids=["any task", "several tasks"]
)
def test_concurrent_claimers_never_get_the_same_job(dsn, conn, tasks):
    specs = [{"identifier": f"t{i % 4}", "priority": i % 3} for i in range(400)]
    call(conn, "add_jobs", Jsonb(specs))
    claimed: list[int] = []
    lock = threading.Lock()

    def worker(name: str) -> None:
        with psycopg.connect(dsn, autocommit=True) as own:
            while True:
                rows = own.execute(
                    "SELECT id FROM hopper.get_jobs(%s, %s, batch_size => 7)", [name, tasks]
                ).fetchall()
                if not rows:
                    return
                with lock:
                    claimed.extend(r[0] for r in rows)

    threads = [threading.Thread(target=worker, args=(f"w{i}",)) for i in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(claimed) == 400
    assert len(set(claimed)) == 400


def test_job_locked_in_an_open_transaction_is_skipped(connect, conn):
    first = add_job(conn, "t")["id"]
    second = add_job(conn, "t")["id"]
    holder = connect()
    with holder.transaction():
        held = holder.execute("SELECT id FROM hopper.get_jobs('holder')").fetchall()
        assert [r["id"] for r in held] == [first]
        assert [j["id"] for j in claim(conn, "other", batch_size=5)] == [second]


def test_expired_lock_of_unregistered_worker_is_claimable_again(conn):
    added = add_job(conn, "t", max_attempts=3)
    claim(conn, "crashed")
    assert claim(conn, "w2") == []
    later = db_now(conn) + timedelta(hours=5)
    reclaimed = claim(conn, "w2", now=later)
    assert [j["id"] for j in reclaimed] == [added["id"]]
    assert reclaimed[0]["attempts"] == 2
    assert reclaimed[0]["locked_by"] == "w2"
    assert "lock of worker crashed expired after 04:00:00" in reclaimed[0]["last_error"]
    assert call_one(conn, "complete_job", "crashed", added["id"])["id"] is None
    assert job(conn, added["id"])["state"] == "running"


def test_expired_lock_with_no_attempts_left_fails_the_job(conn):
    added = add_job(conn, "t", max_attempts=1)
    claim(conn, "crashed")
    assert claim(conn, "w2", now=db_now(conn) + timedelta(hours=5)) == []
    assert job(conn, added["id"])["state"] == "failed"


def test_registered_workers_locks_do_not_expire(conn):
    add_job(conn, "t")
    conn.execute("INSERT INTO hopper._workers (id) VALUES ('alive')")
    claim(conn, "alive")
    assert claim(conn, "w2", now=db_now(conn) + timedelta(days=2)) == []


# --- named queues ---------------------------------------------------------------


def test_named_queue_runs_one_job_at_a_time_even_in_batches(conn):
    q = [add_job(conn, "t", queue_name="q")["id"] for _ in range(3)]
    free = add_job(conn, "t")["id"]
    first = claim(conn, "w1", batch_size=10)
    assert [j["id"] for j in first] == [q[0], free]
    assert claim(conn, "w2", batch_size=10) == []
    call(conn, "complete_job", "w1", q[0])
    assert [j["id"] for j in claim(conn, "w2", batch_size=10)] == [q[1]]


def test_failed_job_waiting_for_backoff_frees_its_queue(conn):
    first = add_job(conn, "t", queue_name="q")["id"]
    second = add_job(conn, "t", queue_name="q")["id"]
    claim(conn)
    call(conn, "fail_job", "w1", first, "boom")
    assert [j["id"] for j in claim(conn, "w2")] == [second]


def test_queue_concurrency_and_pause(conn):
    ids = [add_job(conn, "t", queue_name="q")["id"] for _ in range(5)]
    queue = call_one(conn, "set_queue", "q", 3)
    assert (queue["concurrency"], queue["paused"], queue["running"]) == (3, False, 0)
    assert [j["id"] for j in claim(conn, batch_size=10)] == ids[:3]
    call_one(conn, "set_queue", "q", paused=True)
    call(conn, "complete_claimed_jobs", "w1", ids[:3])
    assert claim(conn, batch_size=10) == []
    queue = call_one(conn, "set_queue", "q", paused=False)
    assert (queue["concurrency"], queue["running"]) == (3, 0)
    assert [j["id"] for j in claim(conn, batch_size=10)] == ids[3:]


def test_concurrent_claimers_respect_queue_concurrency(dsn, conn):
    call(
        conn, "add_jobs", Jsonb([{"identifier": "t", "queue_name": f"q{i % 3}"} for i in range(90)])
    )
    call(conn, "set_queue", "q2", 2)
    limits = {"q0": 1, "q1": 1, "q2": 2}
    violations: list[str] = []
    done: list[int] = []
    lock = threading.Lock()
    running: dict[str, int] = dict.fromkeys(limits, 0)

    def worker(name: str) -> None:
        with psycopg.connect(dsn, autocommit=True) as own:
            idle = 0
            while idle < 50:
                rows = own.execute(
                    "SELECT id, queue_name FROM hopper.get_jobs(%s, batch_size => 4)", [name]
                ).fetchall()
                if not rows:
                    idle += 1
                    continue
                with lock:
                    for _, queue in rows:
                        running[queue] += 1
                        if running[queue] > limits[queue]:
                            violations.append(queue)
                    for _, queue in rows:
                        running[queue] -= 1
                    done.extend(job_id for job_id, _ in rows)
                own.execute(
                    "SELECT hopper.complete_claimed_jobs(%s, %s)", [name, [r[0] for r in rows]]
                )

    threads = [threading.Thread(target=worker, args=(f"w{i}",)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert violations == []
    assert sorted(done) == sorted(set(done)) and len(done) == 90
    running_counts = conn.execute("SELECT name, running FROM hopper._queues ORDER BY name")
    assert [(r["name"], r["running"]) for r in running_counts] == [("q0", 0), ("q1", 0), ("q2", 0)]


def test_queue_slots_are_never_exceeded_while_held(conn, connect):
    """Each claimer holds its claimed job (running) while others try: at most
    concurrency jobs of the queue are ever running together."""
    call(conn, "add_jobs", Jsonb([{"identifier": "t", "queue_name": "q"}] * 20))
    call(conn, "set_queue", "q", 2)
    claimers = [connect() for _ in range(8)]
    results = at_once(*(partial(claim, c, f"c{i}", batch_size=3) for i, c in enumerate(claimers)))
    assert sum(len(claimed) for claimed in results) == 2
    assert (
        conn.execute("SELECT count(*) AS n FROM hopper.jobs WHERE state = 'running'").fetchone()[
            "n"
        ]
        == 2
    )


def test_a_freed_queue_slot_notifies_a_waiting_worker(conn, connect):
    call(conn, "set_queue", "serial", 1)
    first = add_job(conn, "t", queue_name="serial")["id"]
    add_job(conn, "t", queue_name="serial")
    assert [j["id"] for j in claim(conn, "w1", batch_size=2)] == [first]
    conn.execute("SELECT hopper.register_worker('idle')")
    assert claim(conn, "idle") == []  # the queue is full: 'idle' now waits
    listener = connect()
    listener.execute("LISTEN hopper_jobs")
    call(conn, "complete_job", "w1", first)
    assert len(list(listener.notifies(timeout=0.3))) == 1
    assert len(claim(conn, "idle")) == 1


@pytest.mark.parametrize("tasks", [["a", "b", "c", "d"], None], ids=["task list", "any task"])
def test_a_claim_over_several_tasks_takes_the_batch_in_claim_order(conn, tasks):
    ids = {}
    for n, (task, priority) in enumerate([("a", 5), ("b", 1), ("c", 3), ("a", 1), ("b", 9)]):
        ids[n] = add_job(conn, task, priority=priority)["id"]
    claimed = claim(conn, "w1", task_identifiers=tasks, batch_size=3)
    assert [j["id"] for j in claimed] == [ids[1], ids[3], ids[2]]
    assert [j["id"] for j in claim(conn, "w2", batch_size=5)] == [ids[0], ids[4]]


def test_a_claim_of_any_task_finds_every_task_with_pending_jobs(conn):
    # tasks with nothing pending (running, finished, scheduled) sit between them
    now = db_now(conn)
    expected = []
    for n in range(40):
        task = f"task-{n:02d}"
        if n % 4 == 0:
            add_job(conn, task, run_at=now + timedelta(hours=1))
            continue
        expected.append(add_job(conn, task, priority=-n)["id"])
        if n % 4 == 1:
            claim(conn, "other", task_identifiers=[task], batch_size=5)
            expected.pop()
    claimed = claim(conn, "w1", batch_size=100)
    assert [j["id"] for j in claimed] == expected[::-1]
    left = conn.execute("SELECT count(*) AS n FROM hopper._jobs WHERE state = 'pending'")
    assert left.fetchone()["n"] == 0


# two names whose keys in jobs_pending_by_task (hashtext) are the same
COLLIDING = ("task-907", "task-364899")


@pytest.mark.parametrize("claimed_tasks", [[COLLIDING[1]], [COLLIDING[1], "other"]])
def test_a_claim_of_named_tasks_skips_jobs_of_a_task_whose_key_collides(conn, claimed_tasks):
    first, second = COLLIDING
    keys = conn.execute("SELECT hashtext(%s) AS a, hashtext(%s) AS b", COLLIDING).fetchone()
    assert keys["a"] == keys["b"]
    ahead = [add_job(conn, first, priority=-1)["id"] for _ in range(3)]
    wanted = [add_job(conn, second)["id"] for _ in range(2)]
    add_job(conn, "other", priority=5)
    claimed = claim(conn, "w1", task_identifiers=claimed_tasks, batch_size=2)
    assert [j["id"] for j in claimed] == wanted
    assert {j["task_identifier"] for j in claimed} == {second}
    assert [j["id"] for j in claim(conn, "w2", task_identifiers=[first], batch_size=5)] == ahead


@pytest.mark.parametrize("tasks", [list(COLLIDING), None], ids=["both named", "any task"])
def test_tasks_whose_keys_collide_are_claimed_together_in_claim_order(conn, tasks):
    ids = [add_job(conn, COLLIDING[n % 2], priority=-n)["id"] for n in range(4)]
    claimed = claim(conn, "w1", task_identifiers=tasks, batch_size=3)
    assert [j["id"] for j in claimed] == ids[::-1][:3]
    assert [j["id"] for j in claim(conn, "w2", task_identifiers=tasks)] == [ids[0]]


def test_concurrent_claimers_of_tasks_whose_keys_collide_take_each_job_once(dsn, conn):
    first, second = COLLIDING
    tasks = [first, second, "t0"]
    specs = [{"identifier": tasks[i % 3], "priority": i % 2} for i in range(300)]
    call(conn, "add_jobs", Jsonb(specs))
    claimed: dict[int, str] = {}
    wrong: list[tuple[str, int, str]] = []
    lock = threading.Lock()

    def worker(name: str, wanted: list[str]) -> None:
        with psycopg.connect(dsn, autocommit=True) as own:
            while rows := own.execute(
                "SELECT id, task_identifier FROM hopper.get_jobs(%s, %s, batch_size => 5)",
                [name, wanted],
            ).fetchall():
                with lock:
                    for job_id, task in rows:
                        if task not in wanted or job_id in claimed:
                            wrong.append((name, job_id, task))
                        claimed[job_id] = task

    threads = [
        threading.Thread(target=worker, args=(f"w{i}", [first] if i % 2 else [second, "t0"]))
        for i in range(6)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert wrong == []
    assert sorted(claimed.values()) == sorted(spec["identifier"] for spec in specs)


def test_a_task_ahead_of_the_others_takes_more_than_its_fair_share(conn):
    # a first read of twice a fair share (4 jobs a task) has all of lead's
    # jobs in the batch: lead is read again, to the batch size
    ids = [add_job(conn, "lead", priority=0)["id"] for _ in range(10)]
    for task in "abcde":
        for _ in range(3):
            add_job(conn, task, priority=1)
    others = conn.execute(
        "SELECT id FROM hopper._jobs WHERE task_identifier <> 'lead' ORDER BY run_at, id LIMIT 2"
    ).fetchall()
    claimed = claim(conn, "w1", task_identifiers=["a", "b", "c", "d", "e", "lead"], batch_size=12)
    assert [j["id"] for j in claimed] == ids + [r["id"] for r in others]


def test_a_claim_over_several_tasks_locks_only_the_jobs_it_takes(conn, connect):
    for n in range(25):
        add_job(conn, f"task-{n % 5}")
    claimer = connect()
    with claimer.transaction():
        assert len(claim(claimer, "w1", task_identifiers=[f"task-{n}" for n in range(5)],
                         batch_size=4)) == 4  # fmt: skip
        unlocked = conn.execute(
            "SELECT count(*) AS n FROM (SELECT FROM hopper._jobs"
            " WHERE state = 'pending' FOR UPDATE SKIP LOCKED) AS free"
        ).fetchone()
        assert unlocked["n"] == 21


@pytest.mark.parametrize("batch_size", [1, 2])
def test_jobs_another_claimer_holds_leave_room_for_other_tasks(conn, connect, batch_size):
    first = add_job(conn, "a", priority=0)["id"]
    add_job(conn, "a", priority=0)
    later = [add_job(conn, "b", priority=5)["id"] for _ in range(2)]
    other = connect()
    with other.transaction():
        held = claim(other, "w2", task_identifiers=["a"], batch_size=2)
        assert {j["id"] for j in held} >= {first}
        claimed = claim(conn, "w1", task_identifiers=["a", "b"], batch_size=batch_size)
        assert [j["id"] for j in claimed] == later[:batch_size]
