"""One PostgreSQL per test session; each test gets a fresh database cloned
from a migrated template."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import psycopg
import pytest
from psycopg.rows import dict_row
from pytest_postgresql.janitor import DatabaseJanitor

from hopper import migrate
from hopper._embedded import EmbeddedPostgres

TEMPLATE_DB = "hopper_template"


@pytest.fixture(scope="session")
def pg_server() -> Iterator[EmbeddedPostgres]:
    server = EmbeddedPostgres().start()
    try:
        yield server
    finally:
        server.stop()


def _janitor(server: EmbeddedPostgres, dbname: str, template: str | None) -> DatabaseJanitor:
    return DatabaseJanitor(
        user=server.user,
        host="127.0.0.1",
        port=server.port,
        dbname=dbname,
        template_dbname=template,
    )


@pytest.fixture(scope="session")
def template_db(pg_server: EmbeddedPostgres) -> str:
    _janitor(pg_server, TEMPLATE_DB, None).init()
    migrate(pg_server.dsn_for(TEMPLATE_DB))
    return TEMPLATE_DB


@pytest.fixture
def empty_dsn(pg_server: EmbeddedPostgres) -> Iterator[str]:
    """A database with nothing installed."""
    name = f"empty_{uuid.uuid4().hex[:12]}"
    with _janitor(pg_server, name, None):
        yield pg_server.dsn_for(name)


@pytest.fixture
def dsn(pg_server: EmbeddedPostgres, template_db: str) -> Iterator[str]:
    """A database with hopper installed in schema hopper."""
    name = f"test_{uuid.uuid4().hex[:12]}"
    with _janitor(pg_server, name, template_db):
        yield pg_server.dsn_for(name)


@pytest.fixture
def conn(dsn: str) -> Iterator[psycopg.Connection]:
    with psycopg.connect(dsn, autocommit=True, row_factory=dict_row) as connection:
        yield connection


@pytest.fixture
def connect(dsn: str) -> Iterator:
    """Opens more autocommit connections to the test database; closes them after."""
    opened: list[psycopg.Connection] = []

    def open_connection() -> psycopg.Connection:
        connection = psycopg.connect(dsn, autocommit=True, row_factory=dict_row)
        opened.append(connection)
        return connection

    yield open_connection
    for connection in opened:
        connection.close()
