"""Crontab files in graphile-worker's format, synced into hopper's schedules.

A line is ``<cron> <task> [?options] [payload]``: five cron fields (or one ``@``
macro), the task identifier, options as a query string, and a JSON object. Blank
lines and lines starting with ``#`` are skipped. Options: ``id`` (the schedule's
name, default the task), ``fill`` (backfill, e.g. ``2h`` or ``1w3d``), ``max``
(max_attempts), ``queue``, ``priority``, ``jobKey``, ``jobKeyMode``.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl

import psycopg
from psycopg import sql
from psycopg.types.json import Jsonb

from hopper._migrate import advisory_key

# schedules synced from a crontab are named with this prefix, so that a sync
# can remove the ones whose lines are gone without touching any other
NAME_PREFIX = "crontab:"

_OPTIONS = {
    "max": ("max_attempts", int),
    "queue": ("queue_name", str),
    "priority": ("priority", int),
    "jobKey": ("job_key", str),
    "jobKeyMode": ("job_key_mode", str),
}
_FILL_UNITS = {"w": "weeks", "d": "days", "h": "hours", "m": "minutes", "s": "seconds"}


@dataclass(frozen=True)
class CrontabItem:
    name: str
    cron: str
    task: str
    payload: dict[str, Any] = field(default_factory=dict)
    options: dict[str, Any] = field(default_factory=dict)
    backfill: str | None = None
    line: int | None = field(default=None, compare=False)  # in the file it came from


class CrontabError(ValueError):
    """A line of a crontab that cannot be read; the message names the line."""


def parse_crontab(text: str) -> list[CrontabItem]:
    items = []
    for number, line in enumerate(text.splitlines(), start=1):
        stripped = line.strip()
        if stripped and not stripped.startswith("#"):
            try:
                items.append(_parse_line(stripped, number))
            except (ValueError, json.JSONDecodeError) as error:
                raise CrontabError(f"crontab line {number}: {error}") from None
    names = [item.name for item in items]
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise CrontabError(f"crontab: more than one line for {', '.join(repeated)} (set ?id=)")
    return items


def _parse_line(line: str, number: int) -> CrontabItem:
    width = 1 if line.startswith("@") else 5
    parts = line.split(None, width + 1)
    if len(parts) <= width:
        raise ValueError("expected the cron fields and then a task identifier")
    cron, task = " ".join(parts[:width]), parts[width]
    rest = parts[width + 1] if len(parts) > width + 1 else ""
    query = ""
    if rest.startswith("?"):
        query, _, rest = rest[1:].partition(" ")
    payload = json.loads(rest) if rest.strip() else {}
    if not isinstance(payload, dict):
        raise ValueError("the payload must be a JSON object")
    options: dict[str, Any] = {}
    name, backfill = task, None
    for key, value in parse_qsl(query, keep_blank_values=True, strict_parsing=bool(query)):
        if key == "id":
            name = value
        elif key == "fill":
            backfill = _fill_interval(value)
        elif key in _OPTIONS:
            option, kind = _OPTIONS[key]
            try:
                options[option] = kind(value)
            except ValueError:
                raise ValueError(f'option "{key}" must be an integer (got "{value}")') from None
        else:
            raise ValueError(f'unknown option "{key}"')
    return CrontabItem(NAME_PREFIX + name, cron, task, payload, options, backfill, number)


def _fill_interval(value: str) -> str:
    pieces = re.findall(r"(\d+)([wdhms])", value)
    if not pieces or "".join(n + u for n, u in pieces) != value:
        raise ValueError(f'fill must look like "2h" or "1w3d" (got "{value}")')
    return " ".join(f"{n} {_FILL_UNITS[u]}" for n, u in pieces)


def sync_crontab(
    conn: psycopg.Connection, items: list[CrontabItem], schema: str = "hopper"
) -> None:
    """Makes the crontab's schedules exactly ``items``, in one transaction: each
    is added or replaced (keeping its last firing); crontab schedules no longer
    listed are removed. Needs a role that may call add_schedule. Concurrent syncs
    (workers of a rolling deploy, started with two versions of the file) take
    turns: each locks rows the other's removes, so they could deadlock. An item
    add_schedule refuses raises CrontabError naming its line (or its name)."""
    s = sql.Identifier(schema)
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", [advisory_key(f"hopper crontab {schema}")])
        for item in items:
            try:
                _add_schedule(conn, s, item)
            except psycopg.DataError as error:
                where = f"line {item.line}" if item.line is not None else f"item {item.name}"
                raise CrontabError(f"crontab {where}: {error.diag.message_primary}") from error
        conn.execute(
            sql.SQL(
                "SELECT {}.remove_schedule(s.name) FROM {}.schedules AS s"
                " WHERE starts_with(s.name, %s) AND NOT s.name = any(%s)"
            ).format(s, s),
            [NAME_PREFIX, [item.name for item in items]],
        )


def _add_schedule(conn: psycopg.Connection, schema: sql.Identifier, item: CrontabItem) -> None:
    named = [sql.SQL("{} => %s").format(sql.Identifier(k)) for k in item.options]
    conn.execute(
        sql.SQL("SELECT {}.add_schedule(%s, %s, %s, %s, backfill => %s{})").format(
            schema, sql.SQL("").join(sql.SQL(", ") + n for n in named)
        ),
        [item.name, item.cron, item.task, Jsonb(item.payload), item.backfill,
         *item.options.values()],
    )  # fmt: skip
