"""The ``hopper`` command line: migrate, worker, add-job, status."""

from __future__ import annotations

import argparse
import asyncio
import importlib
import json
import logging
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql
from psycopg.rows import dict_row

from hopper._bench_tasks import WORKLOADS
from hopper._crontab import CrontabError, parse_crontab, sync_crontab
from hopper._migrate import MigrationError, migrate, migrations, validate_schema
from hopper._producer import quick_add_job
from hopper._tasks import TaskRegistry
from hopper._worker import Worker


class UsageError(Exception):
    """A problem with what the user asked; printed without a traceback."""


class _PrintVersion(argparse.Action):
    """--version, worked out only when asked: the metadata lookup would slow every start."""

    def __init__(self, option_strings: list[str], dest: str, **kwargs: Any) -> None:
        super().__init__(option_strings, dest, nargs=0, help="print the version and exit")

    def __call__(self, parser: argparse.ArgumentParser, *args: Any, **kwargs: Any) -> None:
        import hopper

        newest = migrations()[-1].name.removeprefix("migrations/").removesuffix(".sql")
        print(f"hopper {hopper.__version__} (SQL up to migration {newest})")
        parser.exit()


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hopper", description="PostgreSQL job queue")
    parser.add_argument("--version", action=_PrintVersion)
    parser.add_argument(
        "--database-url",
        default=os.environ.get("DATABASE_URL"),
        help="PostgreSQL connection URL (default: $DATABASE_URL)",
    )
    parser.add_argument(
        "--schema",
        default=os.environ.get("HOPPER_SCHEMA", "hopper"),
        help="hopper's schema (default: $HOPPER_SCHEMA or hopper)",
    )
    commands = parser.add_subparsers(dest="command", required=True)

    migrate_cmd = commands.add_parser("migrate", help="install or upgrade hopper's schema")
    migrate_cmd.add_argument("--schema", dest="migrate_schema", help=argparse.SUPPRESS)

    worker = commands.add_parser("worker", help="run jobs")
    worker.add_argument("--tasks", required=True, help="module:registry of a TaskRegistry")
    worker.add_argument("-c", "--concurrency", type=int, default=8)
    worker.add_argument("--once", action="store_true", help="run the jobs due now, then exit")
    worker.add_argument("--no-listen", action="store_true", help="poll only (for PgBouncer)")
    worker.add_argument("--poll-interval", type=float, default=2.0, metavar="SECONDS")
    worker.add_argument("--grace-period", type=float, default=10.0, metavar="SECONDS")
    worker.add_argument("--heartbeat-interval", type=float, default=5.0, metavar="SECONDS")
    worker.add_argument(
        "--job-connections",
        type=int,
        metavar="N",
        help="connections for handlers' job transactions (default: concurrency, at most 10)",
    )
    worker.add_argument(
        "--stale-after",
        type=float,
        default=30.0,
        metavar="SECONDS",
        help="rescue jobs of workers silent this long (default 30)",
    )
    worker.add_argument(
        "--prune-interval",
        type=float,
        default=60.0,
        metavar="SECONDS",
        help="delete finished jobs past their retention this often (default 60)",
    )
    worker.add_argument(
        "--no-prune", action="store_true", help="leave finished jobs for prune() to delete"
    )
    worker.add_argument(
        "--forbidden-flag",
        dest="forbidden_flags",
        action="append",
        metavar="FLAG",
        help="claim no job that carries this flag (repeatable)",
    )
    worker.add_argument(
        "--crontab",
        metavar="FILE",
        help="sync this crontab (graphile-worker's format) into the schedules first",
    )

    add = commands.add_parser("add-job", help="add a job")
    add.add_argument("task")
    add.add_argument("payload", nargs="?", default=None, help="JSON object or array")
    add.add_argument("--run-at")
    add.add_argument("--delay", help='seconds or "5s" "5m" "1h" "2d"')
    add.add_argument("--queue", dest="queue_name")
    add.add_argument("--priority", type=int)
    add.add_argument("--max-attempts", type=int)
    add.add_argument("--job-key")
    add.add_argument("--job-key-mode")
    add.add_argument("--flag", dest="flags", action="append")
    add.add_argument("--tag", dest="tags", action="append")
    add.add_argument("--depends-on", dest="depends_on", type=int, action="append", metavar="JOB_ID")
    add.add_argument("--depends-on-tag", dest="depends_on_tags", action="append", metavar="TAG")
    add.add_argument("--timeout", help='how long a run may take: seconds or "30s" "5m"')
    add.add_argument("--backoff", choices=["exponential", "linear", "fixed"])
    add.add_argument("--backoff-delay", help='seconds or "5s" "5m" "1h"')
    add.add_argument("--backoff-max", help='seconds or "5s" "5m" "1h"')
    add.add_argument("--dead-letter", metavar="TASK", help="task that gets the job if it fails")

    cancel = commands.add_parser("cancel", help="cancel jobs (running ones are asked to stop)")
    cancel.add_argument("job_ids", nargs="+", type=int)
    cancel.add_argument("--reason")

    retry = commands.add_parser("retry", help="run failed or cancelled jobs again now")
    retry.add_argument("job_ids", nargs="+", type=int)

    bench = commands.add_parser(
        "bench", help="benchmark (on a throwaway PostgreSQL when no database is given)"
    )
    bench.add_argument("--output", type=Path, help="write the results as JSON to this file")
    bench.add_argument(
        "--workloads", default=",".join(WORKLOADS), help=f"comma-separated subset of {WORKLOADS}"
    )
    bench.add_argument("--quick", action="store_true", help="small sizes, for a smoke test")
    bench.add_argument("--repeat", type=int, default=1, help="median of this many runs")
    bench.add_argument("--compare", choices=["graphile-worker"], help="run it side by side")

    status = commands.add_parser("status", help="one job in full, or counts per task and state")
    status.add_argument("job_id", nargs="?", type=int)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(
        level=os.environ.get("HOPPER_LOG_LEVEL", "INFO"),
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
    )
    if args.command == "bench":
        return _bench(args)
    if not args.database_url:
        print("hopper: no database: pass --database-url or set DATABASE_URL", file=sys.stderr)
        return 2
    try:
        return COMMANDS[args.command](args)
    except (MigrationError, UsageError, ValueError) as error:
        print(f"hopper: {error}", file=sys.stderr)
        return 1
    except psycopg.ProgrammingError as error:
        if isinstance(error, psycopg.errors.UndefinedFunction | psycopg.errors.InvalidSchemaName):
            print(
                f"hopper: hopper is not installed in schema {args.schema} of this database: "
                "run `hopper migrate` first",
                file=sys.stderr,
            )
        else:
            print(f"hopper: {error}", file=sys.stderr)
        return 1
    except psycopg.Error as error:
        # psycopg files deadlocks and limits under OperationalError too
        if isinstance(error, psycopg.OperationalError) and _is_connection_failure(error):
            print(f"hopper: cannot connect to the database: {error}", file=sys.stderr)
        else:
            print(f"hopper: {error.diag.message_primary or error}", file=sys.stderr)
        return 1


def _is_connection_failure(error: psycopg.OperationalError) -> bool:
    """No server reply (no SQLSTATE), a connection exception (class 08), too many
    connections, or a server shutting down, crashed or starting up."""
    state = error.sqlstate
    return state is None or state[:2] == "08" or state in ("53300", "57P01", "57P02", "57P03")


# An admin call that meets a deadlock (40P01) or a job key changing under it
# (40001) changed nothing and can be made again, as PostgreSQL's docs advise.
ADMIN_TRIES = 3


def _call_again_on_conflict(
    conn: psycopg.Connection, query: sql.Composed, params: list[Any]
) -> list[Any]:
    for _ in range(ADMIN_TRIES - 1):
        try:
            return conn.execute(query, params).fetchall()
        except (psycopg.errors.DeadlockDetected, psycopg.errors.SerializationFailure) as error:
            logging.getLogger("hopper.cli").warning("%s; trying again", error.diag.message_primary)
            time.sleep(0.1)  # let the other side of the conflict go on first
    return conn.execute(query, params).fetchall()


def _migrate(args: argparse.Namespace) -> int:
    schema = args.migrate_schema or args.schema
    applied = migrate(args.database_url, schema)
    for name in applied:
        print(f"applied {name}")
    if not applied:
        print(f"schema {schema} is up to date")
    return 0


def load_registry(spec: str) -> TaskRegistry:
    module_name, _, attribute = spec.partition(":")
    if not module_name or not attribute:
        raise UsageError(f"--tasks must look like module:registry (got {spec!r})")
    sys.path.insert(0, os.getcwd())
    try:
        registry = getattr(importlib.import_module(module_name), attribute)
    except (ImportError, AttributeError) as error:
        raise UsageError(f"cannot load tasks {spec!r}: {error}") from error
    if not isinstance(registry, TaskRegistry):
        raise UsageError(f"{spec} is a {type(registry).__name__}, not a hopper.TaskRegistry")
    if not registry.tasks:
        raise UsageError(
            f"{spec} holds no task: is the module that registers its handlers imported?"
        )
    return registry


def _worker(args: argparse.Namespace) -> int:
    validate_schema(args.schema)
    tasks = load_registry(args.tasks)
    _check_installed(args.database_url, args.schema)
    if args.crontab:
        _sync_crontab(args.database_url, args.schema, Path(args.crontab))
    worker = Worker(
        args.database_url,
        tasks,
        concurrency=args.concurrency,
        poll_interval=args.poll_interval,
        listen=not args.no_listen,
        grace_period=args.grace_period,
        heartbeat_interval=args.heartbeat_interval,
        stale_after=args.stale_after,
        schema=args.schema,
        job_connections=args.job_connections,
        prune_interval=None if args.no_prune else args.prune_interval,
        forbidden_flags=args.forbidden_flags,
    )

    async def run() -> None:
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, worker.stop)
        if args.once:
            print(f"ran {await worker.run_once()} jobs")
        else:
            await worker.run()

    asyncio.run(run())
    return 0


def _sync_crontab(dsn: str, schema: str, path: Path) -> None:
    try:
        items = parse_crontab(path.read_text())
    except OSError as error:
        raise UsageError(f"cannot read --crontab {path}: {error}") from error
    except CrontabError as error:
        raise UsageError(f"{path}: {error}") from error
    with psycopg.connect(dsn) as conn:
        try:
            sync_crontab(conn, items, schema)
        except CrontabError as error:
            raise UsageError(f"{path}: {error}") from error
        except psycopg.errors.InsufficientPrivilege as error:
            raise UsageError(
                "--crontab needs a role that may call add_schedule (the schema's owner)"
            ) from error
        except psycopg.errors.DataException as error:
            raise UsageError(f"{path}: {error.diag.message_primary}") from error


def _check_installed(dsn: str, schema: str) -> None:
    with psycopg.connect(dsn) as conn:
        found = conn.execute(
            "SELECT 1 FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace"
            " WHERE n.nspname = %s AND p.proname = 'get_jobs'",
            [schema],
        ).fetchone()
    if not found:
        raise UsageError(
            f"hopper is not installed in schema {schema} of this database: run `hopper migrate`"
        )


ADD_JOB_FLAGS = (
    "run_at", "delay", "queue_name", "priority", "max_attempts", "job_key", "job_key_mode",
    "flags", "tags", "depends_on", "depends_on_tags", "timeout", "backoff", "backoff_delay",
    "backoff_max", "dead_letter",
)  # fmt: skip


def _add_job(args: argparse.Namespace) -> int:
    validate_schema(args.schema)
    payload: Any = None
    if args.payload is not None:
        try:
            payload = json.loads(args.payload)
        except json.JSONDecodeError as error:
            raise UsageError(f"PAYLOAD is not JSON: {error}") from error
    options = {
        name: getattr(args, name) for name in ADD_JOB_FLAGS if getattr(args, name) is not None
    }
    job = quick_add_job(args.database_url, args.task, payload, schema=args.schema, **options)
    print(json.dumps({"id": job.id, "state": job.state, "outcome": job.outcome}))
    return 0


def _status(args: argparse.Namespace) -> int:
    validate_schema(args.schema)
    schema = sql.Identifier(args.schema)
    with psycopg.connect(args.database_url, row_factory=dict_row) as conn:
        if args.job_id is not None:
            row = conn.execute(
                sql.SQL("SELECT * FROM {}.job_status(%s)").format(schema), [args.job_id]
            ).fetchone()
            if row is None or row["id"] is None:
                print(f"hopper: no job {args.job_id}", file=sys.stderr)
                return 1
            print(json.dumps(row, default=str, indent=2))
            return 0
        rows = conn.execute(sql.SQL("SELECT * FROM {}.queue_stats()").format(schema)).fetchall()
    _print_stats(rows)
    return 0


STATES = ("waiting", "scheduled", "pending", "running", "completed", "failed", "cancelled")


def _print_stats(rows: list[dict[str, Any]]) -> None:
    header = ["task", "queue", *STATES]
    table = [header] + [
        [r["task_identifier"], r["queue_name"] or "-", *(str(r[s]) for s in STATES)] for r in rows
    ]
    widths = [max(len(str(row[i])) for row in table) for i in range(len(header))]
    for row in table:
        print("  ".join(str(cell).ljust(width) for cell, width in zip(row, widths, strict=True)))


def _bench(args: argparse.Namespace) -> int:
    workloads = [w.strip() for w in args.workloads.split(",") if w.strip()]
    unknown = sorted(set(workloads) - set(WORKLOADS))
    if unknown:
        print(f"hopper: unknown workloads {unknown}; choose from {WORKLOADS}", file=sys.stderr)
        return 2
    from hopper.bench import run_bench  # here: importing it cost every CLI start 10 ms

    run_bench(args.database_url, args.output, workloads, args.quick, args.repeat, args.compare)
    return 0


def _cancel(args: argparse.Namespace) -> int:
    return _change_jobs(args, "cancel_jobs", [args.job_ids, args.reason], "cancelled")


def _retry(args: argparse.Namespace) -> int:
    return _change_jobs(args, "retry_jobs", [args.job_ids], "retried")


def _change_jobs(args: argparse.Namespace, function: str, params: list[Any], verb: str) -> int:
    """Calls an admin function and says which jobs it changed and which it skipped."""
    validate_schema(args.schema)
    query = sql.SQL("SELECT id, state FROM {}.{}(" + ", ".join(["%s"] * len(params)) + ")")
    with psycopg.connect(args.database_url, autocommit=True) as conn:
        rows = _call_again_on_conflict(
            conn, query.format(sql.Identifier(args.schema), sql.Identifier(function)), params
        )
    for job_id, state in rows:
        print(f"job {job_id}: {state}")
    skipped = sorted(set(args.job_ids) - {job_id for job_id, _ in rows})
    if skipped:
        print(f"not {verb} (not found or not in a state that allows it): {skipped}")
    return 0


COMMANDS = {
    "migrate": _migrate,
    "worker": _worker,
    "add-job": _add_job,
    "status": _status,
    "cancel": _cancel,
    "retry": _retry,
}
