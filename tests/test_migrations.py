"""Migrations: recorded, idempotent, concurrent-safe, schema-aware, refuse newer databases."""

from __future__ import annotations

from functools import partial

import psycopg
import pytest
from races import at_once

from hopper import MigrationError, migrate
from hopper._migrate import function_files, migrations

CATALOG_QUERIES = {
    "columns": """
        SELECT c.relname, a.attname, format_type(a.atttypid, a.atttypmod), a.attnotnull,
               pg_get_expr(d.adbin, d.adrelid)
        FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid
        JOIN pg_namespace n ON n.oid = c.relnamespace
        LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
        WHERE n.nspname = %(schema)s AND a.attnum > 0 AND NOT a.attisdropped
        ORDER BY 1, a.attnum""",
    "indexes": """
        SELECT indexname, indexdef FROM pg_indexes WHERE schemaname = %(schema)s ORDER BY 1""",
    "constraints": """
        SELECT conname, pg_get_constraintdef(c.oid) FROM pg_constraint c
        JOIN pg_namespace n ON n.oid = c.connamespace WHERE n.nspname = %(schema)s
        ORDER BY 1""",
    "functions": """
        SELECT p.proname, pg_get_function_identity_arguments(p.oid), md5(p.prosrc),
               p.prosecdef, p.proconfig, p.proacl::text
        FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
        WHERE n.nspname = %(schema)s ORDER BY 1, 2""",
    "views": """
        SELECT viewname, definition FROM pg_views WHERE schemaname = %(schema)s ORDER BY 1""",
}


def catalog(dsn: str, schema: str = "hopper") -> dict[str, list[tuple]]:
    with psycopg.connect(dsn) as conn:
        return {
            name: conn.execute(query, {"schema": schema}).fetchall()
            for name, query in CATALOG_QUERIES.items()
        }


def recorded(dsn: str, schema: str = "hopper") -> list[str]:
    with psycopg.connect(dsn) as conn:
        rows = conn.execute(f'SELECT name FROM "{schema}"._migrations ORDER BY name').fetchall()
    return [name for (name,) in rows]


def test_fresh_install_records_every_file(empty_dsn):
    applied = migrate(empty_dsn)
    expected = [m.name for m in migrations()] + [f.name for f in function_files()]
    assert applied == expected
    assert recorded(empty_dsn) == sorted(expected)


def test_second_run_is_a_no_op(empty_dsn):
    migrate(empty_dsn)
    before = catalog(empty_dsn)
    assert migrate(empty_dsn) == []
    assert catalog(empty_dsn) == before


def test_upgraded_database_equals_fresh_install(empty_dsn, dsn):
    first = migrations()[0].name.split("/")[-1]
    assert migrate(empty_dsn, up_to=first, with_functions=False) == [migrations()[0].name]
    upgraded = migrate(empty_dsn)
    assert migrations()[0].name not in upgraded
    assert catalog(empty_dsn) == catalog(dsn)


def test_spec_payload_becomes_jsonb_under_installed_functions(empty_dsn, dsn):
    # 0006 alters job_spec while functions taking job_spec[] already exist
    assert migrate(empty_dsn, up_to="0005_leaner_writes.sql")[-1].startswith("functions/")
    assert migrate(empty_dsn)[0] == "migrations/0006_jsonb_spec_payload.sql"
    assert catalog(empty_dsn) == catalog(dsn)
    with psycopg.connect(empty_dsn, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT payload, outcome FROM hopper.add_jobs(ARRAY["
            " ROW('t', '{\"b\": 2, \"a\": [1]}'::jsonb, NULL, NULL, NULL, NULL, NULL,"
            " NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL)::hopper.job_spec])"
        ).fetchall()
    assert rows == [({"a": [1], "b": 2}, "inserted")]


def test_changed_function_file_is_reapplied(empty_dsn):
    migrate(empty_dsn)
    with psycopg.connect(empty_dsn, autocommit=True) as conn:
        conn.execute(
            "UPDATE hopper._migrations SET checksum = 'old' WHERE name = 'functions/claim.sql'"
        )
    assert migrate(empty_dsn) == ["functions/claim.sql"]


def test_edited_migration_is_refused(empty_dsn):
    migrate(empty_dsn)
    with psycopg.connect(empty_dsn, autocommit=True) as conn:
        conn.execute(
            "UPDATE hopper._migrations SET checksum = 'edited' "
            "WHERE name = 'migrations/0001_jobs.sql'"
        )
    with pytest.raises(MigrationError, match="must not be edited"):
        migrate(empty_dsn)


def test_database_newer_than_code_is_refused(empty_dsn):
    migrate(empty_dsn)
    with psycopg.connect(empty_dsn, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO hopper._migrations (name, checksum) "
            "VALUES ('migrations/9999_future.sql', 'x')"
        )
    with pytest.raises(MigrationError, match="newer than this hopper"):
        migrate(empty_dsn)


def test_eight_concurrent_migrators_apply_each_file_once(empty_dsn):
    results = at_once(*[partial(migrate, empty_dsn)] * 8)
    applied = [name for result in results for name in result]
    total = len(migrations()) + len(function_files())
    assert len(applied) == total
    assert len(set(applied)) == total
    assert sorted(len(r) for r in results) == [0] * 7 + [total]


def test_two_schemas_in_one_database_are_independent(empty_dsn):
    migrate(empty_dsn, "queue_a")
    migrate(empty_dsn, "queue_b")
    with psycopg.connect(empty_dsn, autocommit=True) as conn:
        for schema in ("queue_a", "queue_b"):
            conn.execute(f"SELECT {schema}.set_setting('notify', 'always')")
        conn.execute("LISTEN queue_b_jobs")
        conn.execute("SELECT queue_a.add_job('a_task')")
        conn.execute("SELECT queue_b.add_job('b_task')")
        conn.execute("SELECT queue_b.add_job('b_task')")
        a = conn.execute("SELECT task_identifier FROM queue_a.jobs").fetchall()
        b = conn.execute("SELECT task_identifier FROM queue_b.jobs").fetchall()
        claimed = conn.execute("SELECT id FROM queue_a.get_jobs('w', batch_size => 10)").fetchall()
        channels = {n.channel for n in conn.notifies(timeout=0.5, stop_after=2)}
    assert a == [("a_task",)]
    assert b == [("b_task",), ("b_task",)]
    assert len(claimed) == 1
    assert channels == {"queue_b_jobs"}
    names_a = [row[0] for row in catalog(empty_dsn, "queue_a")["functions"]]
    assert names_a == [row[0] for row in catalog(empty_dsn, "queue_b")["functions"]]


@pytest.mark.parametrize(
    "schema", ['bad"name', "Upper", "pg_catalog", "1abc", "a;drop", "", "x" * 51]
)
def test_dangerous_schema_names_are_rejected_before_any_sql(schema):
    # an unreachable DSN proves no connection is attempted
    with pytest.raises(MigrationError, match="is not allowed"):
        migrate("postgresql://nobody@127.0.0.1:1/none", schema)
