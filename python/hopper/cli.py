"""The ``hopper`` command line."""

from __future__ import annotations

import argparse
import os
import sys

import psycopg

from hopper._migrate import MigrationError, migrate


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hopper", description="PostgreSQL job queue")
    parser.add_argument(
        "--database-url",
        default=os.environ.get("DATABASE_URL"),
        help="PostgreSQL connection URL (default: $DATABASE_URL)",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    migrate_cmd = commands.add_parser("migrate", help="install or upgrade hopper's schema")
    migrate_cmd.add_argument(
        "--schema",
        default=os.environ.get("HOPPER_SCHEMA", "hopper"),
        help="schema to install into (default: $HOPPER_SCHEMA or hopper)",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if not args.database_url:
        print("hopper: no database: pass --database-url or set DATABASE_URL", file=sys.stderr)
        return 2
    try:
        if args.command == "migrate":
            applied = migrate(args.database_url, args.schema)
            if applied:
                for name in applied:
                    print(f"applied {name}")
            else:
                print(f"schema {args.schema} is up to date")
    except MigrationError as error:
        print(f"hopper: {error}", file=sys.stderr)
        return 1
    except psycopg.OperationalError as error:
        print(f"hopper: cannot connect to the database: {error}", file=sys.stderr)
        return 1
    return 0
