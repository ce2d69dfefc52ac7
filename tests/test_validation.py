"""Bad input raises a documented SQLSTATE, names the function and argument, and changes nothing."""

from __future__ import annotations

import psycopg
import pytest
from psycopg.types.json import Json, Jsonb
from sqlcalls import call

BAD_ADD_JOB_ARGUMENTS = [
    # (arguments, sqlstate, words the message must contain)
    ({"identifier": None}, "22004", "identifier must not be null"),
    ({"identifier": "  "}, "22023", "identifier must not be blank"),
    ({"identifier": ""}, "22023", "identifier must not be blank"),
    ({"identifier": "\t\n"}, "22023", "identifier must not be blank"),
    ({"identifier": "x" * 129}, "22023", "identifier must be at most 128"),
    ({"queue_name": " "}, "22023", "queue_name must not be blank"),
    ({"queue_name": "q" * 129}, "22023", "queue_name must be at most 128"),
    ({"job_key": "\t "}, "22023", "job_key must not be blank"),
    ({"job_key": "k" * 513}, "22023", "job_key must be at most 512"),
    ({"payload": Json("text")}, "22023", "payload must be a JSON object or array (got string)"),
    ({"payload": Json(5)}, "22023", "payload must be a JSON object or array (got number)"),
    ({"payload": Json(None)}, "22023", "payload must be a JSON object or array (got null)"),
    ({"max_attempts": 0}, "22023", "max_attempts must be between 1 and 32767"),
    ({"max_attempts": 32768}, "22023", "max_attempts must be between 1 and 32767"),
    ({"priority": 32768}, "22023", "priority must be between -32768 and 32767"),
    ({"priority": -32769}, "22023", "priority must be between -32768 and 32767"),
    ({"flags": ["ok", None]}, "22004", "flags must not contain null"),
    ({"flags": ["ok", " "]}, "22023", "flags must not contain a blank element"),
    ({"tags": [""]}, "22023", "tags must not contain a blank element"),
    (
        {"job_key_mode": "foo"},
        "22023",
        'job_key_mode must be one of replace, preserve_run_at, unsafe_dedupe, dedupe (got "foo")',
    ),
    ({"depends_on": [1, None]}, "22004", "depends_on must not contain null"),
    ({"depends_on": [-5]}, "22023", "depends_on refers to the spec at index 4, but the call has"),
    ({"depends_on": [424242]}, "23503", "depends_on names job 424242, which does not exist"),
    ({"depends_on_tags": ["x", None]}, "22004", "depends_on_tags must not contain null"),
    ({"depends_on_tags": [" "]}, "22023", "depends_on_tags must not contain a blank element"),
    ({"timeout": "0 seconds"}, "22023", "timeout must be positive"),
    ({"backoff": "random"}, "22023", "backoff must be one of exponential, linear, fixed"),
    ({"backoff_delay": "-1 second"}, "22023", "backoff_delay must not be negative"),
    ({"backoff_max": "-1 second"}, "22023", "backoff_max must not be negative"),
    ({"dead_letter": " "}, "22023", "dead_letter must not be blank"),
]


def add_job_with(conn, arguments):
    values = {"identifier": "task", **arguments}
    identifier = values.pop("identifier")
    return call(conn, "add_job", identifier, **values)


@pytest.mark.parametrize("keyed", [True, False], ids=["keyed", "unkeyed"])
@pytest.mark.parametrize(("arguments", "sqlstate", "message"), BAD_ADD_JOB_ARGUMENTS)
def test_add_job_rejects_bad_argument(conn, arguments, sqlstate, message, keyed):
    """Unkeyed calls with few arguments take add_job's short check: same errors."""
    if keyed:
        arguments = {**arguments, "job_key": arguments.get("job_key", "key")}
    with pytest.raises(psycopg.Error) as raised:
        add_job_with(conn, arguments)
    assert raised.value.sqlstate == sqlstate
    assert raised.value.diag.message_primary.startswith("add_job: ")
    assert message in raised.value.diag.message_primary
    assert conn.execute("SELECT count(*) AS n FROM hopper._jobs").fetchone()["n"] == 0
    assert conn.execute("SELECT count(*) AS n FROM hopper._queues").fetchone()["n"] == 0


def test_job_key_mode_is_validated_without_a_key(conn):
    with pytest.raises(psycopg.errors.InvalidParameterValue, match="job_key_mode"):
        add_job_with(conn, {"job_key_mode": "nope"})


def test_payload_larger_than_setting_is_rejected_with_54000(conn):
    call(conn, "set_setting", "max_payload_bytes", "100")
    with pytest.raises(psycopg.errors.ProgramLimitExceeded, match="max_payload_bytes"):
        add_job_with(conn, {"payload": Json({"data": "x" * 200})})
    assert add_job_with(conn, {"payload": Json({"data": "x" * 10})})[0]["outcome"] == "inserted"
    with pytest.raises(psycopg.errors.ProgramLimitExceeded, match="max_payload_bytes"):
        add_job_with(conn, {"payload": Json({"data": "x" * 200}), "job_key": "k"})


def test_bad_spec_in_add_jobs_names_its_index_and_adds_nothing(conn):
    specs = Jsonb([{"identifier": "ok"}, {"identifier": "ok", "job_key": "k"}, {"identifier": " "}])
    with pytest.raises(psycopg.errors.InvalidParameterValue) as raised:
        call(conn, "add_jobs", specs)
    assert raised.value.diag.message_primary == (
        "add_jobs: spec at index 2: identifier must not be blank"
    )
    assert conn.execute("SELECT count(*) AS n FROM hopper._jobs").fetchone()["n"] == 0


def as_json_spec(arguments):
    return {"identifier": "task"} | {
        name: value.obj if isinstance(value, Json) else value for name, value in arguments.items()
    }


# a JSON null payload is SQL NULL in the jsonb form of add_jobs, which means {}
BAD_JSON_SPECS = [case for case in BAD_ADD_JOB_ARGUMENTS if "(got null)" not in case[2]]


@pytest.mark.parametrize(("arguments", "sqlstate", "message"), BAD_JSON_SPECS)
def test_add_jobs_rejects_a_bad_spec_after_plain_ones(conn, arguments, sqlstate, message):
    """A batch of plain specs takes add_jobs' one-pass check: one bad spec among
    them gets the full check's error, and nothing is added."""
    specs = Jsonb([{"identifier": "ok", "payload": {"n": 1}}, as_json_spec(arguments)])
    with pytest.raises(psycopg.Error) as raised:
        call(conn, "add_jobs", specs)
    assert raised.value.sqlstate == sqlstate
    assert raised.value.diag.message_primary.startswith("add_jobs: spec at index 1: ")
    assert message in raised.value.diag.message_primary
    assert conn.execute("SELECT count(*) AS n FROM hopper._jobs").fetchone()["n"] == 0


def test_plain_batch_with_a_payload_over_the_limit_is_rejected(conn):
    call(conn, "set_setting", "max_payload_bytes", "100")
    specs = [{"identifier": "t", "payload": {"data": "x" * 10}}] * 2
    with pytest.raises(psycopg.errors.ProgramLimitExceeded, match="spec at index 2: payload is"):
        call(conn, "add_jobs", Jsonb([*specs, {"identifier": "t", "payload": {"d": "x" * 200}}]))
    assert conn.execute("SELECT count(*) AS n FROM hopper._jobs").fetchone()["n"] == 0
    assert [r["outcome"] for r in call(conn, "add_jobs", Jsonb(specs))] == ["inserted"] * 2


def test_add_jobs_batch_larger_than_max_batch_size_is_rejected(conn):
    call(conn, "set_setting", "max_batch_size", "3")
    with pytest.raises(psycopg.errors.ProgramLimitExceeded, match="max_batch_size"):
        call(conn, "add_jobs", Jsonb([{"identifier": "t"}] * 4))
    assert conn.execute("SELECT count(*) AS n FROM hopper._jobs").fetchone()["n"] == 0


@pytest.mark.parametrize(
    ("function", "arguments", "sqlstate", "message"),
    [
        ("get_jobs", [None], "22004", "get_jobs: worker_id must not be null"),
        ("get_jobs", [" "], "22023", "get_jobs: worker_id must not be blank"),
        ("get_jobs", ["w", None, 0], "22023", "get_jobs: batch_size must be at least 1"),
        ("get_jobs", ["w", None, 10001], "54000", "get_jobs: batch_size 10001 is more than"),
        ("get_jobs", ["w", None, 1, None, "-1 hour"], "22023", "job_expiry must be positive"),
        # a null matches nothing: the list was taken for its other elements
        ("get_jobs", ["w", ["t", None]], "22004", "get_jobs: task_identifiers must not contain"),
        ("get_jobs", ["w", None, 1, ["f", None]], "22004", "forbidden_flags must not contain"),
        ("complete_job", [None, 1], "22004", "complete_job: worker_id must not be null"),
        ("complete_job", ["w", None], "22004", "complete_job: job_id must not be null"),
        ("complete_claimed_jobs", ["w", None], "22004", "job_ids must not be null"),
        (
            "complete_claimed_jobs",
            ["w", [1, 2], [Jsonb(1)]],
            "22023",
            "complete_claimed_jobs: results has 1 elements but job_ids has 2",
        ),
        # complete_claimed_job_ids tests its arguments at once, then checks the failures
        ("complete_claimed_job_ids", [None, [1]], "22004", "worker_id must not be null"),
        ("complete_claimed_job_ids", [" ", [1]], "22023", "worker_id must not be blank"),
        ("complete_claimed_job_ids", ["w" * 129, [1]], "22023", "at most 128 characters"),
        ("complete_claimed_job_ids", ["w", None], "22004", "job_ids must not be null"),
        (
            "complete_claimed_job_ids",
            ["w", [1], []],
            "22023",
            "complete_claimed_job_ids: results has 0 elements but job_ids has 1",
        ),
        ("fail_job", ["w", None, "e"], "22004", "fail_job: job_id must not be null"),
        (
            "fail_claimed_jobs",
            ["w", [1, 2], ["e"]],
            "22023",
            "fail_claimed_jobs: error_messages has 1 elements but job_ids has 2",
        ),
        ("reschedule_jobs", [[1], None, 40000], "22023", "reschedule_jobs: priority must be"),
        ("reschedule_jobs", [[1], None, None, -1], "22023", "attempts must be between"),
        ("remove_job", [None], "22004", "remove_job: job_key must not be null"),
        ("set_queue", [" "], "22023", "set_queue: queue_name must not be blank"),
        ("set_queue", ["q", 0], "22023", "set_queue: concurrency must be at least 1"),
        ("set_setting", ["nope", "1"], "22023", 'set_setting: name "nope" is not a setting'),
        ("set_setting", ["max_batch_size", "0"], "22023", "must be a positive integer"),
        ("set_setting", ["max_batch_size", "ten"], "22023", "must be a positive integer"),
        ("set_setting", ["failed_retention", "-1 day"], "22023", "non-negative interval"),
        ("set_setting", ["failed_retention", "soon"], "22023", "non-negative interval"),
        ("set_setting", ["notify", "never"], "22023", "notify must be when_waiting or always"),
        ("get_setting", ["nope"], "22023", 'get_setting: name "nope" is not a setting'),
        ("prune", ["-1 day"], "22023", "prune: older_than must not be negative"),
        ("add_jobs", [Jsonb({"a": 1})], "22023", "add_jobs: specs must be a JSON array"),
        ("add_jobs", ["[oops"], "22023", "add_jobs: specs must be JSON (invalid input syntax"),
        ("add_jobs", ['{"a": 1}'], "22023", "add_jobs: specs must be a JSON array"),
        ("register_worker", [None], "22004", "register_worker: worker_id must not be null"),
        ("register_worker", [""], "22023", "register_worker: worker_id must not be blank"),
        ("heartbeat", [None], "22004", "heartbeat: worker_id must not be null"),
        ("heartbeat", ["never_registered"], "55000", "is not registered"),
        ("unregister_worker", [" "], "22023", "unregister_worker: worker_id must not be blank"),
        ("rescue_stale_jobs", ["-1 second"], "22023", "stale_after must not be negative"),
        ("rescue_stale_jobs", [None], "22004", "rescue_stale_jobs: stale_after must not be"),
        ("release_jobs", ["w", None], "22004", "release_jobs: job_ids must not be null"),
        ("set_progress", ["w", 1, 101], "22023", "set_progress: progress must be between"),
        ("set_progress", ["w", None, 1], "22004", "set_progress: job_id must not be null"),
        ("cancel_jobs", [None], "22004", "cancel_jobs: job_ids must not be null"),
        ("retry_jobs", [None], "22004", "retry_jobs: job_ids must not be null"),
        ("complete_jobs", [None], "22004", "complete_jobs: job_ids must not be null"),
        ("permanently_fail_jobs", [None], "22004", "job_ids must not be null"),
        ("force_unlock_workers", [None], "22004", "worker_ids must not be null"),
        ("grant_worker", [None], "22004", "grant_worker: role_name must not be null"),
        ("grant_producer", ["nobody_here"], "42704", 'role_name "nobody_here" is not a role'),
    ],
)
def test_public_functions_reject_bad_arguments(conn, function, arguments, sqlstate, message):
    before = conn.execute("SELECT count(*) AS n FROM hopper._jobs").fetchone()["n"]
    with pytest.raises(psycopg.Error) as raised:
        call(conn, function, *arguments)
    assert raised.value.sqlstate == sqlstate
    assert message in raised.value.diag.message_primary
    assert conn.execute("SELECT count(*) AS n FROM hopper._jobs").fetchone()["n"] == before


def test_unicode_payload_round_trips(conn):
    payload = {"text": "héllo 世界 🚀", "nested": ["ü", {"ß": "\u2028"}]}
    added = add_job_with(conn, {"payload": Json(payload)})[0]
    assert added["payload"] == payload


def test_nul_in_a_payload_string_is_rejected_and_adds_nothing(conn):
    # PostgreSQL's jsonb cannot hold \u0000 (SQLSTATE 22P05)
    with pytest.raises(psycopg.errors.UntranslatableCharacter):
        add_job_with(conn, {"payload": Json({"text": "a\u0000b"})})
    assert conn.execute("SELECT count(*) AS n FROM hopper._jobs").fetchone()["n"] == 0


def test_add_jobs_null_specs_in_either_form(conn):
    for specs in ("NULL::jsonb", "NULL::hopper.job_spec[]"):
        with pytest.raises(psycopg.errors.NullValueNotAllowed, match="add_jobs: specs must not"):
            conn.execute(f"SELECT hopper.add_jobs({specs})")


def test_batch_forms_refuse_more_than_max_batch_size(conn):
    call(conn, "set_setting", "max_batch_size", "2")
    for function, extra in (
        ("complete_claimed_jobs", []),
        ("complete_claimed_job_ids", []),
        ("fail_claimed_jobs", [["a"] * 3]),
    ):
        with pytest.raises(psycopg.errors.ProgramLimitExceeded, match="job_ids has 3 elements"):
            call(conn, function, "w", [1, 2, 3], *extra)
