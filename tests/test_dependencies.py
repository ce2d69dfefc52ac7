"""Dependencies (SPEC.md 3.4): depends_on, batch references, tag barriers,
cancellation of dependents, and the races between adding a dependent and
ending its prerequisites."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta
from functools import partial

import psycopg
import pytest
import worker_tasks
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb
from races import at_once, run_producers_and_workers
from sqlcalls import add_job, call, call_one, claim, job
from workerprocs import wait_until, wait_until_blocked, waits_for_lock

import hopper


def state(conn, job_id: int) -> str:
    return job(conn, job_id)["state"]


def run(conn, job_id: int, worker: str = "w1") -> None:
    """Claims job_id (the only runnable one) and completes it."""
    assert [j["id"] for j in claim(conn, worker)] == [job_id]
    assert call_one(conn, "complete_job", worker, job_id)["state"] == "completed"


def add_batch(conn, *specs: dict) -> list[dict]:
    return call(conn, "add_jobs", Jsonb(list(specs)))


def test_dependent_waits_until_its_prerequisite_completes(conn):
    first = add_job(conn, "a")["id"]
    second = add_job(conn, "b", depends_on=[first])
    assert (second["state"], second["depends_on"]) == ("waiting", [first])
    assert state(conn, second["id"]) == "waiting"
    run(conn, first)
    assert state(conn, second["id"]) == "pending"
    run(conn, second["id"])


def test_dependent_of_several_waits_for_every_one(conn):
    a, b = add_job(conn, "a")["id"], add_job(conn, "b")["id"]
    both = add_job(conn, "c", depends_on=[a, b])["id"]
    claimed = [j["id"] for j in claim(conn, "w1", batch_size=5)]
    assert claimed == [a, b]
    call(conn, "complete_job", "w1", b)
    assert state(conn, both) == "waiting"
    call(conn, "complete_job", "w1", a)
    assert state(conn, both) == "pending"


def test_completed_prerequisite_is_already_satisfied(conn):
    done = add_job(conn, "a")["id"]
    run(conn, done)
    assert add_job(conn, "b", depends_on=[done])["state"] == "pending"


def test_released_future_job_is_scheduled_and_release_notifies(conn, connect):
    conn.execute("SELECT hopper.set_setting('notify', 'always')")
    listener = connect()
    listener.execute("LISTEN hopper_jobs")
    first = add_job(conn, "a")["id"]
    later = add_job(conn, "b", depends_on=[first], run_at="2100-01-01T00:00:00Z")["id"]
    now = add_job(conn, "c", depends_on=[first])["id"]
    list(listener.notifies(timeout=0.2))
    run(conn, first)
    assert len(list(listener.notifies(timeout=0.3))) >= 1
    assert (state(conn, later), state(conn, now)) == ("scheduled", "pending")


def test_batch_references_name_specs_of_the_same_call(conn):
    rows = add_batch(
        conn,
        {"identifier": "fetch"},
        {"identifier": "parse", "depends_on": [-1]},
        {"identifier": "report", "depends_on": [-2, -4]},
        {"identifier": "setup"},
    )
    fetch, parse, report, setup = (r["id"] for r in rows)
    assert [r["depends_on"] for r in rows] == [None, [fetch], [parse, setup], None]
    assert [r["state"] for r in rows] == ["pending", "waiting", "waiting", "pending"]
    claimed = [j["id"] for j in claim(conn, "w1", batch_size=10)]
    assert claimed == [fetch, setup]
    call(conn, "complete_claimed_job_ids", "w1", claimed)
    assert (state(conn, parse), state(conn, report)) == ("pending", "waiting")
    run(conn, parse)
    assert state(conn, report) == "pending"


def test_python_batch_ref_and_run_once_run_a_chain_in_order(dsn, conn):
    specs = [
        hopper.JobSpec("echo", {"step": 1}),
        hopper.JobSpec("echo", {"step": 2}, depends_on=[hopper.batch_ref(0)]),
        hopper.JobSpec("echo", {"step": 3}, depends_on=[hopper.batch_ref(1)]),
    ]
    with psycopg.connect(dsn) as producer, producer.transaction():
        added = hopper.add_jobs(producer, specs)
    assert [j.state for j in added] == [
        hopper.JobState.PENDING,
        hopper.JobState.WAITING,
        hopper.JobState.WAITING,
    ]
    assert added[2].depends_on == [added[1].id]
    # one call: it claims again after reporting, and finds what was released
    assert hopper.run_once(dsn, worker_tasks.tasks) == 3
    ran = [job(conn, j.id) for j in added]
    assert [r["state"] for r in ran] == ["completed"] * 3
    assert ran[0]["finished_at"] <= ran[1]["started_at"]
    assert ran[1]["finished_at"] <= ran[2]["started_at"]


@pytest.mark.parametrize(
    ("specs", "index"),
    [
        ([{"depends_on": [-1]}], 0),
        ([{}, {"depends_on": [-3]}, {"depends_on": [-2]}], 1),
        ([{"depends_on": [-2]}, {"depends_on": [-3]}, {"depends_on": [-1]}], 0),
    ],
)
def test_cycles_through_batch_references_are_rejected(conn, specs, index):
    with pytest.raises(psycopg.errors.InvalidParameterValue) as raised:
        add_batch(conn, *({"identifier": "t"} | s for s in specs))
    assert raised.value.diag.message_primary == (
        f"add_jobs: spec at index {index}: depends_on makes a dependency cycle"
        " through batch references"
    )
    assert conn.execute("SELECT count(*) AS n FROM hopper._jobs").fetchone()["n"] == 0


def test_forward_references_without_a_cycle_are_fine(conn):
    rows = add_batch(conn, {"identifier": "last", "depends_on": [-2]}, {"identifier": "first"})
    assert rows[0]["depends_on"] == [rows[1]["id"]]
    assert [r["state"] for r in rows] == ["waiting", "pending"]


def test_long_chains_of_forward_references_and_a_long_cycle(conn):
    """The cycle check walks each reference once: a 2,000-spec chain written
    last-first passes, the same chain closed into a ring is refused."""
    count = 2000
    chain = [{"identifier": "t", "depends_on": [-(i + 2)]} for i in range(count - 1)]
    rows = add_batch(conn, *chain, {"identifier": "t"})
    assert rows[0]["depends_on"] == [rows[1]["id"]]
    assert [r["state"] for r in rows].count("waiting") == count - 1
    ring = [{"identifier": "t", "depends_on": [-((i + 1) % count + 1)]} for i in range(count)]
    with pytest.raises(psycopg.errors.InvalidParameterValue, match=r"index 0: .* cycle"):
        add_batch(conn, *ring)
    assert conn.execute("SELECT count(*) AS n FROM hopper._jobs").fetchone()["n"] == count


def test_a_missing_prerequisite_raises_23503_and_adds_nothing(conn):
    existing = add_job(conn, "a")["id"]
    with pytest.raises(psycopg.errors.ForeignKeyViolation) as raised:
        add_batch(
            conn,
            {"identifier": "ok", "depends_on": [existing]},
            {"identifier": "bad", "depends_on": [existing, 999999]},
        )
    assert raised.value.diag.message_primary == (
        "add_jobs: spec at index 1: depends_on names job 999999, which does not exist"
    )
    assert conn.execute("SELECT count(*) AS n FROM hopper._jobs").fetchone()["n"] == 1


def next_job_id(conn) -> int:
    return conn.execute(
        "SELECT CASE WHEN is_called THEN last_value + 1 ELSE last_value END AS n"
        " FROM hopper._jobs_id_seq"
    ).fetchone()["n"]


@pytest.mark.parametrize("job_key", [None, "keyed"])
def test_a_job_cannot_name_its_own_id_as_a_prerequisite(conn, job_key):
    """The existence check ran after the insert, so an id guessed from the sequence
    passed for the job's own: it was stored waiting on itself, for good."""
    own = next_job_id(conn)
    with pytest.raises(psycopg.errors.ForeignKeyViolation) as raised:
        add_job(conn, "t", depends_on=[own], job_key=job_key)
    assert raised.value.diag.message_primary == (
        f"add_job: depends_on names job {own}, which does not exist"
    )
    assert conn.execute("SELECT count(*) AS n FROM hopper._jobs").fetchone()["n"] == 0


def test_a_plain_id_of_a_job_of_the_same_call_is_refused(conn):
    """Two specs naming each other by guessed ids made a cycle no check saw (SPEC.md
    3.4: a cycle is possible only through batch references, which are checked)."""
    first = next_job_id(conn)
    with pytest.raises(psycopg.errors.ForeignKeyViolation) as raised:
        add_batch(
            conn,
            {"identifier": "a", "depends_on": [first + 1]},
            {"identifier": "b", "depends_on": [first]},
        )
    assert raised.value.diag.message_primary == (
        f"add_jobs: spec at index 0: depends_on names job {first + 1}, which does not exist"
    )
    assert conn.execute("SELECT count(*) AS n FROM hopper._jobs").fetchone()["n"] == 0
    rows = add_batch(conn, {"identifier": "a"}, {"identifier": "b", "depends_on": [-1]})
    assert rows[1]["depends_on"] == [rows[0]["id"]]


def test_failed_prerequisite_cancels_dependents_transitively(conn):
    root = add_job(conn, "a", max_attempts=1)["id"]
    rows = add_batch(
        conn,
        {"identifier": "b", "depends_on": [root]},
        {"identifier": "c", "depends_on": [-1]},
        {"identifier": "d", "depends_on": [-2]},
        {"identifier": "bystander"},
    )
    b, c, d, bystander = (r["id"] for r in rows)
    claim(conn, "w1", task_identifiers=["a"])
    assert call_one(conn, "fail_job", "w1", root, "boom")["state"] == "failed"
    ended = {j: job(conn, j) for j in (b, c, d, bystander)}
    assert [ended[j]["state"] for j in (b, c, d)] == ["cancelled"] * 3
    assert ended[b]["last_error"] == f"prerequisite job {root} failed"
    assert ended[c]["last_error"] == f"prerequisite job {b} cancelled"
    assert ended[d]["last_error"] == f"prerequisite job {c} cancelled"
    assert all(ended[j]["finished_at"] is not None for j in (b, c, d))
    assert ended[bystander]["state"] == "pending"


def test_a_retry_of_a_failing_prerequisite_keeps_dependents_waiting(conn):
    root = add_job(conn, "a", max_attempts=3)["id"]
    dependent = add_job(conn, "b", depends_on=[root])["id"]
    claim(conn, "w1")
    assert call_one(conn, "fail_job", "w1", root, "flaky")["state"] == "scheduled"
    assert state(conn, dependent) == "waiting"


@pytest.mark.parametrize("ending", ["failed", "cancelled"])
def test_dependent_of_an_ended_prerequisite_is_created_cancelled(conn, ending):
    gone = add_job(conn, "a")["id"]
    if ending == "failed":
        call(conn, "permanently_fail_jobs", [gone], "no")
    else:
        call(conn, "cancel_jobs", [gone])
    late = add_job(conn, "b", depends_on=[gone])
    assert (late["state"], late["last_error"]) == ("cancelled", f"prerequisite job {gone} {ending}")
    assert late["finished_at"] is not None


def test_cancelling_a_waiting_prerequisite_cancels_its_dependents(conn):
    root = add_job(conn, "a")["id"]
    middle = add_job(conn, "b", depends_on=[root])["id"]
    leaf = add_job(conn, "c", depends_on=[middle])["id"]
    assert [c["id"] for c in call(conn, "cancel_jobs", [middle], "changed my mind")] == [middle]
    assert (state(conn, middle), state(conn, leaf), state(conn, root)) == (
        "cancelled",
        "cancelled",
        "pending",
    )
    assert job(conn, leaf)["last_error"] == f"prerequisite job {middle} cancelled"


def test_running_prerequisite_asked_to_cancel_cancels_dependents_when_it_ends(conn):
    root = add_job(conn, "a")["id"]
    dependent = add_job(conn, "b", depends_on=[root])["id"]
    claim(conn, "w1")
    call(conn, "cancel_jobs", [root])
    assert state(conn, dependent) == "waiting"
    call(conn, "fail_job", "w1", root, "CancelledError")
    assert state(conn, dependent) == "cancelled"


def test_removed_prerequisite_cancels_its_dependents(conn):
    root = add_job(conn, "a", job_key="k")["id"]
    dependent = add_job(conn, "b", depends_on=[root])["id"]
    assert call_one(conn, "remove_job", "k")["id"] == root
    assert job(conn, dependent)["state"] == "cancelled"
    assert job(conn, dependent)["last_error"] == f"prerequisite job {root} removed"


def test_admin_completion_releases_dependents(conn):
    root = add_job(conn, "a")["id"]
    dependent = add_job(conn, "b", depends_on=[root])["id"]
    call(conn, "complete_jobs", [root])
    assert state(conn, dependent) == "pending"


def test_retried_dependent_waits_again_for_a_retried_prerequisite(conn):
    root = add_job(conn, "a")["id"]
    dependent = add_job(conn, "b", depends_on=[root])["id"]
    call(conn, "permanently_fail_jobs", [root])
    assert state(conn, dependent) == "cancelled"
    (again,) = call(conn, "retry_jobs", [dependent])
    assert again["state"] == "cancelled"  # its prerequisite is still failed
    call(conn, "retry_jobs", [root])
    (again,) = call(conn, "retry_jobs", [dependent])
    assert (again["state"], again["attempts"]) == ("waiting", 0)
    run(conn, root)
    assert state(conn, dependent) == "pending"


def test_with_completed_retention_zero_a_deleted_prerequisite_counts_as_completed(conn):
    call(conn, "set_setting", "completed_retention", "0")
    root = add_job(conn, "a")["id"]
    dependent = add_job(conn, "b", depends_on=[root])["id"]
    claim(conn, "w1")
    call(conn, "complete_claimed_job_ids", "w1", [root])
    assert job(conn, root) is None or job(conn, root)["id"] is None
    assert state(conn, dependent) == "pending"
    with pytest.raises(psycopg.errors.ForeignKeyViolation, match=f"names job {root}"):
        add_job(conn, "c", depends_on=[root])


def test_replacing_a_waiting_keyed_job_takes_the_new_dependencies(conn):
    a, b = add_job(conn, "a")["id"], add_job(conn, "b")["id"]
    keyed = add_job(conn, "k", job_key="key", depends_on=[a])
    assert keyed["state"] == "waiting"
    replaced = add_job(conn, "k", job_key="key", depends_on=[b])
    assert (replaced["id"], replaced["outcome"]) == (keyed["id"], "updated")
    assert (replaced["state"], replaced["depends_on"]) == ("waiting", [b])
    freed = add_job(conn, "k", job_key="key")
    assert (freed["state"], freed["depends_on"]) == ("pending", None)


def test_a_replace_that_would_make_a_job_wait_for_itself_is_refused(conn):
    keyed = add_job(conn, "k", job_key="key")["id"]
    with pytest.raises(psycopg.errors.InvalidParameterValue) as raised:
        add_job(conn, "k", job_key="key", depends_on=[keyed])
    assert raised.value.diag.message_primary == (
        f"add_job: depends_on makes a dependency cycle: job {keyed} would wait for itself"
    )
    middle = add_job(conn, "m", depends_on=[keyed])["id"]
    leaf = add_job(conn, "l", depends_on=[middle])["id"]
    with pytest.raises(psycopg.errors.InvalidParameterValue, match="cycle"):
        add_job(conn, "k", job_key="key", depends_on=[leaf])
    assert (state(conn, keyed), job(conn, keyed)["depends_on"]) == ("pending", None)
    assert (
        add_job(conn, "k", job_key="key", depends_on=[add_job(conn, "x")["id"]])["state"]
        == "waiting"
    )


def test_deduped_spec_leaves_the_existing_job_as_it_is(conn):
    a = add_job(conn, "a")["id"]
    first = add_job(conn, "k", job_key="key", job_key_mode="dedupe")
    again = add_job(conn, "k", job_key="key", job_key_mode="dedupe", depends_on=[a])
    assert (again["outcome"], again["state"], again["depends_on"]) == ("deduped", "pending", None)
    assert again["id"] == first["id"]


def test_tag_barrier_waits_for_other_active_jobs_holding_all_its_tags(conn):
    holder_a = add_job(conn, "import", tags=["import:42", "shard:1"])["id"]
    holder_b = add_job(conn, "import", tags=["import:42"])["id"]
    partial = add_job(conn, "other", tags=["shard:1"])["id"]
    barrier = add_job(conn, "report", depends_on_tags=["import:42"], tags=["import:42"])
    assert (barrier["state"], barrier["depends_on_tags"]) == ("waiting", ["import:42"])
    claimed = [j["id"] for j in claim(conn, "w1", batch_size=10)]
    assert claimed == [holder_a, holder_b, partial]
    call(conn, "complete_job", "w1", holder_a)
    call(conn, "complete_job", "w1", partial)
    assert state(conn, barrier["id"]) == "waiting"
    call(conn, "fail_job", "w1", holder_b, "bad", permanent=True)
    assert state(conn, barrier["id"]) == "pending"


def test_tag_barrier_with_no_holder_does_not_wait(conn):
    add_job(conn, "x", tags=["a"])
    assert add_job(conn, "after", depends_on_tags=["a", "b"])["state"] == "pending"


def test_tag_barrier_counts_jobs_of_the_same_call(conn):
    rows = add_batch(
        conn,
        {"identifier": "after", "depends_on_tags": ["batch"]},
        {"identifier": "work", "tags": ["batch"]},
    )
    assert [r["state"] for r in rows] == ["waiting", "pending"]
    run(conn, rows[1]["id"])
    assert state(conn, rows[0]["id"]) == "pending"


def test_barrier_released_when_its_last_holder_is_cancelled_or_retagged(conn):
    holder = add_job(conn, "work", tags=["t"], job_key="holder")["id"]
    second = add_job(conn, "work", tags=["t"])["id"]
    barrier = add_job(conn, "after", depends_on_tags=["t"])["id"]
    call(conn, "cancel_jobs", [second])
    assert state(conn, barrier) == "waiting"
    assert add_job(conn, "work", job_key="holder", tags=["u"])["id"] == holder
    assert state(conn, barrier) == "pending"


def test_both_kinds_must_be_satisfied(conn):
    prerequisite = add_job(conn, "a")["id"]
    holder = add_job(conn, "b", tags=["t"])["id"]
    both = add_job(conn, "c", depends_on=[prerequisite], depends_on_tags=["t"])["id"]
    claim(conn, "w1", batch_size=2)
    call(conn, "complete_job", "w1", prerequisite)
    assert state(conn, both) == "waiting"
    call(conn, "complete_job", "w1", holder)
    assert state(conn, both) == "pending"


def job_count(conn) -> int:
    return conn.execute("SELECT count(*) AS n FROM hopper._jobs").fetchone()["n"]


def test_a_tagged_job_waiting_for_the_barrier_its_tags_hold_is_refused(conn):
    """report would wait for the barrier job, which waits while report holds
    its tags: both would wait for ever, so the call is refused."""
    add_job(conn, "import", tags=["import"])
    barrier = add_job(conn, "barrier", depends_on_tags=["import"])["id"]
    before = job_count(conn)
    with pytest.raises(psycopg.errors.InvalidParameterValue) as refused:
        add_job(conn, "report", tags=["import", "x"], depends_on=[barrier])
    assert refused.value.diag.message_primary == (
        f"add_job: tags make a dependency cycle: job {barrier} would wait for itself"
        " through its tag barrier"
    )
    assert job_count(conn) == before


def test_a_barrier_cycle_through_other_waiting_jobs_is_refused(conn):
    add_job(conn, "import", tags=["import"])
    barrier = add_job(conn, "barrier", depends_on_tags=["import"])["id"]
    middle = add_job(conn, "middle", depends_on=[barrier])["id"]
    with pytest.raises(psycopg.errors.InvalidParameterValue):
        add_job(conn, "report", tags=["import"], depends_on=[middle])
    # the same job without the tags only waits
    assert add_job(conn, "report", depends_on=[middle])["state"] == "waiting"


def test_a_replace_that_closes_a_barrier_cycle_is_refused(conn):
    add_job(conn, "import", tags=["import"])
    barrier = add_job(conn, "barrier", depends_on_tags=["import"])["id"]
    keyed = add_job(conn, "k", job_key="k", depends_on=[barrier])
    with pytest.raises(psycopg.errors.InvalidParameterValue):
        add_job(conn, "k", job_key="k", tags=["import"], depends_on=[barrier])
    after = job(conn, keyed["id"])
    assert (after["state"], after["tags"], after["revision"]) == ("waiting", None, 0)


def test_a_replace_without_tags_that_closes_a_barrier_cycle_is_refused(conn):
    """report holds the barrier's tags and waits for the keyed job; making the keyed
    job wait for the barrier would close report -> keyed -> barrier -> report."""
    keyed = add_job(conn, "k", job_key="k", run_at=datetime.now(UTC) + timedelta(hours=1))
    report = add_job(conn, "report", tags=["import"], depends_on=[keyed["id"]])["id"]
    barrier = add_job(conn, "barrier", depends_on_tags=["import"])["id"]
    with pytest.raises(psycopg.errors.InvalidParameterValue) as refused:
        add_job(conn, "k", job_key="k", depends_on=[barrier])
    assert refused.value.diag.message_primary == (
        f"add_job: depends_on makes a dependency cycle: job {keyed['id']} would wait for itself"
    )
    assert (state(conn, keyed["id"]), job(conn, keyed["id"])["revision"]) == ("scheduled", 0)
    assert (state(conn, report), state(conn, barrier)) == ("waiting", "waiting")


def test_a_replace_whose_new_barrier_is_held_by_its_own_dependent_is_refused(conn):
    keyed = add_job(conn, "k", job_key="k", run_at=datetime.now(UTC) + timedelta(hours=1))
    add_job(conn, "report", tags=["import"], depends_on=[keyed["id"]])
    with pytest.raises(psycopg.errors.InvalidParameterValue) as refused:
        add_job(conn, "k", job_key="k", depends_on_tags=["import"])
    assert refused.value.diag.message_primary == (
        f"add_job: depends_on_tags makes a dependency cycle: job {keyed['id']}"
        " would wait for itself"
    )
    assert state(conn, keyed["id"]) == "scheduled"


def test_a_retry_that_would_close_a_barrier_cycle_is_refused(conn):
    """r waits for holders of b, s for holders of a; r holds a, s holds b. r was
    cancelled before s was added, so only its retry would close the cycle."""
    r = add_job(conn, "r", tags=["a"], depends_on_tags=["b"])["id"]
    call(conn, "cancel_jobs", [r])
    add_job(conn, "h", tags=["a"])
    s = add_job(conn, "s", tags=["b"], depends_on_tags=["a"])["id"]
    assert state(conn, s) == "waiting"
    with pytest.raises(psycopg.errors.InvalidParameterValue) as refused:
        call(conn, "retry_jobs", [r])
    assert refused.value.diag.message_primary == (
        f"retry_jobs: tags make a dependency cycle: job {r} would wait for itself"
        " through a tag barrier"
    )
    assert (state(conn, r), state(conn, s)) == ("cancelled", "waiting")


def test_two_specs_holding_each_others_barrier_are_refused(conn):
    with pytest.raises(psycopg.errors.InvalidParameterValue) as refused:
        add_batch(
            conn,
            {"identifier": "a", "tags": ["a"], "depends_on_tags": ["b"]},
            {"identifier": "b", "tags": ["b"], "depends_on_tags": ["a"]},
        )
    assert refused.value.diag.message_primary == (
        "add_jobs: tags make a dependency cycle: the job of spec 0 would wait for itself"
        " through its tag barrier"
    )
    assert job_count(conn) == 0


def test_holding_a_barrier_without_waiting_for_it_is_fine(conn):
    add_job(conn, "import", tags=["import"])
    barrier = add_job(conn, "barrier", depends_on_tags=["import"])["id"]
    other = add_job(conn, "other", tags=["other"])["id"]
    # waits for another job while holding the barrier's tags: no cycle
    second = add_job(conn, "import", tags=["import"], depends_on=[other])
    assert second["state"] == "waiting"
    # waits for the barrier without holding its tags: no cycle
    assert add_job(conn, "after", tags=["other"], depends_on=[barrier])["state"] == "waiting"
    assert [j["id"] for j in claim(conn, "w1", task_identifiers=["other"])] == [other]
    call(conn, "complete_job", "w1", other)
    assert state(conn, second["id"]) == "pending"


def test_completion_with_many_unrelated_waiting_jobs_reads_only_its_dependents(conn):
    """Settling costs work in proportion to the dependents of the ended job."""
    from plans import plan_with, shared_buffers_touched, statement_plans

    blockers = [add_job(conn, "blocker", tags=["b"])["id"] for _ in range(2)]
    conn.execute(
        "INSERT INTO hopper._jobs (task_identifier, state, depends_on, depends_on_tags)"
        " SELECT 'w', 'waiting', ARRAY[%s::bigint], ARRAY['tag' || i]"
        " FROM generate_series(1, 50000) AS i",
        [blockers[1]],
    )
    conn.execute(
        "INSERT INTO hopper._job_dependencies (prerequisite_id, job_id)"
        " SELECT %s, id FROM hopper._jobs WHERE task_identifier = 'w'",
        [blockers[1]],
    )
    dependent = add_job(conn, "mine", depends_on=[blockers[0]])["id"]
    conn.execute("ANALYZE hopper._jobs")
    conn.execute("ANALYZE hopper._job_dependencies")
    claim(conn, "w1", task_identifiers=["blocker"], batch_size=1)
    query = "SELECT hopper.complete_claimed_job_ids('w1', %s)"
    plans = statement_plans(conn, query, [[blockers[0]]], "hopper.complete_claimed_job_ids(")
    for step in ('DELETE FROM "hopper"._job_dependencies', "candidates := ARRAY("):
        plan = plan_with(plans, step)
        assert "Seq Scan" not in plan
        assert shared_buffers_touched(plan) <= 30, plan
    assert state(conn, dependent) == "pending"
    assert conn.execute(
        "SELECT count(*) AS n FROM hopper._job_dependencies WHERE prerequisite_id = %s",
        [blockers[0]],
    ).fetchone() == {"n": 0}


def test_edges_are_kept_for_unfinished_prerequisites_only(conn):
    done, active = add_job(conn, "a")["id"], add_job(conn, "b")["id"]
    run(conn, done)
    waiter = add_job(conn, "c", depends_on=[done, active])["id"]
    edges = conn.execute("SELECT prerequisite_id, job_id FROM hopper._job_dependencies").fetchall()
    assert edges == [{"prerequisite_id": active, "job_id": waiter}]
    run(conn, active)
    assert conn.execute("SELECT count(*) AS n FROM hopper._job_dependencies").fetchone() == {"n": 0}


def test_dependent_added_in_a_transaction_open_while_its_prerequisite_completes(conn, connect, dsn):
    """The producer locks the prerequisite: the completion waits for its commit
    and then releases the dependent it could not see before."""
    root = add_job(conn, "root")["id"]
    claim(conn, "w1")
    with psycopg.connect(dsn, row_factory=dict_row) as producer:
        leaf = add_job(producer, "leaf", depends_on=[root])["id"]
        worker = connect()
        completing = threading.Thread(target=call, args=(worker, "complete_job", "w1", root))
        completing.start()
        completing.join(0.3)
        assert completing.is_alive()  # waiting for the producer
        producer.commit()
    completing.join()
    assert (state(conn, root), state(conn, leaf)) == ("completed", "pending")


@pytest.mark.parametrize("ending", ["complete", "fail"])
def test_dependent_added_while_its_prerequisite_ends_uncommitted(conn, connect, dsn, ending):
    """The producer waits for the ending transaction and then sees the job ended."""
    root = add_job(conn, "root", max_attempts=1)["id"]
    claim(conn, "w1")
    with psycopg.connect(dsn, row_factory=dict_row) as worker:
        if ending == "complete":
            call(worker, "complete_job", "w1", root)
        else:
            call(worker, "fail_job", "w1", root, "boom")
        added: list[dict] = []
        producer = connect()
        adding = threading.Thread(
            target=lambda: added.append(add_job(producer, "leaf", depends_on=[root]))
        )
        adding.start()
        adding.join(0.3)
        assert adding.is_alive()  # waiting for the worker
        worker.commit()
    adding.join()
    expected = "pending" if ending == "complete" else "cancelled"
    assert added[0]["state"] == expected
    assert state(conn, added[0]["id"]) == expected


def test_two_prerequisites_ending_at_once_release_their_dependent(conn, connect):
    first, second = connect(), connect()
    for _ in range(40):
        a, b = add_job(conn, "p")["id"], add_job(conn, "p")["id"]
        dependent = add_job(conn, "d", depends_on=[a, b])["id"]
        claim(conn, "w1", task_identifiers=["p"], batch_size=2)
        at_once(
            partial(call, first, "complete_job", "w1", a),
            partial(call, second, "complete_job", "w1", b),
        )
        assert state(conn, dependent) == "pending"
        call(conn, "complete_jobs", [dependent])


def test_two_barrier_holders_ending_at_once_release_the_barrier(conn, connect):
    first, second = connect(), connect()
    for turn in range(40):
        tag = f"t{turn}"
        a, b = add_job(conn, "p", tags=[tag])["id"], add_job(conn, "p", tags=[tag])["id"]
        barrier = add_job(conn, "d", depends_on_tags=[tag])["id"]
        claim(conn, "w1", task_identifiers=["p"], batch_size=2)
        at_once(
            partial(call, first, "complete_job", "w1", a),
            partial(call, second, "fail_job", "w1", b, "x", permanent=True),
        )
        assert state(conn, barrier) == "pending"
        call(conn, "complete_jobs", [barrier])


def deadlocks(conn, *sessions: psycopg.Connection) -> int:
    """The database's count of deadlocks, with what the sessions counted sent in."""
    for session in sessions:
        session.execute("SELECT pg_stat_force_next_flush()")
        session.execute("SELECT")
    conn.execute("SELECT pg_stat_clear_snapshot()")
    return conn.execute(
        "SELECT deadlocks FROM pg_stat_database WHERE datname = current_database()"
    ).fetchone()["deadlocks"]


def test_two_failures_cascading_through_one_graph_in_opposite_orders_both_end(conn, connect):
    """Each failure locks its direct dependents first, then theirs: here one's first
    level is the other's second, so they lock u and v in opposite orders. A third
    session holds u until both wait, which makes the deadlock certain. The one the
    deadlock detector aborts starts its cascade again behind the other, and both
    failures and every cancellation go through."""
    pa, pb = add_job(conn, "pa", max_attempts=1)["id"], add_job(conn, "pb", max_attempts=1)["id"]
    claim(conn, "w1", batch_size=2)
    w = add_job(conn, "w", depends_on=[pa])["id"]
    z = add_job(conn, "z", depends_on=[pb])["id"]
    u = add_job(conn, "u", depends_on=[pa, z])["id"]
    v = add_job(conn, "v", depends_on=[pb, w])["id"]
    first, second = connect(), connect()
    for session in (first, second):
        session.execute("SET deadlock_timeout = '50ms'")
    deadlocks_before = deadlocks(conn, first, second)
    errors: list[BaseException] = []

    def fail(session: psycopg.Connection, job_id: int) -> None:
        try:
            call(session, "fail_job", "w1", job_id, "boom", permanent=True)
        except BaseException as error:  # surfaced below
            errors.append(error)

    with psycopg.connect(conn.info.dsn, row_factory=dict_row) as holder:
        holder.execute("SELECT FROM hopper._jobs WHERE id = %s FOR UPDATE", [u])
        failing = [threading.Thread(target=fail, args=(first, pa))]
        failing[0].start()
        wait_until_blocked(conn, first)  # holds w, waits for u
        failing.append(threading.Thread(target=fail, args=(second, pb)))
        failing[1].start()
        wait_until_blocked(conn, second)  # holds z and v, waits for u
    for thread in failing:
        thread.join(30)
    assert errors == []
    assert [state(conn, j) for j in (pa, pb, w, z, u, v)] == ["failed"] * 2 + ["cancelled"] * 4
    assert deadlocks(conn, first, second) >= deadlocks_before + 1  # it did happen


def test_two_transactions_adding_the_halves_of_a_barrier_cycle_at_once(conn, connect):
    """j1 holds b and waits while a is held; j2 holds a and waits while b is held.
    Added in two open transactions, neither sees the other: the second must wait
    for the first to commit, then see the cycle and be refused."""
    holder_a = add_job(conn, "h", tags=["a"])["id"]
    add_job(conn, "h", tags=["b"])
    first = psycopg.connect(conn.info.dsn, row_factory=dict_row)
    second = connect()
    outcome: list[object] = []

    def add_second_half() -> None:
        try:
            outcome.append(add_job(second, "j2", tags=["a"], depends_on_tags=["b"]))
        except psycopg.Error as error:
            outcome.append(error)

    with first:
        j1 = add_job(first, "j1", tags=["b"], depends_on_tags=["a"])["id"]
        adding = threading.Thread(target=add_second_half)
        adding.start()
        wait_until(
            lambda: outcome or waits_for_lock(conn, second),
            5, "the second half to be added or to wait",
        )  # fmt: skip
        first.commit()
        adding.join(10)
    (refused,) = outcome
    assert isinstance(refused, psycopg.errors.InvalidParameterValue), refused
    assert "tags make a dependency cycle" in str(refused)
    assert [r["task_identifier"] for r in conn.execute("SELECT * FROM hopper.jobs")] == [
        "h", "h", "j1"
    ]  # fmt: skip
    claim(conn, "w1", task_identifiers=["h"], batch_size=2)
    call(conn, "complete_job", "w1", holder_a)
    assert state(conn, j1) == "pending"


def test_producers_and_workers_racing_leave_no_job_waiting(conn, connect):
    """Four producers add jobs depending on random earlier jobs and tags while two
    workers complete or fail whatever they claim. Once all is drained no job may
    be left waiting, and each cancelled dependent names a prerequisite that failed
    or was cancelled."""
    import random

    stop = threading.Event()
    ids: list[int] = []
    ids_lock = threading.Lock()
    errors: list[BaseException] = []

    def produce(seed: int) -> None:
        rng = random.Random(seed)
        producer = connect()
        try:
            for _ in range(40):
                with ids_lock:
                    known = list(ids)
                options: dict = {"max_attempts": 1}
                if known and rng.random() < 0.7:
                    options["depends_on"] = rng.sample(known, min(len(known), rng.randint(1, 3)))
                # a barrier job carries no tags and nothing depends on it, so
                # no call closes a cycle through a barrier (that is refused)
                barrier = rng.random() < 0.2
                if barrier:
                    options["depends_on_tags"] = [f"t{rng.randrange(3)}"]
                else:
                    options["tags"] = [f"t{rng.randrange(3)}"]
                added = add_job(producer, "work", **options)
                if not barrier:
                    with ids_lock:
                        ids.append(added["id"])
        except BaseException as error:
            errors.append(error)

    def work(name: str, seed: int) -> None:
        rng = random.Random(seed)
        worker = connect()
        try:
            while not stop.is_set():
                for claimed in claim(worker, name, batch_size=3):
                    ending = ("fail_job", "unlucky") if rng.random() < 0.2 else ("complete_job",)
                    # a cascade retries its own deadlocks, but one over locks
                    # taken before it would reach the worker, which retries
                    while True:
                        try:
                            call(worker, ending[0], name, claimed["id"], *ending[1:])
                            break
                        except psycopg.errors.DeadlockDetected:
                            continue
        except BaseException as error:
            errors.append(error)

    producers = [threading.Thread(target=produce, args=(i,)) for i in range(4)]
    workers = [threading.Thread(target=work, args=(f"w{i}", 10 + i)) for i in range(2)]
    run_producers_and_workers(producers, workers, stop)
    assert errors == []
    while batch := claim(conn, "drain", batch_size=50):
        call(conn, "complete_claimed_job_ids", "drain", [j["id"] for j in batch])
    final = {row["id"]: row for row in conn.execute("SELECT * FROM hopper.jobs").fetchall()}
    assert len(final) == 160
    assert {row["state"] for row in final.values()} <= {"completed", "failed", "cancelled"}
    for row in final.values():
        if row["state"] == "cancelled":
            blocker = int(row["last_error"].split()[2])
            assert blocker in (row["depends_on"] or [])
            assert final[blocker]["state"] in ("failed", "cancelled")
        if row["state"] == "completed" and row["depends_on"]:
            assert all(final[p]["state"] == "completed" for p in row["depends_on"])


def test_a_replace_that_cancels_a_job_cancels_the_jobs_of_other_calls_waiting_on_it(conn):
    """A keyed job that other jobs wait on is replaced with a prerequisite that has
    failed, so the replace ends it cancelled: its dependents end with it, and a
    barrier that waited on its tags alone is released."""
    failed = add_job(conn, "f")["id"]
    call(conn, "permanently_fail_jobs", [failed])
    blocker = add_job(conn, "a")["id"]
    keyed = add_job(conn, "b", job_key="k", depends_on=[blocker], tags=["batch-7"])["id"]
    dependent = add_job(conn, "c", depends_on=[keyed])["id"]
    barrier = add_job(conn, "d", depends_on_tags=["batch-7"])["id"]
    replaced = add_job(conn, "b", job_key="k", depends_on=[failed], tags=["batch-7"])
    assert (replaced["id"], replaced["state"], replaced["outcome"]) == (
        keyed, "cancelled", "updated"
    )  # fmt: skip
    assert (state(conn, dependent), job(conn, dependent)["last_error"]) == (
        "cancelled", f"prerequisite job {keyed} cancelled"
    )  # fmt: skip
    assert state(conn, barrier) == "pending"


def test_a_replace_that_deadlocks_with_its_prerequisites_end_is_applied_again(conn, connect):
    """A keyed job k waits on p. A replace of k locks k, then waits for p, which a
    completion holds; the completion's cascade then wants k: a deadlock, which the
    replace (waiting first) detects. It undoes its own part and applies again once
    the completion has committed, instead of failing with 40P01."""
    prerequisite = add_job(conn, "p")["id"]
    keyed = add_job(conn, "k", job_key="k", depends_on=[prerequisite])["id"]
    call(conn, "register_worker", "w1")
    claim(conn, "w1", task_identifiers=["p"])
    completer, producer = connect(), connect()
    for session in (completer, producer):
        session.execute("SET deadlock_timeout = '50ms'")
    deadlocks_before = deadlocks(conn, completer, producer)
    outcome: dict = {}

    def replace() -> None:
        try:
            outcome["job"] = add_job(
                producer, "k", {"v": 2}, job_key="k", depends_on=[prerequisite]
            )
        except psycopg.Error as error:
            outcome["error"] = f"{type(error).__name__}: {error.diag.message_primary}"

    completer.execute("BEGIN")
    completer.execute("SELECT FROM hopper._jobs WHERE id = %s FOR UPDATE", [prerequisite])
    replacing = threading.Thread(target=replace)
    replacing.start()
    wait_until_blocked(conn, producer)  # holds k, waits for p
    call(completer, "complete_job", "w1", prerequisite)  # its cascade wants k
    completer.execute("COMMIT")
    replacing.join(10)
    assert "error" not in outcome, outcome
    assert (outcome["job"]["id"], outcome["job"]["outcome"]) == (keyed, "updated")
    assert (state(conn, prerequisite), state(conn, keyed)) == ("completed", "pending")
    assert job(conn, keyed)["payload"] == {"v": 2}
    assert deadlocks(conn, completer, producer) > deadlocks_before
