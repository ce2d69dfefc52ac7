"""End-to-end through run_once: handlers, results, errors, validation, batches, timeouts."""

from __future__ import annotations

import asyncio
import logging
import sys
import threading
from typing import TYPE_CHECKING

import psycopg
import pytest
import worker_tasks
from psycopg.types.json import Jsonb
from sqlcalls import add_job, call, job

import hopper
from hopper._tasks import Completed

if TYPE_CHECKING:
    from hopper import JobContext


def test_sync_and_async_handlers_store_results(dsn, conn):
    echo = add_job(conn, "echo", {"hello": "world"})["id"]
    total = add_job(conn, "add", {"a": 2, "b": 3})["id"]
    assert hopper.run_once(dsn, worker_tasks.tasks) == 2
    assert job(conn, echo)["state"] == "completed"
    assert job(conn, echo)["result"] == {"echo": {"hello": "world"}, "attempt": 1}
    assert (job(conn, total)["state"], job(conn, total)["result"]) == ("completed", 5)


def test_exception_fails_the_job_with_its_message_and_retries_later(dsn, conn):
    target = add_job(conn, "explode", {"why": "disk full"})["id"]
    assert hopper.run_once(dsn, worker_tasks.tasks) == 1
    failed = job(conn, target)
    assert failed["state"] == "scheduled"
    assert failed["last_error"] == "ValueError: disk full"
    assert failed["attempts"] == 1
    assert hopper.run_once(dsn, worker_tasks.tasks) == 0  # backoff not over yet


def test_pydantic_validation_failure_is_permanent_and_names_the_field(dsn, conn):
    bad = add_job(conn, "send_email", {"to": "a@b.c"})["id"]
    good = add_job(conn, "send_email", {"to": "a@b.c", "subject": "hi"})["id"]
    hopper.run_once(dsn, worker_tasks.tasks)
    failed = job(conn, bad)
    assert failed["state"] == "failed"  # max_attempts 25, yet no retry
    assert failed["last_error"] == "payload is invalid: subject: Field required"
    assert job(conn, good)["result"] == {"sent_to": "a@b.c"}


def test_an_annotation_that_holds_models_validates_each_of_them(dsn, conn):
    """A batch of emails is list[EmailPayload]: only a bare model was validated, so
    such a handler got plain dicts where its annotation promised models."""
    emails = [{"to": "a@b.c", "subject": "hi"}, {"to": "d@e.f", "subject": "yo"}]
    batch = add_job(conn, "send_emails", emails)["id"]
    named = add_job(conn, "email_by_name", {"ann": emails[0]})["id"]
    bad = add_job(conn, "send_emails", [emails[0], {"to": "x@y.z"}])["id"]
    assert hopper.run_once(dsn, worker_tasks.tasks) == 3
    assert job(conn, batch)["result"] == ["EmailPayload to a@b.c", "EmailPayload to d@e.f"]
    assert job(conn, named)["result"] == {"ann": "hi"}
    assert job(conn, bad)["state"] == "failed"
    assert job(conn, bad)["last_error"] == "payload is invalid: 1.subject: Field required"


def test_a_handler_may_annotate_its_context_with_a_name_for_type_checkers_only(dsn, conn):
    """JobContext imported under TYPE_CHECKING (as ruff's TCH rules ask) cannot be
    evaluated at runtime: registering such a handler raised NameError, since hopper
    evaluated every annotation to find the payload's model."""
    tasks = hopper.TaskRegistry()

    @tasks.task("typed")
    def typed(payload: dict, job: JobContext) -> dict:
        return {"attempt": job.job.attempts, **payload}

    target = add_job(conn, "typed", {"n": 1})["id"]
    assert hopper.run_once(dsn, tasks) == 1
    assert job(conn, target)["result"] == {"attempt": 1, "n": 1}


def test_a_callable_object_may_be_a_handler_with_a_model_and_async(dsn, conn):
    """Registering one raised TypeError (get_type_hints takes no such object). Its
    model and whether it is async are read from its __call__ (Python 3.11's
    iscoroutinefunction does not look there)."""

    class Sender:
        async def __call__(self, payload: worker_tasks.EmailPayload) -> dict:
            await asyncio.sleep(0)
            return {"to": payload.to}

    tasks = hopper.TaskRegistry()
    tasks.task("send")(Sender())
    bad = add_job(conn, "send", {"to": "a@b.c"})["id"]
    good = add_job(conn, "send", {"to": "a@b.c", "subject": "hi"})["id"]
    assert hopper.run_once(dsn, tasks) == 2
    assert job(conn, bad)["last_error"] == "payload is invalid: subject: Field required"
    assert (job(conn, good)["state"], job(conn, good)["result"]) == ("completed", {"to": "a@b.c"})


def test_a_payload_annotation_that_cannot_be_evaluated_is_refused_at_registration():
    """The payload's annotation decides whether it is validated, so one that cannot
    be evaluated (a model defined after the handler, say) must not be skipped."""
    tasks = hopper.TaskRegistry()
    with pytest.raises(TypeError, match=r"handler early: the annotation of its payload"):

        @tasks.task("early")
        def early(payload: DefinedLater) -> None:  # noqa: F821
            return None

    assert "early" not in tasks


def test_batch_job_retries_only_failed_elements(dsn, conn):
    payload = [{"n": 1}, {"n": 2, "fail": True}, {"n": 3}]
    target = add_job(conn, "batch", Jsonb(payload))["id"]
    hopper.run_once(dsn, worker_tasks.tasks)
    failed = job(conn, target)
    assert failed["state"] == "scheduled"
    assert failed["payload"] == [{"n": 2, "fail": True}]
    assert (
        failed["last_error"]
        == "1 of 3 elements failed; first: RuntimeError: bad {'n': 2, 'fail': True}"
    )


def test_batch_job_with_every_element_ok_completes_with_their_results(dsn, conn):
    target = add_job(conn, "batch", Jsonb([{"n": 1}, {"n": 5}]))["id"]
    hopper.run_once(dsn, worker_tasks.tasks)
    assert (job(conn, target)["state"], job(conn, target)["result"]) == ("completed", [2, 10])


def test_timeouts_fail_async_and_sync_handlers(dsn, conn):
    hung = add_job(conn, "hang")["id"]
    hung_sync = add_job(conn, "hang_sync")["id"]
    per_job = add_job(conn, "hang", timeout="0.1 seconds")["id"]
    hopper.run_once(dsn, worker_tasks.tasks)
    assert job(conn, hung)["last_error"] == "timeout after 00:00:00.3"
    assert job(conn, hung_sync)["last_error"] == "timeout after 00:00:00.3"
    assert job(conn, per_job)["last_error"] == "timeout after 00:00:00.1"
    assert {job(conn, j)["state"] for j in (hung, hung_sync, per_job)} == {"scheduled"}


def test_progress_is_recorded(dsn, conn):
    target = add_job(conn, "progress")["id"]
    hopper.run_once(dsn, worker_tasks.tasks)
    assert (job(conn, target)["state"], job(conn, target)["progress"]) == ("completed", 50)


@pytest.mark.parametrize(("percent", "stored"), [(33.4, 33), (99.6, 100), (0.0, 0)])
def test_a_fractional_progress_is_rounded(dsn, conn, percent, stored, caplog):
    """A percentage is often computed (done / total * 100). A float reached the
    database as double precision, no set_progress matched it, and the worker logged
    an ERROR that it refused the report, dropping the progress."""
    target = add_job(conn, "progress", {"percent": percent})["id"]
    hopper.run_once(dsn, worker_tasks.tasks)
    assert (job(conn, target)["state"], job(conn, target)["progress"]) == ("completed", stored)
    assert "refused" not in caplog.text


@pytest.mark.parametrize(
    ("percent", "error"),
    [(True, "TypeError: progress must be a number (got True)"),
     ("50", "TypeError: progress must be a number (got '50')"),
     (100.5, "ValueError: progress must be between 0 and 100 (got 100.5)")],
)  # fmt: skip
def test_a_progress_that_is_not_a_percentage_fails_the_handler(dsn, conn, percent, error):
    target = add_job(conn, "progress", {"percent": percent})["id"]
    hopper.run_once(dsn, worker_tasks.tasks)
    assert (job(conn, target)["state"], job(conn, target)["progress"]) == ("scheduled", None)
    assert job(conn, target)["last_error"] == error


def test_run_once_on_a_given_autocommit_connection(dsn, conn):
    target = add_job(conn, "add", {"a": 1, "b": 1})["id"]
    with psycopg.connect(dsn, autocommit=True) as own:
        assert hopper.run_once(own, worker_tasks.tasks) == 1
    assert job(conn, target)["result"] == 2
    with psycopg.connect(dsn) as not_autocommit, pytest.raises(ValueError, match="autocommit"):
        hopper.run_once(not_autocommit, worker_tasks.tasks)


def test_async_run_once_twin(dsn, conn):
    import asyncio

    from hopper import aio

    target = add_job(conn, "echo", {})["id"]

    async def go() -> int:
        async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as aconn:
            return await aio.run_once(aconn, worker_tasks.tasks)

    assert asyncio.run(go()) == 1
    assert job(conn, target)["state"] == "completed"


def test_only_registered_tasks_are_claimed(dsn, conn):
    unknown = add_job(conn, "nobody_handles_this")["id"]
    assert hopper.run_once(dsn, worker_tasks.tasks) == 0
    assert job(conn, unknown)["state"] == "pending"
    assert call(conn, "queue_stats")[0]["pending"] == 1


def test_a_refused_completion_is_logged_and_changes_nothing(dsn, conn, caplog, monkeypatch):
    monkeypatch.setenv("HOPPER_TEST_DSN", dsn)
    # one attempt only: the unlock fails the job rather than running it again
    target = add_job(conn, "lose_myself", max_attempts=1)["id"]
    with caplog.at_level("WARNING", logger="hopper.worker"):
        assert hopper.run_once(dsn, worker_tasks.tasks) == 1
    assert f"completion refused, jobs no longer held: [{target}]" in caplog.text
    unlocked = job(conn, target)
    assert (unlocked["state"], unlocked["result"], unlocked["locked_by"]) == ("failed", None, None)


def test_a_concurrency_above_max_batch_size_claims_in_batches_it_allows(dsn, conn, caplog):
    call(conn, "set_setting", "max_batch_size", "3")
    ids = [add_job(conn, "echo", {"n": n})["id"] for n in range(10)]
    with caplog.at_level("WARNING", logger="hopper.worker"):
        assert hopper.run_once(dsn, worker_tasks.tasks, concurrency=8) == 10
    assert [job(conn, i)["state"] for i in ids] == ["completed"] * 10
    assert "the database refused 8 jobs in one call" in caplog.text
    assert "sending at most 2 from now on" in caplog.text


def test_outcomes_over_a_lowered_max_batch_size_are_sent_in_smaller_calls(dsn, conn, monkeypatch):
    """max_batch_size falls to 1 while four jobs run: their two completions and two
    failures are each refused together, and reported one at a time."""
    monkeypatch.setenv("HOPPER_TEST_DSN", dsn)
    call(conn, "set_setting", "max_batch_size", "4")
    lowering = add_job(conn, "lower_max_batch_size", {"to": 1})["id"]
    echo = add_job(conn, "echo", {"n": 1})["id"]
    failing = [add_job(conn, "explode", {"why": f"no {n}"})["id"] for n in range(2)]
    assert hopper.run_once(dsn, worker_tasks.tasks, concurrency=4) == 4
    assert [job(conn, i)["state"] for i in (lowering, echo)] == ["completed"] * 2
    assert job(conn, echo)["result"] == {"echo": {"n": 1}, "attempt": 1}
    assert [(job(conn, i)["state"], job(conn, i)["last_error"]) for i in failing] == [
        ("scheduled", "ValueError: no 0"),
        ("scheduled", "ValueError: no 1"),
    ]


def test_results_that_jsonb_cannot_hold_fail_their_jobs_and_the_rest_completes(dsn, conn):
    """JSON has no NaN and jsonb no \\u0000: such a result fails its job for good
    instead of stopping every report of the worker."""
    nan = add_job(conn, "nan_result")["id"]
    nul = add_job(conn, "nul_result")["id"]
    fine = add_job(conn, "echo", {"n": 1})["id"]
    assert hopper.run_once(dsn, worker_tasks.tasks) == 3
    assert job(conn, nan)["state"] == "failed"
    # Python 3.13 adds the value (": nan") to json's message
    assert job(conn, nan)["last_error"].startswith(
        "result is not JSON serialisable: Out of range float values are not JSON compliant"
    )
    assert (job(conn, nul)["state"], job(conn, nul)["last_error"]) == (
        "failed", "result is not storable: jsonb cannot hold the character U+0000"
    )  # fmt: skip
    assert job(conn, fine)["state"] == "completed"


def test_an_error_message_with_a_nul_character_is_stored_with_it_escaped(dsn, conn):
    target = add_job(conn, "nul_error")["id"]
    assert hopper.run_once(dsn, worker_tasks.tasks) == 1
    failed = job(conn, target)
    assert (failed["state"], failed["last_error"]) == ("scheduled", "ValueError: bad\\x00byte")


def test_an_outcome_the_database_refuses_fails_its_job_and_the_rest_is_reported(dsn, conn):
    """Whatever the database refuses in a report (here a result that is not JSON),
    the reporter goes on: the other outcomes are stored and the job fails for good."""
    refused = add_job(conn, "echo", {})["id"]
    fine = add_job(conn, "echo", {})["id"]
    worker = hopper.Worker(dsn, worker_tasks.tasks, worker_id="reporter-1")

    async def claim_then_report() -> None:
        await worker.db.open()
        try:
            await worker.db.register(worker.worker_id, {})
            assert len(await worker.db.claim(worker.worker_id, ["echo"], 2)) == 2
            worker._outcomes = [Completed(refused, "not json"), Completed(fine, "1")]
            await worker._report_all()
        finally:
            await worker.db.close()

    asyncio.run(claim_then_report())
    failed = job(conn, refused)
    assert failed["state"] == "failed"
    assert failed["last_error"].startswith(
        "the worker could not report this job's outcome: invalid input syntax for type json"
    )
    assert (job(conn, fine)["state"], job(conn, fine)["result"]) == ("completed", 1)


def test_a_handlers_own_timeout_error_is_an_ordinary_failure(dsn, conn):
    """Only the task's timeout reads as 'timeout after ...'; a TimeoutError the
    handler raises itself fails the job with its message, with or without one."""
    bare = add_job(conn, "own_timeout")["id"]
    within = add_job(conn, "own_timeout_within")["id"]
    assert hopper.run_once(dsn, worker_tasks.tasks) == 2
    for target in (bare, within):
        failed = job(conn, target)
        assert (failed["state"], failed["last_error"]) == (
            "scheduled", "TimeoutError: upstream took too long"
        )  # fmt: skip


def test_a_pydantic_result_that_cannot_be_serialised_fails_its_job(dsn, conn):
    target = add_job(conn, "opaque_result")["id"]
    fine = add_job(conn, "echo", {})["id"]
    assert hopper.run_once(dsn, worker_tasks.tasks) == 2
    failed = job(conn, target)
    assert failed["state"] == "failed"
    assert failed["last_error"] == (
        "result is not JSON serialisable: Unable to serialize unknown type: <class 'object'>"
    )
    assert job(conn, fine)["state"] == "completed"


def test_the_reporter_keeps_trying_after_a_long_outage(dsn, conn, monkeypatch, caplog):
    """While the worker runs, outcomes it could not send are sent once the database
    is back, however long it was gone: after 30 failed tries the reporter used to
    wait for the next finished job, which an idle queue never brings."""
    target = add_job(conn, "echo", {})["id"]
    monkeypatch.setattr(hopper._worker, "RECONNECT_DELAYS", (0.001,))
    worker = hopper.Worker(dsn, worker_tasks.tasks, worker_id="reporter-2")

    async def outage_then_report() -> None:
        await worker.db.open()
        try:
            await worker.db.register(worker.worker_id, {})
            (claimed,) = await worker.db.claim(worker.worker_id, ["echo"], 1)
            worker._outcomes = [Completed(claimed.id, "1")]
            real_pool = worker.db._pool
            worker.db._pool = None
            worker.db._conn = await psycopg.AsyncConnection.connect(dsn, autocommit=True)
            await worker.db._conn.close()  # every statement now fails: the outage
            reporter = asyncio.create_task(worker._report_forever())
            worker._reported.set()
            await asyncio.sleep(1.0)  # far more than 30 tries at 1 ms
            worker.db._pool, worker.db._conn = real_pool, None  # the database is back
            for _ in range(100):
                if job(conn, target)["state"] == "completed":
                    break
                await asyncio.sleep(0.05)
            reporter.cancel()
        finally:
            await worker.db.close()

    with caplog.at_level("WARNING", logger="hopper.worker"):
        asyncio.run(outage_then_report())
    assert caplog.text.count("reporting outcomes failed") > 30
    assert (job(conn, target)["state"], job(conn, target)["result"]) == ("completed", 1)


def test_run_worker_outside_the_main_thread_says_what_to_use(dsn, conn):
    """run_worker installs signal handlers, which asyncio refused outside the main
    thread with "set_wakeup_fd only works in main thread of the main interpreter"."""
    added = add_job(conn, "add", {"a": 1, "b": 1})["id"]
    raised: list[BaseException] = []

    def run() -> None:
        try:
            hopper.run_worker(dsn, worker_tasks.tasks)
        except RuntimeError as error:
            raised.append(error)

    thread = threading.Thread(target=run)
    thread.start()
    thread.join(10)
    assert [str(e) for e in raised] == [
        "run_worker stops on SIGINT and SIGTERM, which only the main thread can handle;"
        " in another thread run Worker(...).run() and call its stop()"
    ]
    assert job(conn, added)["state"] == "pending"


def test_a_long_error_is_cut_in_the_log_and_in_the_job(dsn, conn, caplog):
    """A 50 MB exception message (a response body, say) was logged whole and stored
    whole in last_error and in errors, once per attempt (a run_once took 21 s)."""
    long = add_job(conn, "long_error", {"length": 50_000})["id"]
    short = add_job(conn, "long_error", {"length": 9_993})["id"]  # with "ValueError: ", 10,005
    edge = add_job(conn, "long_error", {"length": 9_988})["id"]  # 10,000: kept whole
    hopper.run_once(dsn, worker_tasks.tasks)
    kept = "ValueError: " + "x" * (10_000 - len("ValueError: "))
    assert job(conn, long)["last_error"] == kept + "... (40,012 more characters not kept)"
    assert job(conn, short)["last_error"] == kept + "... (5 more characters not kept)"
    assert job(conn, edge)["last_error"] == kept
    assert [e["message"] for e in job(conn, long)["errors"]] == [job(conn, long)["last_error"]]
    # the message and its traceback, whose exception line is cut the same way
    assert max(len(r.getMessage()) for r in caplog.records) < 20_500


def test_a_failure_is_logged_with_the_handlers_traceback(dsn, conn, caplog):
    """The log said "job failed: KeyError: 'missing'" and no more, so nothing told
    where in the handler the error came from."""
    caplog.set_level(logging.WARNING, logger="hopper")
    target = add_job(conn, "explode", {"why": "disk full"})["id"]
    assert hopper.run_once(dsn, worker_tasks.tasks) == 1
    [record] = [r for r in caplog.records if r.name == "hopper.worker"]
    assert record.levelno == logging.WARNING
    lines = record.getMessage().splitlines()
    assert lines[0] == f"job {target} (explode, attempt 1): job failed: ValueError: disk full"
    assert lines[1] == "Traceback (most recent call last):"
    assert 'worker_tasks.py", line' in lines[2] and "in explode" in lines[2]
    assert lines[-1] == "ValueError: disk full"
    assert "hopper/_tasks.py" not in record.getMessage()  # the frames that called it


def test_a_job_that_fails_for_good_is_logged_as_an_error(dsn, conn, caplog):
    """A PermanentFailure, a payload its model refuses and a result that is not
    JSON ended their jobs failed without a line in the log; a last attempt's failure
    read like any other."""
    caplog.set_level(logging.WARNING, logger="hopper")
    tasks = hopper.TaskRegistry()

    @tasks.task("refuse")
    async def refuse(payload: dict) -> None:
        raise hopper.PermanentFailure("no such user")

    @tasks.task("opaque")
    def opaque(payload: dict) -> object:
        return object()

    @tasks.task("last")
    def last(payload: dict) -> None:
        raise ValueError("still broken")

    refused = add_job(conn, "refuse", {})["id"]
    invalid = add_job(conn, "send_email", {"to": "a@b.c"})["id"]
    unstorable = add_job(conn, "opaque", {})["id"]
    exhausted = add_job(conn, "last", {}, max_attempts=1)["id"]
    tasks.tasks["send_email"] = worker_tasks.tasks.tasks["send_email"]
    assert hopper.run_once(dsn, tasks) == 4
    logged = {
        int(r.getMessage().split()[1]): (r.levelno, r.getMessage().splitlines()[0])
        for r in caplog.records
        if r.name == "hopper.worker"
    }
    for target in (refused, invalid, unstorable, exhausted):
        assert job(conn, target)["state"] == "failed"
    assert logged == {
        refused: (logging.ERROR, f"job {refused} (refuse, attempt 1): job failed for good"
                  " (no retry): PermanentFailure: no such user"),
        invalid: (logging.ERROR, f"job {invalid} (send_email, attempt 1): job failed for good"
                  " (no retry): payload is invalid: subject: Field required"),
        unstorable: (logging.ERROR, f"job {unstorable} (opaque, attempt 1): job failed for"
                     " good (no retry): result is not JSON serialisable: Object of type"
                     " object is not JSON serializable"),
        exhausted: (logging.ERROR, f"job {exhausted} (last, attempt 1): job failed for good"
                    " (attempt 1 of 1): ValueError: still broken"),
    }  # fmt: skip


@pytest.mark.parametrize("kind", ["async", "sync"])
def test_a_handler_that_calls_sys_exit_fails_its_job_and_the_worker_runs_on(dsn, conn, kind):
    """SystemExit left the handler and ended the worker (the process exited with the
    handler's code), and the job, given back with its attempt uncounted, ended the
    next worker that claimed it: one job stopped every worker for good."""
    tasks = hopper.TaskRegistry()

    @tasks.task("exit_async")
    async def exit_async(payload: dict) -> None:
        sys.exit(3)

    @tasks.task("exit_sync")
    def exit_sync(payload: dict) -> None:
        raise KeyboardInterrupt

    @tasks.task("after")
    async def after(payload: dict) -> str:
        return "ran"

    exiting = add_job(conn, f"exit_{kind}", {}, max_attempts=2)["id"]
    later = add_job(conn, "after", {}, run_at="now")["id"]
    assert hopper.run_once(dsn, tasks) == 2
    failed = job(conn, exiting)
    expected = "SystemExit: 3" if kind == "async" else "KeyboardInterrupt"
    assert (failed["state"], failed["attempts"], failed["last_error"]) == (
        "scheduled", 1, expected,
    )  # fmt: skip
    assert job(conn, later)["result"] == "ran"


def test_a_worker_without_tasks_is_refused(dsn):
    """It would claim nothing and say nothing, as when the module that fills the
    registry with @tasks.task handlers was never imported."""
    with pytest.raises(ValueError, match="tasks holds no task"):
        hopper.Worker(dsn, hopper.TaskRegistry())
    with pytest.raises(ValueError, match="tasks holds no task"):
        hopper.run_once(dsn, worker_tasks.empty)


def test_a_generator_handler_is_refused_at_registration():
    """A handler that yields returns a generator that nothing iterates: its job
    failed with "result is not JSON serialisable" (a sync one) or a TypeError on
    every attempt (an async one), its body never run."""
    tasks = hopper.TaskRegistry()

    def sync_generator(payload: dict):
        yield payload

    async def async_generator(payload: dict):
        yield payload

    for handler in (sync_generator, async_generator):
        with pytest.raises(TypeError, match=rf"handler {handler.__name__} is a generator"):
            tasks.task(handler.__name__)(handler)
    assert tasks.names() == []


def test_a_handler_that_no_call_fits_is_refused_at_registration():
    """A handler is called with (payload) or (payload, job); one with a third required
    parameter, or a required keyword-only one, failed with a TypeError every attempt."""
    tasks = hopper.TaskRegistry()

    def three(payload: dict, job: JobContext, extra: int) -> None: ...

    def keyword(payload: dict, *, key: str) -> None: ...

    def optional(payload: dict, job: JobContext, extra: int = 1) -> None: ...

    for handler in (three, keyword):
        with pytest.raises(TypeError, match=rf"handler {handler.__name__} must take \(payload\)"):
            tasks.task(handler.__name__)(handler)
    tasks.task("optional")(optional)
    assert tasks.names() == ["optional"] and tasks.tasks["optional"].takes_context


def test_the_decorator_without_its_task_identifier_says_so():
    """@tasks.task without parentheses passed the function as the name, and raised
    AttributeError: 'function' object has no attribute 'strip'."""
    tasks = hopper.TaskRegistry()
    with pytest.raises(TypeError, match=r'takes the task identifier: @tasks.task\("send_email"\)'):

        @tasks.task  # type: ignore[arg-type]
        def send_email(payload: dict) -> None: ...

    assert tasks.names() == []
