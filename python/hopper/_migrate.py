"""Installs or upgrades hopper's SQL in a database.

Two kinds of SQL files, both recorded with a checksum in ``<schema>._migrations``:

* ``sql/migrations/NNNN_*.sql`` (tables, types, indexes) run once each, in order.
  Editing one that a database already ran is refused: add a new migration.
* ``sql/functions/*.sql`` (``CREATE OR REPLACE`` function families) are re-applied
  whenever their checksum changes, after the migrations.

Everything runs in one transaction under an advisory lock, so concurrent
migrators serialise and each file is applied once. The files say ``hopper.``;
another schema name is substituted (validated and quoted) at apply time.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

import psycopg
from psycopg import sql

SCHEMA_NAME = re.compile(r"^[a-z_][a-z0-9_]{0,49}$")


class MigrationError(RuntimeError):
    """The database cannot be migrated by this code (see the message)."""


@dataclass(frozen=True)
class SqlFile:
    name: str  # "migrations/0001_jobs.sql" or "functions/claim.sql"
    text: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.text.encode()).hexdigest()

    def render(self, schema: str) -> str:
        quoted = '"' + schema + '"'
        text = re.sub(r"\bhopper\.", quoted + ".", self.text)
        return re.sub(r"'hopper_(jobs|cancel)'", rf"'{schema}_\1'", text)


def sql_dir() -> Path:
    """The SQL shipped in the wheel, or the repository's ``sql/`` folder."""
    packaged = Path(__file__).parent / "sql"
    if packaged.is_dir():
        return packaged
    return Path(__file__).resolve().parents[2] / "sql"


def _load(folder: str) -> list[SqlFile]:
    root = sql_dir()
    return [
        SqlFile(f"{folder}/{path.name}", path.read_text())
        for path in sorted((root / folder).glob("*.sql"))
    ]


def migrations() -> list[SqlFile]:
    return _load("migrations")


def function_files() -> list[SqlFile]:
    return _load("functions")


def validate_schema(schema: str) -> str:
    if not SCHEMA_NAME.match(schema) or schema.startswith("pg_"):
        raise MigrationError(
            f"schema name {schema!r} is not allowed: use lowercase letters, digits and "
            "underscores (at most 50, not starting with a digit or pg_)"
        )
    return schema


def _lock_key(schema: str) -> int:
    return advisory_key(f"hopper migrate {schema}")


def advisory_key(purpose: str) -> int:
    """A pg_advisory_xact_lock key (a bigint) of its own for purpose."""
    digest = hashlib.sha256(purpose.encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


def migrate(
    conninfo: str | psycopg.Connection,
    schema: str = "hopper",
    *,
    up_to: str | None = None,
    with_functions: bool = True,
) -> list[str]:
    """Apply what is pending; return the names of the files applied.

    ``up_to`` (a migration file name) and ``with_functions`` exist so tests can
    build an older database and upgrade it.
    """
    validate_schema(schema)
    if isinstance(conninfo, psycopg.Connection):
        return _migrate_on(conninfo, schema, up_to, with_functions)
    with psycopg.connect(conninfo, autocommit=True) as conn:
        return _migrate_on(conn, schema, up_to, with_functions)


def _migrate_on(
    conn: psycopg.Connection, schema: str, up_to: str | None, with_functions: bool
) -> list[str]:
    ident = sql.Identifier(schema)
    applied_now: list[str] = []
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", [_lock_key(schema)])
        conn.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(ident))
        conn.execute(
            sql.SQL(
                "CREATE TABLE IF NOT EXISTS {}._migrations ("
                " name text PRIMARY KEY, checksum text NOT NULL,"
                " applied_at timestamptz NOT NULL DEFAULT now())"
            ).format(ident)
        )
        recorded: dict[str, str] = dict(
            conn.execute(sql.SQL("SELECT name, checksum FROM {}._migrations").format(ident))
        )
        known = migrations()
        _refuse_newer_database(schema, recorded, known)
        conn.execute("SET LOCAL check_function_bodies = off")
        pending = known
        if up_to is not None:
            pending = [m for m in known if m.name.split("/")[-1] <= up_to]
        for migration in pending:
            if migration.name in recorded:
                if recorded[migration.name] != migration.checksum:
                    raise MigrationError(
                        f"{migration.name} changed after schema {schema} applied it; "
                        "released migrations must not be edited, add a new one"
                    )
                continue
            _apply(conn, schema, migration, applied_now)
        if with_functions:
            for functions in function_files():
                if recorded.get(functions.name) != functions.checksum:
                    _apply(conn, schema, functions, applied_now)
        conn.execute(sql.SQL("REVOKE ALL ON ALL FUNCTIONS IN SCHEMA {} FROM PUBLIC").format(ident))
    return applied_now


def _refuse_newer_database(schema: str, recorded: dict[str, str], known: list[SqlFile]) -> None:
    known_names = {m.name for m in known}
    unknown = sorted(
        name for name in recorded if name.startswith("migrations/") and name not in known_names
    )
    if unknown:
        raise MigrationError(
            f"schema {schema} has migrations this code does not know ({', '.join(unknown)}): "
            "the database is newer than this hopper; upgrade hopper instead"
        )


def _apply(conn: psycopg.Connection, schema: str, file: SqlFile, applied: list[str]) -> None:
    conn.execute(file.render(schema).encode())
    conn.execute(
        sql.SQL(
            "INSERT INTO {}._migrations (name, checksum) VALUES (%s, %s) "
            "ON CONFLICT (name) DO UPDATE SET checksum = excluded.checksum, applied_at = now()"
        ).format(sql.Identifier(schema)),
        [file.name, file.checksum],
    )
    applied.append(file.name)
